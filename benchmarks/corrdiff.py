"""Rate-distortion of a trained CorrDiff model on Kodak against JPEG and HEIC, from real bitstreams.

Measured per image (every rate is ``8 * len(file) / pixels`` of the original image):
- ``corrdiff-e2e``: files without side information (``num_inference_steps=0``), decoded by the end-to-end decoder;
- ``corrdiff-dw{w}``: the corrected diffusion decoder at distortion weight ``w`` (its side information counted);
- ``diffusion-uncorrected``: the plain DDIM sample with the same seed (rate = the same file minus the side stream,
  i.e. what a codec without correction would send);
- ``jpeg`` / ``heic``: ``rp_diffusers.codecs`` at their sweep qualities.
Metrics: ``--metrics`` through the project's one measurement (``rp_diffusers.evaluation.sweep.measure``: PSNR,
MS-SSIM, SSIMULACRA2, Butteraugli, VMAF / VMAF-NEG by default; LPIPS/DISTS where their weights are present) and a
texture-energy ratio (mean squared Laplacian of the reconstruction over the original's: 1 = as much fine detail
as the original, < 1 = blurred). A BD-rate table of every CorrDiff curve against each baseline follows, and the
PSNR difference to JPEG at the end-to-end curve's own rates in 0.2-0.6 bpp (the issue's target: +1 dB), and its
smallest value over the whole of 0.2-0.6 bpp with both curves interpolated linearly in bpp (NaN where a curve does
not reach both ends).
The first image's files are also decoded and checked pixel-identical to the encoder's reconstruction.

Kodak is the TEST set: this measures, nothing here tunes anything.

Example:
    python benchmarks/corrdiff.py --model /tmp/corrdiff_run/diffusion --threads 1 \\
        --output benchmarks/results/corrdiff.json --plot benchmarks/results/corrdiff.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rp_diffusers.codecs import get_codec
from rp_diffusers.corrdiff import CorrDiffCodec
from rp_diffusers.evaluation.bd_table import bd_overlap, bd_table
from rp_diffusers.evaluation.plot import plot_rd
from rp_diffusers.evaluation.results import EvaluationResult, higher_is_better
from rp_diffusers.evaluation.sweep import measure as measure_pair
from rp_diffusers.evaluation.sweep import usable_metrics
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor, tensor_to_pil

DEFAULT_KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
# JPEG from quality 2 (about 0.17 bpp on Kodak), so that its curve covers the whole 0.2-0.6 bpp of the target
BASELINE_QUALITIES = {"jpeg": "2,3,4,5,8,12,16,20,30,40,55,80", "heic": "10,20,30,40,50,60"}
DEFAULT_METRICS = "psnr,ms_ssim,ssimulacra2,butteraugli,butteraugli_3norm,vmaf,vmaf_neg"


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="CorrDiff model folder (or Hub id) from train_corrdiff.py.")
    parser.add_argument("--images", default=str(DEFAULT_KODAK), help="Folder of test images (Kodak).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N images (sorted by name).")
    parser.add_argument("--qualities", default=None, help="CorrDiff qualities of the e2e curve (default: all).")
    parser.add_argument(
        "--diffusion_qualities",
        default="auto",
        help="Qualities run with the diffusion decoder (auto: the model's lowest, default and highest; '' skips it).",
    )
    parser.add_argument("--distortion_weights", default="1.0,0.0", help="Distortion weights of the corrected runs.")
    parser.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="DDIM steps (default: the model's config, also where its diffusion decoder is off by default).",
    )
    parser.add_argument(
        "--refine_steps",
        type=int,
        default=0,
        help="Also run the end-to-end curve with encoder-side latent refinement (CorrDiffCodec refine_steps): "
        "curve corrdiff-e2e-refined{N}, the same decoder, in the same run as the plain one (0: not run).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Diffusion noise seed.")
    parser.add_argument("--baselines", default="jpeg,heic", help="Comma-separated rp_diffusers codecs to compare.")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help="Comma-separated rp_diffusers metrics.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy CPU).")
    parser.add_argument("--output", default="benchmarks/results/corrdiff.json", help="JSON output path.")
    parser.add_argument(
        "--plot", default="benchmarks/results/corrdiff.png", help="R-D plot path (PNG/SVG; '' skips it)."
    )
    parser.add_argument(
        "--crops",
        default="benchmarks/results/corrdiff_crops.png",
        help="Side-by-side crops (original, JPEG, CorrDiff end-to-end at about the same bpp, and the uncorrected and "
        "corrected diffusion decoders of the same file when the model has one) ('' skips them).",
    )
    parser.add_argument("--crops_image", default="kodim23.png", help="The image of the crop figure.")
    parser.add_argument(
        "--crops_quality", type=int, default=None, help="CorrDiff quality of the crop figure (default: the model's)."
    )
    return parser.parse_args(input_args)


def texture_ratio(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Mean squared Laplacian of ``test`` over that of ``reference`` ((1, 3, H, W) in [0, 1])."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    energy = [F.conv2d(x.double(), kernel.double(), groups=3).pow(2).mean() for x in (reference, test)]
    return float(energy[1] / energy[0])


METRICS: list[str] = DEFAULT_METRICS.split(",")  # set by main from --metrics


def measure(reference: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    """The project's metrics of one pair ((1, 3, H, W) in [0, 1]; the test is rounded to 8 bits as a decoder's
    output), keyed as CompressAI's results files, plus the texture-energy ratio."""
    original, decoded = tensor_to_pil(reference)[0], tensor_to_pil(test)[0]
    values = measure_pair(original, decoded, METRICS, result_keys=True)
    return {**values, "texture-ratio": texture_ratio(reference, pil_to_tensor(decoded))}


