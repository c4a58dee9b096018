"""The ceiling of JPEG pre-processing: each image's pixels optimised directly through DiffJPEG, next to the network.

A pre-processor trained on a rate-perception objective can at best reach what per-image pre-editing reaches: the
pixels x of each image are optimised with Adam, at each quality, against the SAME objective as the training recipe,

    D(x0, JPEG_q(x)) + lambda x s_q(x0) x bpp(x),   D = (100 - SSIMULACRA2) / 100 + w_mse x MSE,

with s_q the codec's own R-D slope in D at that quality (``--rate_weighting codec_slope``), through DiffJPEG
(exact forward: the decode is Pillow's, pixel for pixel). Then every edited image is encoded with the REAL JPEG
encoder at that quality and measured against the original in every metric; the BD-rate against JPEG alone says
how far above the codec's own curve per-image editing gets. The network (``--model``, the adapter the pipeline's
policy picks for JPEG, or ``--adapter``) is measured on the same images and qualities in the same run, so the
table reads "how much of the ceiling the network reaches".

    python benchmarks/preedit_ceiling.py --images ../shared/data/kodak --max_images 6 \
        --output benchmarks/results/preedit_ceiling.json
"""

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rp_diffusers.evaluation import bd_overlap, bd_table, format_bd_table, list_images, measure, usable_metrics
from rp_diffusers.losses import RatePerceptionLoss, perceptual_distance
from rp_diffusers.metrics import default_metrics
from rp_diffusers.surrogates import get_surrogate
from rp_diffusers.training_utils.preedit import pre_edit
from rp_diffusers.utils.image import load_image


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="../shared/data/kodak", help="Test photographs.")
    parser.add_argument("--max_images", type=int, default=6, help="Only the first N images (the editing is slow).")
    parser.add_argument("--qualities", default="15,25,40,60,80", help="JPEG qualities.")
    parser.add_argument("--steps", type=int, default=40, help="Adam steps per image and quality.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam step on pixels in [0, 1].")
    parser.add_argument("--perceptual_loss", default="ssimulacra2", help="The objective's perceptual distance.")
    parser.add_argument("--lambda_perceptual", type=float, default=1.0, help="Weight of the perceptual term in D.")
    parser.add_argument("--lambda_mse", type=float, default=1.0, help="Weight of the MSE in D.")
    parser.add_argument("--lambda_rate", type=float, default=1.0, help="Multiplier of the codec's own slope.")
    parser.add_argument("--model", default="default", help="Pipeline to compare with ('' to skip).")
    parser.add_argument("--adapter", default=None, help="Its adapter (default: the pipeline's policy for jpeg).")
    parser.add_argument("--metrics", nargs="*", default=None, help="Metrics (default: the weight-free ones here).")
    parser.add_argument("--output", default="benchmarks/results/preedit_ceiling.json", help="The JSON written.")
    return parser.parse_args(argv)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def to_image(tensor: torch.Tensor) -> Image.Image:
    return Image.fromarray((tensor[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def real_jpeg(image: Image.Image, quality: int) -> tuple[Image.Image, int]:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=2)
    size = buffer.tell()
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB"), size


def curve(name: str, rows: list[dict], qualities: list[int]) -> dict:
    """Per-image rows -> a results dict (mean per quality) in the sweep's schema."""
    keys = [k for k in rows[0] if k not in ("image", "quality")]
    results = {"quality": qualities}
    for key in keys:
        results[key] = [float(np.mean([r[key] for r in rows if r["quality"] == q])) for q in qualities]
    return {"name": name, "description": name, "results": results, "per_image": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    qualities = [int(q) for q in args.qualities.split(",")]
    metrics = usable_metrics(args.metrics or [m for m in default_metrics() if m not in ("lpips", "dists")])
    paths = list_images([args.images])[: args.max_images]
    originals = [load_image(p) for p in paths]
    jpeg = get_surrogate("jpeg")
    loss_fn = RatePerceptionLoss(
        jpeg,
        perceptual_distance(args.perceptual_loss) if args.lambda_perceptual > 0 else None,
        lambda_rate=args.lambda_rate,
        lambda_perceptual=args.lambda_perceptual,
        lambda_mse=args.lambda_mse,
        rate_weighting="codec_slope",
    )

    pipe, adapter, choice = None, None, None
    if args.model:
        from rp_diffusers.default_model import load_preprocessor

        pipe = load_preprocessor(args.model, "cpu")
        pipe.set_progress_bar_config(disable=True)
        if args.adapter:
            adapter, choice = args.adapter, f"{args.adapter} (asked for)"
        else:
            decision = pipe.adapter_for("jpeg")
            adapter, choice = decision.adapter, decision.reason
            if not decision.preprocess:  # measure the model's best JPEG adapter anyway: that is the question here
                jpeg_adapters = [n for n, r in pipe.available_adapters().items() if r.get("codec") == "jpeg"]
                adapter = jpeg_adapters[0] if jpeg_adapters else None
        print(f"network: {adapter or 'base model'} ({choice})")

    rows = {"jpeg alone": [], "per-image pre-editing (ceiling)": [], "network + jpeg": []}
    seconds = {"edit_per_step": [], "network_per_image": []}
    traces = {}
    bar = tqdm(total=len(originals) * len(qualities), desc="pre-editing")
    for path, image in zip(paths, originals):
        original = to_tensor(image)
        pixels = image.width * image.height
        net_image = None
        if pipe is not None:
            start = time.perf_counter()
            net_image = pipe(image, adapter_name=adapter or []).images[0]
            seconds["network_per_image"].append(time.perf_counter() - start)
        for quality in qualities:
            start = time.perf_counter()
            edited, trace = pre_edit(loss_fn, original, quality, args.steps, args.learning_rate)
            seconds["edit_per_step"].append((time.perf_counter() - start) / args.steps)
            traces[f"{Path(path).name}@{quality}"] = [trace[0], trace[-1]]
            variants = {"jpeg alone": image, "per-image pre-editing (ceiling)": to_image(edited)}
            if net_image is not None:
                variants["network + jpeg"] = net_image
            for name, source in variants.items():
                decoded, size = real_jpeg(source, quality)
                row = {"image": Path(path).name, "quality": quality, "bpp": 8 * size / pixels}
                row.update(measure(image, decoded, metrics, result_keys=True))
                rows[name].append(row)
            bar.update()
    bar.close()

    curves = {name: curve(name, r, qualities) for name, r in rows.items() if r}
    anchor = curves["jpeg alone"]
    table = {name: bd_table(anchor, c) for name, c in curves.items() if name != "jpeg alone"}
    overlaps = {name: bd_overlap(anchor, c) for name, c in curves.items() if name != "jpeg alone"}
    print(format_bd_table(table, "jpeg alone", overlaps))
    share = {}
    if "network + jpeg" in table:
        ceiling = table["per-image pre-editing (ceiling)"]
        for key, value in table["network + jpeg"].items():
            if ceiling.get(key, 0) < 0:
                share[key] = value / ceiling[key]  # 1 = the network reaches the ceiling; < 0: it loses
    report = {
        "images": args.images,
        "num_images": len(originals),
        "qualities": qualities,
        "objective": {
            "perceptual_loss": args.perceptual_loss if args.lambda_perceptual > 0 else None,
            "lambda_perceptual": args.lambda_perceptual,
            "lambda_mse": args.lambda_mse,
            "lambda_rate": args.lambda_rate,
            "rate_weighting": "codec_slope",
            "steps": args.steps,
            "learning_rate": args.learning_rate,
            "surrogate": "DiffJPEG (exact forward, straight-through rounding)",
        },
        "network": {"model": args.model, "adapter": adapter, "choice": choice},
        "metrics": metrics,
        "bd_rate_percent": table,
        "overlap": overlaps,
        "share_of_ceiling": share,
        "seconds": {k: float(np.median(v)) if v else None for k, v in seconds.items()},
        "loss_first_last": traces,
        "curves": curves,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    print(f"share of the ceiling reached by the network: {json.dumps(share)}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
