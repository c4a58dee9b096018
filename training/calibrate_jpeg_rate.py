"""Fit DiffJPEG's rate calibration on real Pillow encodes of a folder of training photographs.

For every image and calibration quality the script encodes the image with the project's JPEG settings
(Pillow, 4:2:0, baseline, standard Huffman tables), reads the real file size, and computes DiffJPEG's raw soft
entropy estimate E for each candidate sharpness. Per quality knot it fits
``log(entropy bits per pixel) = a + b * log(E / pixels)`` by least squares; the sharpness with the smallest
median relative error of the whole-file size wins. Writes the JSON that ``JPEGRateModel.from_json`` loads.

Fit on training images only (``train-sunhays80``); Kodak is the test set.

    python training/calibrate_jpeg_rate.py --data_dir ../shared/data/train-sunhays80 \
        --output rp_diffusers/surrogates/weights/jpeg_rate.json
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rp_diffusers.surrogates import DiffJPEG
from rp_diffusers.surrogates.jpeg_tables import HEADER_BYTES
from rp_diffusers.utils.image import load_image, pil_to_tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data_dir", type=Path, default=Path("../shared/data/train-sunhays80"), help="training photographs"
    )
    parser.add_argument(
        "--qualities",
        default="1,5,10,15,25,35,50,65,75,85,92,100",
        help="comma-separated JPEG qualities; they become the calibration knots",
    )
    parser.add_argument("--sharpness", default="4,8,12", help="candidate sharpness values of the soft non-zero test")
    parser.add_argument(
        "--target_error",
        type=float,
        default=0.02,
        help="keep the smoothest sharpness (most informative gradients) whose median relative error is below this",
    )
    parser.add_argument("--cache", type=Path, default=None, help="optional .npz to store/reuse the measured sizes")
    parser.add_argument("--category_offset", type=float, default=0.42, help="offset of the soft magnitude category")
    parser.add_argument("--max_images", type=int, default=None, help="use only the first N images (sorted by name)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("rp_diffusers/surrogates/weights/jpeg_rate.json"),
        help="where to write the calibration JSON",
    )
    return parser.parse_args(input_args)


def real_jpeg_bits(image: Image.Image, quality: int) -> int:
    """Size in bits of the file the project's ``jpeg`` codec writes (Pillow, 4:2:0, baseline, no optimisation)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    return 8 * len(buffer.getvalue())


def fit_knot(log_entropy: np.ndarray, log_target: np.ndarray) -> tuple[float, float]:
    """Least-squares a, b of ``log_target = a + b * log_entropy``."""
    design = np.stack([np.ones_like(log_entropy), log_entropy], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, log_target, rcond=None)
    return float(a), float(b)


def measure(paths: list[Path], qualities: list[int], sharpness: list[float], category_offset: float):
    """Real file sizes (images, qualities) and raw soft entropy estimates per sharpness."""
    models = {s: DiffJPEG(calibration={"sharpness": s, "category_offset": category_offset}) for s in sharpness}
    first = next(iter(models.values()))
    pixels, real = np.zeros(len(paths)), np.zeros((len(paths), len(qualities)))
    entropy = {s: np.zeros((len(paths), len(qualities))) for s in sharpness}
    start = time.time()
    for i, path in enumerate(paths):
        image = load_image(path)
        tensor = pil_to_tensor(image)
        pixels[i] = image.width * image.height
        with torch.no_grad():
            for j, quality in enumerate(qualities):
                real[i, j] = real_jpeg_bits(image, quality)
                analysis = first.analyze(tensor, torch.tensor([float(quality)]), need_exact=False)
                for s, model in models.items():
                    e = model.rate_model.entropy_bits(analysis.luma_scaled, analysis.chroma_scaled, analysis.size)
                    entropy[s][i, j] = float(e)
        print(f"[{i + 1}/{len(paths)}] {path.name} {time.time() - start:.0f}s", flush=True)
    return pixels, real, entropy


def main(args: argparse.Namespace) -> dict:
    qualities = [int(q) for q in args.qualities.split(",")]
    sharpness = [float(s) for s in args.sharpness.split(",")]
    paths = sorted(p for p in args.data_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.max_images]
    if not paths:
        raise FileNotFoundError(f"no images in {args.data_dir}")
    if args.cache is not None and args.cache.is_file():
        cached = np.load(args.cache)
        pixels, real = cached["pixels"], cached["real"]
        entropy = {s: cached[f"entropy_{s:g}"] for s in sharpness}
    else:
        pixels, real, entropy = measure(paths, qualities, sharpness, args.category_offset)
        if args.cache is not None:
            np.savez(args.cache, pixels=pixels, real=real, **{f"entropy_{s:g}": e for s, e in entropy.items()})

    target = np.log((real - 8 * HEADER_BYTES) / pixels[:, None])
    fits = []
    for s in sharpness:
        log_e = np.log(entropy[s] / pixels[:, None])
        a, b = np.array([fit_knot(log_e[:, j], target[:, j]) for j in range(len(qualities))]).T
        rel = np.abs((8 * HEADER_BYTES + pixels[:, None] * np.exp(a + b * log_e)) / real - 1)
        summary = {
            "sharpness": s,
            "median_abs_rel_error": float(np.median(rel)),
            "max_abs_rel_error": float(rel.max()),
            "per_quality_median": {q: float(np.median(rel[:, j])) for j, q in enumerate(qualities)},
        }
        print(json.dumps({k: v for k, v in summary.items() if k != "per_quality_median"}))
        fits.append((summary, a, b))
    good = [fit for fit in fits if fit[0]["median_abs_rel_error"] <= args.target_error]
    best = (
        min(good, key=lambda fit: fit[0]["sharpness"])
        if good
        else min(fits, key=lambda fit: fit[0]["median_abs_rel_error"])
    )
    summary, a, b = best
    calibration = {
        "description": "DiffJPEG rate calibration: bits = 8 * 625 + pixels * exp(a(q) + b(q) * log(E / pixels))",
        "fitted_on": f"{args.data_dir.name} ({len(paths)} images), Pillow {Image.__version__}",
        "knots": [float(q) for q in qualities],
        "log_scale": [round(float(x), 6) for x in a],
        "exponent": [round(float(x), 6) for x in b],
        "sharpness": summary["sharpness"],
        "category_offset": args.category_offset,
        "train_fit": summary,
        "candidates": {f"{fit[0]['sharpness']:g}": fit[0]["median_abs_rel_error"] for fit in fits},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(calibration, indent=2) + "\n")
    print(
        f"wrote {args.output} (sharpness {summary['sharpness']}, train median error {summary['median_abs_rel_error']:.4f})"
    )
    return calibration


if __name__ == "__main__":
    main(parse_args())