def corrdiff_results(args, images) -> tuple[list[EvaluationResult], dict]:
    e2e = CorrDiffCodec.from_pretrained(args.model, num_inference_steps=0)
    qualities = [int(q) for q in args.qualities.split(",")] if args.qualities else list(e2e.sweep_qualities)
    curves = {"e2e": EvaluationResult("corrdiff-e2e", f"{e2e.description}; end-to-end decoder only")}
    for name, image, reference in tqdm(images, desc="corrdiff e2e", leave=False):
        for quality in qualities:
            result = e2e.run(image, quality)
            row = {"image": name, "quality": quality, "bpp": result.bpp, "encoding_time": result.encode_seconds}
            curves["e2e"].records.append({**row, **measure(reference, pil_to_tensor(result.reconstruction))})
    if args.refine_steps:
        refined = CorrDiffCodec(model=e2e.model, num_inference_steps=0, refine_steps=args.refine_steps, seed=args.seed)
        curve = curves["refined"] = EvaluationResult(f"corrdiff-e2e-refined{args.refine_steps}", refined.description)
        for name, image, reference in tqdm(images, desc=f"corrdiff e2e, {args.refine_steps} refinement steps"):
            for quality in qualities:
                result = refined.run(image, quality)
                row = {"image": name, "quality": quality, "bpp": result.bpp, "encoding_time": result.encode_seconds}
                curve.records.append({**row, **measure(reference, pil_to_tensor(result.reconstruction))})
    checks = {}
    weights = [float(w) for w in args.distortion_weights.split(",") if w] if args.diffusion_qualities else []
    steps = e2e.model.config.num_inference_steps if args.num_inference_steps is None else args.num_inference_steps
    if weights and (e2e.model.unet is None or steps == 0):
        raise ValueError(f"{args.model} has no diffusion decoder: pass --diffusion_qualities ''")
    for weight_index, weight in enumerate(weights):
        codec = CorrDiffCodec(model=e2e.model, distortion_weight=weight, seed=args.seed,
                              num_inference_steps=steps)  # fmt: skip
        corrected = curves.setdefault(f"dw{weight}", EvaluationResult(f"corrdiff-dw{weight}", codec.description))
        plain = curves.setdefault("plain", EvaluationResult("diffusion-uncorrected", "same seed, no correction"))
        for index, (name, image, reference) in enumerate(tqdm(images, desc=f"diffusion, dw {weight}", leave=False)):
            for quality in [int(q) for q in args.diffusion_qualities.split(",") if q]:
                start = time.perf_counter()
                encoding = codec.encode_details(image, quality)
                seconds = time.perf_counter() - start
                pixels = image.width * image.height
                bpp = 8 * len(encoding.data) / pixels
                row = {"image": name, "quality": quality, "bpp": bpp, "encoding_time": seconds,
                       "side-bpp": encoding.bits["side"] / pixels}  # fmt: skip
                corrected.records.append({**row, **measure(reference, encoding.reconstruction)})
                if weight_index == 0:  # the uncorrected sample does not depend on the distortion weight
                    plain_row = {**row, "bpp": bpp - row["side-bpp"], "side-bpp": 0.0}
                    plain.records.append({**plain_row, **measure(reference, encoding.uncorrected)})
                if index == 0:
                    decoded = codec.decompress(encoding.data)
                    expected = np.round(encoding.reconstruction[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                    checks[f"dw{weight}-q{quality}"] = bool(np.array_equal(np.asarray(decoded), expected))
    return list(curves.values()), checks


def baseline_results(args, images) -> list[EvaluationResult]:
    results = []
    for name in [n for n in args.baselines.split(",") if n]:
        codec = get_codec(name)
        curve = EvaluationResult(name, codec.description)
        for image_name, image, reference in tqdm(images, desc=name, leave=False):
            for quality in [int(q) for q in BASELINE_QUALITIES.get(name, "").split(",") if q]:
                result = codec.run(image, quality)
                row = {
                    "image": image_name,
                    "quality": quality,
                    "bpp": result.bpp,
                    "encoding_time": result.encode_seconds,
                }
                curve.records.append({**row, **measure(reference, pil_to_tensor(result.reconstruction))})
        results.append(curve)
    return results


def compare_to_baselines(corrdiff: list[EvaluationResult], baselines: list[EvaluationResult]) -> dict:
    """BD-rate (with the curves' overlap) of each CorrDiff curve against each baseline, and each end-to-end curve's
    PSNR minus each baseline's at the same bpp, for its points in 0.2-0.6 bpp and, both curves interpolated, its
    smallest value over the whole of 0.2-0.6 bpp (NaN where a curve does not reach both ends). Returns the tables
    and their lines."""
    out: dict = {"bd_rate": {}, "overlap": {}, "psnr_gain_db_0.2-0.6bpp": {}, "psnr_gain_db_min_0.2-0.6bpp": {}}
    out["lines"] = []

    def results(curve: EvaluationResult) -> dict:  # the metrics only, as bd_table reads a results file
        return {"results": {k: v for k, v in curve.averaged().items() if k not in ("texture-ratio", "side-bpp")}}

    for base in baselines:
        anchor = base.averaged()
        for curve in corrdiff:
            if len(curve.qualities()) < 4:
                continue
            key = f"{curve.name} vs {base.name}"
            out["bd_rate"][key] = bd_table(results(base), results(curve))
            out["overlap"][key] = bd_overlap(results(base), results(curve))
            cells = [f"{m} {v:+.1f}% ({100 * out['overlap'][key].get(m, float('nan')):.0f}%)"
                     for m, v in out["bd_rate"][key].items()]  # fmt: skip
            out["lines"].append(f"BD-rate {key}: " + ", ".join(cells))
        for curve in [c for c in corrdiff if c.name.startswith("corrdiff-e2e")]:
            e2e = curve.averaged()
            # keyed by the baseline for the plain end-to-end curve (as before), by "curve vs baseline" for a refined one
            key = base.name if curve.name == "corrdiff-e2e" else f"{curve.name} vs {base.name}"
            gains = [
                {"bpp": b, "psnr-rgb": p, "gain_db": p - at_rate(anchor, b, "psnr-rgb")}
                for b, p in zip(e2e["bpp"], e2e["psnr-rgb"])
                if 0.2 <= b <= 0.6
            ]
            out["psnr_gain_db_0.2-0.6bpp"][key] = gains
            listed = ", ".join(f"{g['bpp']:.3f} bpp {g['gain_db']:+.2f} dB" for g in gains)
            out["lines"].append(f"{curve.name} PSNR minus {base.name} at the same bpp (0.2-0.6 bpp): {listed}")
            grid = np.linspace(0.2, 0.6, 41)
            diffs = np.array([at_rate(e2e, b, "psnr-rgb") - at_rate(anchor, b, "psnr-rgb") for b in grid])
            least = float(diffs.min())  # NaN where either curve misses part of the range
            out["psnr_gain_db_min_0.2-0.6bpp"][key] = least
            out["lines"].append(f"  smallest over all of 0.2-0.6 bpp (both curves interpolated): {least:+.2f} dB")
    return out


DECODER_METRICS = ("psnr-rgb", "ssimulacra2", "butteraugli", "butteraugli-3norm", "vmaf", "vmaf-neg", "ms-ssim-rgb")


def compare_decoders(corrdiff: list[EvaluationResult]) -> dict:
    """The three decoders of the same bitstreams: each corrected curve (``corrdiff-dw{w}``) against the end-to-end
    decoder and the uncorrected diffusion sample, at equal total bits.

    Per diffusion quality: the corrected file's total bpp (its side information included, also shown alone) and,
    per metric, the corrected value minus the other decoder's, interpolated on that decoder's mean curve at the
    corrected file's bpp (``nan`` outside its range; the uncorrected curve then also gets its value from the same
    y and z streams, which has fewer bits and so favours it). BD-rates where both curves have 4+ points at the
    diffusion qualities (the other decoder's points at other qualities are left out of the fit). The issue's
    targets, per distortion weight: corrected beats uncorrected in PSNR, and beats e2e in SSIMULACRA2 and
    Butteraugli (max-norm and 3-norm), at every diffusion quality."""
    by_name = {c.name: c.averaged() for c in corrdiff}
    e2e, plain = by_name.get("corrdiff-e2e"), by_name.get("diffusion-uncorrected")
    out: dict = {"per_quality": {}, "bd_rate": {}, "targets": {}, "lines": []}
    if e2e is None or plain is None:
        return out
    for curve in [c for c in corrdiff if c.name.startswith("corrdiff-dw")]:
        mean = by_name[curve.name]
        keys = [k for k in DECODER_METRICS if k in mean and k in e2e and k in plain]
        rows = []
        for i, quality in enumerate(mean["quality"]):
            bpp = mean["bpp"][i]
            row = {"quality": quality, "bpp": bpp, "side-bpp": mean["side-bpp"][i]}
            for key in keys:
                sign = 1.0 if higher_is_better(key) else -1.0  # positive = the corrected decoder is better
                same_streams = plain[key][plain["quality"].index(quality)]
                at_plain = at_rate(plain, bpp, key)
                row[key] = {
                    "corrected": mean[key][i],
                    "vs_e2e": sign * (mean[key][i] - at_rate(e2e, bpp, key)),
                    "vs_uncorrected": sign * (mean[key][i] - (same_streams if np.isnan(at_plain) else at_plain)),
                }
            rows.append(row)
        out["per_quality"][curve.name] = rows

        def always(key: str, other: str, rows: list = rows) -> bool | None:
            values = [r[key][other] for r in rows if key in r]
            return None if not values or any(np.isnan(values)) else all(v > 0 for v in values)

        targets = {
            "psnr_above_uncorrected": always("psnr-rgb", "vs_uncorrected"),
            "ssimulacra2_above_e2e": always("ssimulacra2", "vs_e2e"),
            "butteraugli_below_e2e": always("butteraugli", "vs_e2e"),
            "butteraugli_3norm_below_e2e": always("butteraugli-3norm", "vs_e2e"),
        }
        out["targets"][curve.name] = targets
        for other, anchor in (("corrdiff-e2e", e2e), ("diffusion-uncorrected", plain)):
            # the anchor at the corrected curve's qualities only: the BD-rate interpolant of each curve uses its
            # neighbouring points, so e2e rates added below would move the result without any pixel changing
            same = [i for i, q in enumerate(anchor["quality"]) if q in mean["quality"]]
            anchor = {k: [v[i] for i in same] for k, v in anchor.items()}
            if len(mean["quality"]) >= 4 and len(anchor["quality"]) >= 4:
                metrics = {k: v for k, v in anchor.items() if k in keys or k == "bpp"}
                tested = {k: v for k, v in mean.items() if k in keys or k == "bpp"}
                out["bd_rate"][f"{curve.name} vs {other}"] = bd_table({"results": metrics}, {"results": tested})
        for row in rows:
            cells = [f"{k} {row[k]['vs_e2e']:+.3f}/{row[k]['vs_uncorrected']:+.3f}" for k in keys if k in row]
            out["lines"].append(
                f"{curve.name} q{row['quality']:.0f} ({row['bpp']:.4f} bpp, side {row['side-bpp']:.5f}), better than "
                "e2e/uncorrected by (positive = better): " + ", ".join(cells)
            )
        out["lines"].append(f"{curve.name} targets: {targets}")
    for key, table in out["bd_rate"].items():
        out["lines"].append(f"BD-rate {key}: " + ", ".join(f"{m} {v:+.1f}%" for m, v in table.items()))
    out["markdown"] = decoder_tables(corrdiff)
    out["lines"].append(out["markdown"])
    return out


def decoder_tables(corrdiff: list[EvaluationResult]) -> str:
    """One markdown table per metric: at each diffusion quality, the end-to-end, uncorrected and corrected decoders of
    the same files (the bpp of each in brackets: the corrected ones include their side information)."""
    by_name = {c.name: c.averaged() for c in corrdiff}
    names = ["corrdiff-e2e", "diffusion-uncorrected"] + [n for n in by_name if n.startswith("corrdiff-dw")]
    if "diffusion-uncorrected" not in by_name:
        return ""
    qualities = by_name["diffusion-uncorrected"]["quality"]
    labels = {"corrdiff-e2e": "e2e", "diffusion-uncorrected": "uncorrected"}
    tables = []
    for key in [k for k in DECODER_METRICS if all(k in by_name[n] for n in names)]:
        lines = [f"{key} | " + " | ".join(labels.get(n, n.replace("corrdiff-dw", "corrected dw ")) for n in names)]
        lines.append("| --- " * (len(names) + 1) + "|")
        for quality in qualities:
            cells = []
            for name in names:
                mean = by_name[name]
                i = mean["quality"].index(quality)
                cells.append(f"{mean[key][i]:.3f} ({mean['bpp'][i]:.4f})")
            lines.append(f"q{quality:.0f} | " + " | ".join(cells))
        tables.append("\n".join(f"| {line} |" if not line.startswith("|") else line for line in lines))
    return "\n\n".join(tables)


CROP_LABELS = {
    "psnr-rgb": "PSNR {:.2f} dB",
    "ssimulacra2": "SSIMULACRA2 {:.1f}",
    "butteraugli-3norm": "Butteraugli-3n {:.2f}",
}


def crop_figure(args, images, output: Path) -> dict:
    """Original, JPEG at the lowest quality whose file is at least as large, CorrDiff's end-to-end decode at
    ``--crops_quality`` and, when the model has a diffusion decoder, its uncorrected sample and the corrected one at
    each of the first two ``--distortion_weights`` (same y and z streams); a 256x192 centre crop of each, zoomed
    twice, with bpp and whole-image metrics below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    name, image, reference = next(((n, i, r) for n, i, r in images if n == args.crops_image), images[0])
    e2e = CorrDiffCodec.from_pretrained(args.model, num_inference_steps=0)
    ours = e2e.run(image, args.crops_quality)
    jpeg = get_codec("jpeg")
    alone = next((r for q in range(1, 96) if (r := jpeg.run(image, q)).bpp >= ours.bpp), jpeg.run(image, 95))
    pixels = image.width * image.height
    panels = {"original": (image, {"bpp": 24.0})}
    for label, result in ((f"JPEG q{alone.quality}", alone), (f"CorrDiff e2e q{args.crops_quality}", ours)):
        panels[label] = (result.reconstruction, {"bpp": result.bpp})
    weights = [float(w) for w in args.distortion_weights.split(",") if w][:2] if args.diffusion_qualities else []
    for weight in weights:
        if e2e.model.unet is None:
            break
        steps = e2e.model.config.num_inference_steps if args.num_inference_steps is None else args.num_inference_steps
        codec = CorrDiffCodec(model=e2e.model, distortion_weight=weight, seed=args.seed, num_inference_steps=steps)
        encoding = codec.encode_details(image, args.crops_quality)
        if "uncorrected diffusion" not in panels:
            side = encoding.bits["side"]
            panels["uncorrected diffusion"] = (
                tensor_to_pil(encoding.uncorrected)[0],
                {"bpp": (8 * len(encoding.data) - side) / pixels},
            )
        panels[f"corrected, distortion weight {weight:g}"] = (
            tensor_to_pil(encoding.reconstruction)[0],
            {"bpp": 8 * len(encoding.data) / pixels},
        )
    for picture, values in list(panels.values())[1:]:
        values.update(measure(reference, pil_to_tensor(picture)))
    w, h = image.size
    box = ((w - 256) // 2, (h - 192) // 2, (w - 256) // 2 + 256, (h - 192) // 2 + 192)
    rows = 1 if len(panels) <= 3 else 2
    cols = -(-len(panels) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(5.1 * cols, 4.9 * rows + 0.6 * (rows - 1)), dpi=100, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (label, (picture, values)) in zip(axes.flat, panels.items()):
        ax.imshow(picture.crop(box).resize((512, 384), Image.NEAREST))
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [label, "24 bpp (lossless)" if label == "original" else f"{values['bpp']:.3f} bpp"]
        lines += [CROP_LABELS[k].format(v) for k, v in values.items() if k in CROP_LABELS]
        ax.set_xlabel("\n".join(lines), fontsize=9)
    fig.suptitle(f"{name}, crop {box}, metrics on the whole image", fontsize=10)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, bbox_inches="tight")
    plt.close(fig)
    return {"image": name, "box": list(box), **{k: v[1] for k, v in panels.items()}}


def at_rate(curve: dict, bpp: float, key: str) -> float:
    """Linear interpolation of a mean curve at ``bpp`` (nan outside its range)."""
    points = sorted(zip(curve["bpp"], curve[key]))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return float(np.interp(bpp, xs, ys)) if xs[0] <= bpp <= xs[-1] else float("nan")


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.diffusion_qualities == "auto" or args.crops_quality is None:  # the model's own qualities
        codec = CorrDiffCodec.from_pretrained(args.model, num_inference_steps=0)
        low, high = codec.quality_range
        if args.diffusion_qualities == "auto":
            args.diffusion_qualities = ",".join(str(q) for q in dict.fromkeys((low, codec.default_quality, high)))
        if args.crops_quality is None:
            args.crops_quality = codec.default_quality
    METRICS[:] = usable_metrics([m for m in args.metrics.split(",") if m])
    files = list_images(args.images)
    files = files[: args.limit] if args.limit else files
    images = []
    for path in files:
        image = load_image(path)
        images.append((path.name, image, pil_to_tensor(image)))
    start = time.perf_counter()
    corrdiff, checks = corrdiff_results(args, images)
    baselines = baseline_results(args, images)
    curves = [curve.to_dict() for curve in corrdiff + baselines]
    keys = [k for k in curves[0]["results"] if k not in ("quality", "bpp", "encoding_time", "side-bpp")]
    print(f"{'method':24s} {'q':>3s} {'bpp':>7s} {'side':>7s} " + " ".join(f"{k[:12]:>12s}" for k in keys)
          + "  " + "  ".join(f"{b.name} PSNR@bpp" for b in baselines))  # fmt: skip
    for curve in curves:
        r = curve["results"]
        for i, quality in enumerate(r["quality"]):
            side = r.get("side-bpp", [0.0] * len(r["bpp"]))[i]
            same_rate = "  ".join(f"{at_rate(b.averaged(), r['bpp'][i], 'psnr-rgb'):17.2f}" for b in baselines)
            values = " ".join(f"{r[k][i]:12.4f}" if k in r else f"{'-':>12s}" for k in keys)
            print(f"{curve['name']:24s} {quality:3.0f} {r['bpp'][i]:7.4f} {side:7.4f} {values}  {same_rate}")
    print(f"decoded files pixel-identical to the encoder's reconstruction: {checks}")
    comparisons = compare_to_baselines(corrdiff, baselines)
    for line in comparisons.pop("lines"):
        print(line)
    decoders = compare_decoders(corrdiff)
    for line in decoders.pop("lines"):
        print(line)
    crops = crop_figure(args, images, Path(args.crops)) if args.crops else None
    main_curve = next((c for c in curves if c["name"].startswith("corrdiff-dw")), curves[0])
    output = {
        **main_curve,
        "name": "corrdiff",
        "curves": curves,
        "meta": {
            "command": " ".join(sys.argv), "model": Path(args.model).name, "images": Path(args.images).name, "num_images": len(images), "seed": args.seed,
            "decode_checks": checks, "metrics": METRICS, "against_baselines": comparisons, "decoders": decoders, "crops": crops, "seconds": time.perf_counter() - start, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        },
    }  # fmt: skip
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + "\n")
    shown = [k for k in ("psnr-rgb", "ssimulacra2", "butteraugli-3norm", "vmaf-neg", "ms-ssim-rgb", "texture-ratio")
             if all(k in c["results"] for c in curves)]  # fmt: skip
    if args.plot:
        plot_rd(curves, args.plot, metrics=shown)
    print(f"wrote {path}" + "".join(f" and {extra}" for extra in (args.plot, args.crops) if extra))
    return output


if __name__ == "__main__":
    main(parse_args())
