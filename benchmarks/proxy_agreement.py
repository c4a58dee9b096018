"""Does training through a codec surrogate move the real codec's R-D the way the surrogate says? (gradient agreement)

For each codec, a small pre-processor (a 3-layer residual CNN, identity at the start) is trained through that
codec's surrogate (the learned proxy, or DiffJPEG for JPEG: the exact control) with the training loss of
``finetune_rp.py`` (``RatePerceptionLoss``: MSE + lambda x codec-slope x bpp, so lambda 1 is the codec's own
trade-off and the loss falls exactly when the BD-rate in PSNR improves), on random crops of the training
photographs at random qualities of the surrogate's fitted range. Then, on the held-out photographs (val-set14),
its BD-rate against the codec alone is measured twice, in PSNR and SSIMULACRA2:

- **proxy-measured**: bits and decoded image from the surrogate, for the pre-processed and the original images;
- **real**: real files and real decoders (``rp_diffusers.evaluation.evaluate``), pre-processed vs codec alone.

``--training_forward surrogate,real`` also trains each pre-processor with the real codec in the loop
(``rp_diffusers.surrogates.CodecInTheLoop``: the real encode + decode forward, the surrogate's gradient backward), so
the two ways of training through one proxy are compared against the same codec-alone curve in one run.

Agreement is whether the two BD-rates have the same sign, and their Pearson correlation over every (codec,
lambda). A surrogate whose gradient teaches the codec's losses gives points near the diagonal; one that is
nearly the identity lets the pre-processor "win" against itself while the real codec disagrees.

Kodak is not used (test set). Example (about 30 minutes on 2 CPU cores):
    python benchmarks/proxy_agreement.py --output benchmarks/results/proxy_agreement.json
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from rp_diffusers.codecs import get_codec
from rp_diffusers.evaluation import bd_table, evaluate
from rp_diffusers.losses import RatePerceptionLoss
from rp_diffusers.metrics import compute_metrics
from rp_diffusers.surrogates import CodecInTheLoop, get_surrogate
from rp_diffusers.surrogates.proxy import PROXY_CODECS, load_proxy
from rp_diffusers.utils.files import write_json
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor, tensor_to_pil

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METRICS = ("psnr", "ssimulacra2")
KEYS = {"psnr": "psnr-rgb", "ssimulacra2": "ssimulacra2"}  # the records' keys (CompressAI's names)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", default="jpeg,webp,heic,hevc,avif,vvc", help="comma-separated codecs")
    parser.add_argument("--lambdas", default="1,3", help="rate weights (multiples of the codec's own R-D slope)")
    parser.add_argument("--train_data", nargs="+", default=[str(DATA / "train-clean"), str(DATA / "train-sunhays80")])
    parser.add_argument("--train_images", type=int, default=64, help="photographs the crops are drawn from")
    parser.add_argument("--validation_data", default=str(DATA / "val-set14"))
    parser.add_argument("--limit", type=int, default=None, help="first N validation photographs only")
    parser.add_argument(
        "--training_forward",
        default="surrogate",
        help="comma-separated: 'surrogate' (train through the surrogate alone) and/or 'real' (the real codec forward, "
        "the surrogate's gradient backward: CodecInTheLoop)",
    )
    parser.add_argument(
        "--integer_qualities",
        action="store_true",
        help="round each training quality to an integer (the same draws), as the real codec in the loop does; "
        "without it the surrogate-alone training draws continuous qualities",
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="processes for the real codec sweeps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="instead of training: merge these result files (runs on separate codecs) into --output, with the summary",
    )
    parser.add_argument(
        "--compare_with",
        default=None,
        help="an earlier result file (other proxy weights): compare its learned-proxy rows with these",
    )
    parser.add_argument(
        "--proxy_weights",
        default=None,
        help="folder of proxy_{codec}.safetensors/.json to use for the learned proxies (default: the shipped ones)",
    )
    parser.add_argument("--output", default="benchmarks/results/proxy_agreement.json")
    parser.add_argument("--plot", default=None, help="scatter plot of proxy-measured vs real BD-rates (.png)")
    return parser.parse_args(input_args)


class PreFilter(nn.Module):
    """x + CNN(x), clamped to [0, 1] with a straight-through gradient; the last layer starts at zero (identity)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, padding_mode="replicate"),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="replicate"),
            nn.ReLU(),
            nn.Conv2d(channels, 3, 3, padding=1, padding_mode="replicate"),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.net(x)
        return y + (y.clamp(0, 1) - y).detach()


