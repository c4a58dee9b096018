"""Fit DiffJPEG's rate calibration on real Pillow encodes of a folder of training photographs.

DiffJPEG's rate model counts the entropy-coded bits E of libjpeg's Huffman coding exactly; the real file adds
fixed headers, one 0x00 after every 0xFF byte of the scan (byte stuffing) and up to 7 padding bits. For every
image and calibration quality the script encodes the image with the project's JPEG settings (Pillow, 4:2:0,
baseline, standard Huffman tables), reads the real file size, and fits per quality knot the scale
``a = mean(log((real bits - 8 * header bytes) / E))``. Writes the JSON that ``JPEGRateModel.from_json`` loads.

Fit on training images only (``train-sunhays80``); Kodak is the test set.

    python training/calibrate_jpeg_rate.py --data_dir photos/train-sunhays80 \
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
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", type=Path, required=True, help="training photographs (train-sunhays80)")
    parser.add_argument(
        "--qualities",
        default="1,5,10,15,25,35,50,65,75,85,92,100",
        help="comma-separated JPEG qualities; they become the calibration knots",
    )
    parser.add_argument("--sharpness", type=float, default=8.0, help="slope of the soft non-zero test (gradient only)")
    parser.add_argument(
        "--category_offset", type=float, default=0.42, help="offset of the soft category (gradient only)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="optional .npz to store/reuse the measured sizes")
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


def measure(paths: list[Path], qualities: list[int], model: DiffJPEG) -> tuple[np.ndarray, np.ndarray]:
    """Real file sizes and DiffJPEG's entropy-coded bit counts, both (images, qualities)."""
    real, entropy = np.zeros((len(paths), len(qualities))), np.zeros((len(paths), len(qualities)))
    start = time.time()
    for i, path in enumerate(paths):
        image = load_image(path)
        tensor = pil_to_tensor(image)
        with torch.no_grad():
            for j, quality in enumerate(qualities):
                real[i, j] = real_jpeg_bits(image, quality)
                a = model.analyze(tensor, torch.tensor([float(quality)]))
                e = model.rate_model.entropy_bits(a.luma_scaled, a.chroma_scaled, a.size, a.luma_exact, a.chroma_exact)
                entropy[i, j] = float(e)
        print(f"[{i + 1}/{len(paths)}] {path.name} {time.time() - start:.0f}s", flush=True)
    return real, entropy


def main(args: argparse.Namespace) -> dict:
    qualities = [int(q) for q in args.qualities.split(",")]
    paths = list_images(args.data_dir)[: args.max_images]
    if args.cache is not None and args.cache.is_file():
        cached = np.load(args.cache)
        real, entropy = cached["real"], cached["entropy"]
    else:
        model = DiffJPEG(calibration={"sharpness": args.sharpness, "category_offset": args.category_offset})
        real, entropy = measure(paths, qualities, model)
        if args.cache is not None:
            np.savez(args.cache, real=real, entropy=entropy)

    log_ratio = np.log((real - 8 * HEADER_BYTES) / entropy)
    log_scale = log_ratio.mean(axis=0)
    rel = np.abs((8 * HEADER_BYTES + np.exp(log_scale) * entropy) / real - 1)
    fit = {
        "median_abs_rel_error": float(np.median(rel)),
        "max_abs_rel_error": float(rel.max()),
        "per_quality_median": {str(q): float(np.median(rel[:, j])) for j, q in enumerate(qualities)},
    }
    calibration = {
        "description": "DiffJPEG rate calibration: bits = 8 * 625 + exp(a(q)) * E, E = exact entropy-coded bits",
        "fitted_on": f"{args.data_dir.name} ({len(paths)} images), Pillow {Image.__version__}",
        "knots": [float(q) for q in qualities],
        "log_scale": [round(float(x), 6) for x in log_scale],
        "sharpness": args.sharpness,
        "category_offset": args.category_offset,
        "train_fit": fit,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(calibration, indent=2) + "\n")
    print(json.dumps(fit, indent=1))
    print(f"wrote {args.output}")
    return calibration


if __name__ == "__main__":
    main(parse_args())
