#!/usr/bin/env python
"""Calibrate a learned proxy's bit estimate for image size and quality on TRAINING photographs (never Kodak).

The proxies are fitted on crops of 128-448 pixels a side and, before this step, over-estimated whole Kodak files
by 14-23% at the default quality. This script runs the real codec and the proxy on training photographs at three
sizes (downscaled whole image, and two centre crops) and three qualities,
fits ``log(real / proxy) = a + b * (log(pixels) - ref) + c * q_norm`` by least squares
(``rp_diffusers.surrogates.proxy.fit_rate_calibration``) and writes it as ``rate_calibration`` into
``proxy_{codec}.json``, where ``CodecProxySurrogate`` applies it. Measured: the size term comes out near zero;
the useful part is the quality-dependent bias (WebP's default-quality Kodak error 23% -> 14%, VVC 22% -> 17%).

``--terms`` adds quality-squared and noise-level terms (``rate_correction``; the noise level is measured on the input
image). They are chosen per codec on val-set14 by ``select_proxy_calibration.py``, never on Kodak. VVC, WebP and
HEIC use them: the training photographs are JPEG-compressed, and on clean low-noise photographs the raw proxies
over-estimate mid-quality sizes (VVC on val-set14 at the default quality 16.4% -> 9.3%; then measured once on
Kodak: 16.7% -> 10.5%).

    python training/calibrate_proxy_rate.py --codec vvc --train_data_dir photos/train-sunhays80 \
        --num_images 16 --whole_width 512 --terms "1,log_pixels,q,q2,noise,noise*q,noise*q2" \
        --validation_data_dir photos/val-set14

    python training/calibrate_proxy_rate.py --codec webp --train_data_dir photos/train-sunhays80
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from rp_diffusers.codecs import encoded_bits, get_codec
from rp_diffusers.surrogates.proxy import (
    BASE_TERMS,
    RATE_TERMS,
    WEIGHTS_DIR,
    fit_rate_calibration,
    load_proxy,
    measure_fidelity,
    noise_level,
    proxy_qualities,
)
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codec", type=str, required=True, help="Proxy to calibrate (heic, hevc, vvc, webp, avif).")
    parser.add_argument("--train_data_dir", type=str, required=True, help="Training photographs (not the test set).")
    parser.add_argument("--num_images", type=int, default=12, help="Photographs used (evenly spaced in the folder).")
    parser.add_argument("--whole_width", type=int, default=768, help="Width the whole photograph is resized to.")
    parser.add_argument("--crops", type=int, nargs="+", default=[384, 192], help="Square centre-crop sizes.")
    parser.add_argument(
        "--validation_data_dir",
        type=str,
        default=None,
        help="Re-measure the recorded val-set14 fidelity (centre crops, as train_surrogate.py) with the calibration.",
    )
    parser.add_argument("--validation_resolution", type=int, default=512, help="Validation centre-crop side.")
    parser.add_argument("--num_validation_images", type=int, default=13, help="Validation images (first N).")
    parser.add_argument("--weights_dir", type=str, default=None, help="Proxy weights folder (default: shipped).")
    parser.add_argument("--workers", type=int, default=2, help="Processes running the real codec.")
    parser.add_argument(
        "--records_out", type=str, default=None, help="Also save the (pixels, q_norm, proxy, real, noise) rows."
    )
    parser.add_argument(
        "--terms",
        type=str,
        default=",".join(BASE_TERMS),
        help=f"Comma-separated terms of the log-size correction, from {', '.join(RATE_TERMS)} (see rate_correction).",
    )
    parser.add_argument("--dry_run", action="store_true", help="Print the fit, do not write the JSON.")
    return parser.parse_args(input_args)


def views(image: Image.Image, whole_width: int, crops: list[int]) -> list[Image.Image]:
    """The whole photograph (resized to ``whole_width``, aspect kept) and its square centre crops."""
    height = round(image.height * whole_width / image.width)
    whole = image.resize((whole_width, height), Image.Resampling.LANCZOS)
    out = [whole]
    for size in crops:
        size = min(size, whole.width, whole.height)
        left, top = (whole.width - size) // 2, (whole.height - size) // 2
        out.append(whole.crop((left, top, left + size, top + size)))
    return out


def validate(proxy, args) -> dict:
    """Fidelity of the calibrated proxy on validation centre crops at the low, default and high qualities."""
    images = []
    for path in list_images(args.validation_data_dir)[: args.num_validation_images]:
        image, side = load_image(path), args.validation_resolution
        left, top = max(0, (image.width - side) // 2), max(0, (image.height - side) // 2)
        images.append(image.crop((left, top, min(image.width, left + side), min(image.height, top + side))))
    codec = get_codec(args.codec)
    report = {}
    for level, quality in proxy_qualities(codec).items():
        report[str(quality)] = {"level": level, **measure_fidelity(proxy, codec, images, quality)}
        print(f"val q={quality}: {report[str(quality)]}")
    return report


def main(args) -> dict:
    files = list_images(args.train_data_dir)
    step = max(1, len(files) // args.num_images)
    files = files[::step][: args.num_images]
    proxy = load_proxy(args.codec, args.weights_dir)
    proxy.rate_calibration = None  # measure the raw proxy
    lo, hi = proxy.quality_range
    qualities = sorted(set(proxy_qualities(get_codec(args.codec)).values()))
    images = [v for f in files for v in views(load_image(f), args.whole_width, args.crops)]
    jobs = [(args.codec, image, q) for image in images for q in qualities]
    with ProcessPoolExecutor(args.workers) as pool:
        real = list(tqdm(pool.map(encoded_bits, jobs), total=len(jobs), desc=f"{args.codec} real files"))
    records = []
    with torch.no_grad():
        for (_, image, q), real_bits in zip(jobs, real):
            x = pil_to_tensor(image)
            bits = float(proxy(x, float(q)).bits[0])
            row = (image.width * image.height, (q - lo) / (hi - lo), bits, real_bits, float(noise_level(x)[0]))
            records.append(row)
    if args.records_out:
        Path(args.records_out).write_text(json.dumps(records) + "\n")
    fit = fit_rate_calibration(records, tuple(t.strip() for t in args.terms.split(",") if t.strip()))
    fit["data"] = (
        f"{len(files)} photographs of {args.train_data_dir}: whole (width {args.whole_width}) + centre crops "
        f"{args.crops}; qualities {qualities}"
    )
    print(json.dumps(fit, indent=2))
    proxy.rate_calibration = fit
    validation = validate(proxy, args) if args.validation_data_dir else None
    if not args.dry_run:
        path = Path(args.weights_dir or WEIGHTS_DIR) / f"proxy_{args.codec}.json"
        metadata = json.loads(path.read_text())
        metadata["rate_calibration"] = fit
        if validation is not None:
            metadata.setdefault("fidelity", {})["val-set14"] = validation
        path.write_text(json.dumps(metadata, indent=2) + "\n")
        print(f"wrote rate_calibration into {path}")
    return fit


if __name__ == "__main__":
    main(parse_args())