def training_range(surrogate, codec) -> tuple[float, float]:
    """Qualities the pre-processor trains at: the proxy's fitted range, or the codec's sweep for DiffJPEG."""
    fitted = getattr(surrogate, "fitted_quality_range", None)
    if fitted is not None:
        return float(fitted[0]), float(fitted[1])
    return float(min(codec.sweep_qualities)), float(max(codec.sweep_qualities))


def train(surrogate, codec, photos: list[torch.Tensor], args, lambda_rate: float, desc: str):
    """Train a PreFilter through ``surrogate``; returns it and the loss of the first and last 20 steps."""
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = PreFilter(args.channels)
    loss_fn = RatePerceptionLoss(
        surrogate, None, lambda_rate=lambda_rate, lambda_perceptual=0.0, lambda_mse=1.0, rate_weighting="codec_slope"
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    lo, hi = training_range(surrogate, codec)
    losses = []
    for _ in tqdm(range(args.steps), desc=desc, leave=False):
        crops = []
        for _ in range(args.batch_size):
            photo = rng.choice(photos)
            top = rng.randrange(photo.shape[-2] - args.crop + 1)
            left = rng.randrange(photo.shape[-1] - args.crop + 1)
            crops.append(photo[:, top : top + args.crop, left : left + args.crop])
        batch = torch.stack(crops)
        quality = rng.uniform(lo, hi)
        if args.integer_qualities:
            quality = float(round(quality))
        terms = loss_fn(batch, model(batch), quality)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        losses.append(float(terms.loss))
    return model.eval(), {"first_20": float(np.mean(losses[:20])), "last_20": float(np.mean(losses[-20:]))}


def _curve(points: dict[float, list[dict]]) -> dict:
    """Per-quality means of per-image rows -> a results dict for ``bd_table``."""
    qualities = sorted(points)
    results = {"quality": qualities, "bpp": [float(np.mean([r["bpp"] for r in points[q]])) for q in qualities]}
    for metric in METRICS:
        results[KEYS[metric]] = [float(np.mean([r[metric] for r in points[q]])) for q in qualities]
    return {"results": results}


@torch.no_grad()
def proxy_curves(surrogate, images: list[torch.Tensor], qualities, model) -> tuple[dict, dict]:
    """Surrogate-measured R-D of the codec alone and of the pre-processed images (bits and decodes of the proxy)."""
    alone, processed = {}, {}
    for x in images:
        pixels = x.shape[-2] * x.shape[-1]
        inputs = {"alone": x, "processed": model(x)}
        for quality in qualities:
            for name, target in (("alone", alone), ("processed", processed)):
                out = surrogate(inputs[name], float(quality))
                decoded = torch.round(out.reconstruction.float().clamp(0, 1) * 255) / 255
                values = compute_metrics(x, decoded, metrics=METRICS)
                row = {"bpp": float(out.bits[0]) / pixels, **{m: values[m][0] for m in METRICS}}
                target.setdefault(float(quality), []).append(row)
    return _curve(alone), _curve(processed)


def real_curve(codec_name: str, images, qualities, preprocess, args, name: str) -> dict:
    result = evaluate(
        images, codec_name, list(qualities), metrics=list(METRICS), preprocess=preprocess, name=name,
        workers=args.workers, progress=False,
    )  # fmt: skip
    return result.to_dict()


def pearson(a: list[float], b: list[float]) -> float:
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return float("nan")
    return float(np.corrcoef(*zip(*pairs))[0, 1])


def agreement_summary(rows: list[dict]) -> dict:
    """Per metric: sign agreement, Pearson and mean gap between the surrogate-measured and the real BD-rates."""
    summary = {}
    for metric in METRICS:
        proxy = [r["proxy_bd_rate"][metric] for r in rows]
        real = [r["real_bd_rate"][metric] for r in rows]
        finite = [(p, q) for p, q in zip(proxy, real) if math.isfinite(p) and math.isfinite(q)]
        learned = [
            (r["proxy_bd_rate"][metric], r["real_bd_rate"][metric]) for r in rows if r["surrogate"] != "DiffJPEG"
        ]
        summary[metric] = {
            "sign_agreement": float(np.mean([np.sign(p) == np.sign(q) for p, q in finite]))
            if finite
            else float("nan"),
            "pearson": pearson(proxy, real),
            "pearson_learned_proxies": pearson([p for p, _ in learned], [q for _, q in learned]),
            "mean_abs_gap": float(np.mean([abs(p - q) for p, q in finite])) if finite else float("nan"),
        }
    return summary


def forward_comparison(rows: list[dict]) -> dict:
    """Per metric, over the (codec, lambda) pairs trained both ways: the real BD-rates of each way and how often the
    real codec in the loop gave the better one (lower BD-rate); empty when no pair was trained both ways."""
    pairs: dict[tuple, dict] = {}
    for r in rows:
        pairs.setdefault((r["codec"], r["lambda"]), {})[r.get("training_forward", "surrogate")] = r
    both = [p for p in pairs.values() if {"surrogate", "real"} <= set(p)]
    if not both:
        return {}
    comparison = {}
    for metric in METRICS:
        surrogate = [p["surrogate"]["real_bd_rate"][metric] for p in both]
        real = [p["real"]["real_bd_rate"][metric] for p in both]
        comparison[metric] = {
            "pairs": len(both),
            "mean_surrogate": float(np.mean(surrogate)),
            "mean_real": float(np.mean(real)),
            "real_better": int(sum(b < a for a, b in zip(surrogate, real))),
            "worse_than_codec_alone": {
                "surrogate": int(sum(v > 0 for v in surrogate)),
                "real": int(sum(v > 0 for v in real)),
            },
        }
    return comparison


def proxy_comparison(rows: list[dict], before: list[dict]) -> dict:
    """Per metric, over the (codec, lambda) pairs trained through a learned proxy alone both in ``rows`` and in
    ``before`` (an earlier run with other proxy weights): how far the proxy-measured BD-rate is from the real one,
    how often they agree in sign, and the real BD-rates, for each set of weights."""

    def key(r):
        return r["codec"], r["lambda"]

    mine = {
        key(r): r
        for r in rows
        if r.get("training_forward", "surrogate") == "surrogate" and r["surrogate"] != "DiffJPEG"
    }
    old = {key(r): r for r in before if r.get("training_forward", "surrogate") == "surrogate"}
    common = sorted(set(mine) & set(old))
    comparison = {"pairs": [list(k) for k in common]}
    for metric in METRICS:
        entry = {}
        for name, table in (("before", old), ("now", mine)):
            proxy = [table[k]["proxy_bd_rate"][metric] for k in common]
            real = [table[k]["real_bd_rate"][metric] for k in common]
            entry[name] = {
                "same_sign": int(sum(np.sign(p) == np.sign(q) for p, q in zip(proxy, real))),
                "mean_abs_gap": float(np.mean([abs(p - q) for p, q in zip(proxy, real)])) if common else float("nan"),
                "mean_real": float(np.mean(real)) if common else float("nan"),
                "real_better_than_codec_alone": int(sum(q < 0 for q in real)),
            }
        comparison[metric] = entry
    return comparison


def merge(args: argparse.Namespace) -> dict:
    """``--merge``: one report from several runs (the rows in order, the summaries recomputed)."""
    import json

    reports = [json.loads(Path(path).read_text()) for path in args.merge]
    rows = [row for report in reports for row in report["rows"]]
    report = {
        "benchmark": "proxy_agreement",
        "description": __doc__.split("\n")[0],
        "merged_from": [{"file": Path(p).name, "settings": r["settings"]} for p, r in zip(args.merge, reports)],
        "validation_images": reports[0]["validation_images"],
        "machine": reports[0]["machine"],
        "rows": rows,
        "summary": agreement_summary([r for r in rows if r.get("training_forward", "surrogate") == "surrogate"]),
        "forward_comparison": forward_comparison(rows),
    }
    if args.compare_with:
        report["compared_with"] = Path(args.compare_with).name
        report["proxy_comparison"] = proxy_comparison(rows, json.loads(Path(args.compare_with).read_text())["rows"])
        for metric in METRICS:
            c = report["proxy_comparison"][metric]
            print(f"{metric}: " + "; ".join(
                f"{name}: same sign {v['same_sign']}/{len(report['proxy_comparison']['pairs'])}, mean |proxy - real| "
                f"{v['mean_abs_gap']:.2f}, mean real {v['mean_real']:+.2f} %, beats the codec alone "
                f"{v['real_better_than_codec_alone']}" for name, v in c.items()))  # fmt: skip
    write_json(args.output, report)
    if args.plot:
        plot(rows, args.plot)
    return report


def main(args: argparse.Namespace) -> dict:
    if args.merge:
        return merge(args)
    torch.set_num_threads(args.threads)
    train_files = [f for folder in args.train_data for f in list_images(folder)]
    random.Random(args.seed).shuffle(train_files)
    photos = [pil_to_tensor(load_image(f))[0] for f in train_files[: args.train_images]]
    photos = [p for p in photos if min(p.shape[-2:]) >= args.crop]
    val_files = list_images(args.validation_data)[: args.limit]
    val_images = [load_image(f) for f in val_files]
    val_tensors = [pil_to_tensor(im) for im in val_images]
    if not photos or not val_images:
        raise SystemExit(
            f"no training photographs ({args.train_data}) or validation photographs ({args.validation_data})"
        )
    lambdas = [float(v) for v in args.lambdas.split(",")]
    forwards = [v.strip() for v in args.training_forward.split(",") if v.strip()]
    if not forwards or set(forwards) - {"surrogate", "real"}:
        raise SystemExit(f"--training_forward takes 'surrogate' and/or 'real', got {args.training_forward!r}")
    rows = []
    for codec_name in args.codecs.split(","):
        codec = get_codec(codec_name)
        if args.proxy_weights and codec_name in PROXY_CODECS:
            surrogate = load_proxy(codec_name, args.proxy_weights)
        else:
            surrogate = get_surrogate(codec_name)
        qualities = codec.sweep_qualities
        real_alone = real_curve(codec_name, val_images, qualities, None, args, f"{codec_name} alone")
        for lambda_rate, forward in [(lam, fwd) for lam in lambdas for fwd in forwards]:
            trained_through = surrogate if forward == "surrogate" else CodecInTheLoop(surrogate, workers=args.threads)
            start = time.perf_counter()
            model, losses = train(
                trained_through, codec, photos, args, lambda_rate, f"{codec_name} lambda {lambda_rate:g} ({forward})"
            )
            train_seconds = time.perf_counter() - start

            def preprocess(images, model=model):
                with torch.no_grad():
                    return [tensor_to_pil(model(pil_to_tensor(im)))[0] for im in images]

            proxy_alone, proxy_processed = proxy_curves(surrogate, val_tensors, qualities, model)
            real_processed = real_curve(codec_name, val_images, qualities, preprocess, args, f"pre + {codec_name}")
            proxy_bd, real_bd = bd_table(proxy_alone, proxy_processed), bd_table(real_alone, real_processed)
            row = {
                "codec": codec_name,
                "surrogate": type(surrogate).__name__,
                "rate_features": getattr(getattr(surrogate, "net", None), "rate_features", None),
                "training_forward": forward,
                "lambda": lambda_rate,
                "qualities": list(qualities),
                "train_seconds": train_seconds,
                "loss": losses,
                "proxy_bd_rate": {m: proxy_bd.get(KEYS[m], float("nan")) for m in METRICS},
                "real_bd_rate": {m: real_bd.get(KEYS[m], float("nan")) for m in METRICS},
                "proxy_mean_bpp_change": float(
                    np.mean(proxy_processed["results"]["bpp"]) / np.mean(proxy_alone["results"]["bpp"]) - 1
                ),
                "real_mean_bpp_change": float(
                    np.mean(real_processed["results"]["bpp"]) / np.mean(real_alone["results"]["bpp"]) - 1
                ),
            }
            rows.append(row)
            print(
                f"{codec_name} lambda {lambda_rate:g} ({forward} forward): BD-rate proxy / real  PSNR "
                f"{row['proxy_bd_rate']['psnr']:+.2f} / {row['real_bd_rate']['psnr']:+.2f} %  SSIMULACRA2 "
                f"{row['proxy_bd_rate']['ssimulacra2']:+.2f} / {row['real_bd_rate']['ssimulacra2']:+.2f} %",
                flush=True,
            )
    summary = agreement_summary([r for r in rows if r.get("training_forward", "surrogate") == "surrogate"])
    comparison = forward_comparison(rows)
    print("\n| codec | lambda | trained with | proxy BD PSNR | real BD PSNR | proxy BD SSIMULACRA2 | real BD SSIMULACRA2 "
          "| train s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        p, q = r["proxy_bd_rate"], r["real_bd_rate"]
        print(
            f"| {r['codec']} | {r['lambda']:g} | {r.get('training_forward', 'surrogate')} forward | {p['psnr']:+.2f} % | "
            f"{q['psnr']:+.2f} % | {p['ssimulacra2']:+.2f} % | {q['ssimulacra2']:+.2f} % | {r['train_seconds']:.0f} |"
        )
    for metric, s in summary.items():
        print(
            f"{metric} (trained through the surrogate alone): same sign {s['sign_agreement']:.0%}, Pearson "
            f"{s['pearson']:.3f} (learned proxies only {s['pearson_learned_proxies']:.3f}), mean |proxy - real| "
            f"{s['mean_abs_gap']:.2f} points"
        )
    for metric, c in comparison.items():
        print(
            f"{metric}, real BD-rate over {c['pairs']} (codec, lambda) pairs: surrogate forward {c['mean_surrogate']:+.2f} "
            f"%, real forward {c['mean_real']:+.2f} %; the real forward is better in {c['real_better']} of {c['pairs']}"
        )
    report = {
        "benchmark": "proxy_agreement",
        "description": __doc__.split("\n")[0],
        "settings": {k: v for k, v in vars(args).items()},
        "validation_images": [Path(f).name for f in val_files],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "rows": rows,
        "summary": summary,
        "forward_comparison": comparison,
    }
    write_json(args.output, report)
    if args.plot:
        plot(rows, args.plot)
    return report


def plot(rows: list[dict], path: str) -> None:
    """Scatter of surrogate-measured vs real BD-rates (surrogate-forward training); below it, where pairs were trained
    both ways, bars of the real BD-rate after training with the surrogate forward and with the real codec forward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs: dict[tuple, dict] = {}
    for r in rows:
        pairs.setdefault((r["codec"], r["lambda"]), {})[r.get("training_forward", "surrogate")] = r
    both = [(key, p) for key, p in pairs.items() if {"surrogate", "real"} <= set(p)]
    n_rows = 2 if both else 1
    fig, axes = plt.subplots(n_rows, len(METRICS), figsize=(5.5 * len(METRICS), 4.5 * n_rows), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        values = []
        for r in rows:
            if r.get("training_forward", "surrogate") != "surrogate":
                continue
            p, q = r["proxy_bd_rate"][metric], r["real_bd_rate"][metric]
            if math.isfinite(p) and math.isfinite(q):
                ax.scatter(p, q, marker="s" if r["surrogate"] == "DiffJPEG" else "o")
                ax.annotate(
                    f"{r['codec']} {r['lambda']:g}", (p, q), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
                values += [p, q]
        if values:
            lo, hi = min(values + [0]) - 1, max(values + [0]) + 1
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
            ax.axhline(0, color="grey", lw=0.5)
            ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"BD-rate measured through the surrogate, {metric} (%)")
        ax.set_ylabel(f"BD-rate with the real codec, {metric} (%)")
        ax.set_title(f"{metric}: trained through the surrogate (val-set14)")
    if both:
        labels = [f"{codec} {lam:g}" for (codec, lam), _ in both]
        x = np.arange(len(both))
        for ax, metric in zip(axes[1], METRICS):
            ax.bar(x - 0.2, [p["surrogate"]["real_bd_rate"][metric] for _, p in both], 0.4, label="surrogate forward")
            ax.bar(x + 0.2, [p["real"]["real_bd_rate"][metric] for _, p in both], 0.4, label="real codec forward")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
            ax.set_ylabel(f"real BD-rate vs codec alone, {metric} (%)")
            ax.set_title(f"{metric}: real BD-rate by how it was trained")
            ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(parse_args())
