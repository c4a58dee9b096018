#!/usr/bin/env python
"""Choose the terms of a proxy's rate calibration on VALIDATION photographs (val-set14, never Kodak).

Input: the training rows written by ``calibrate_proxy_rate.py --records_out`` (16 photographs x 3 views x 3
qualities, with the noise level). For each candidate form (3 terms; + quality squared; + quality squared and the
noise terms) this script fits on those rows, reports leave-one-photograph-out error on them, and measures the
median bits error and rms log error on whole val-set14 images against the real codec. The calibration shipped
before is measured the same way. Rule used for the first proxies (8-statistic rate heads): take the 7-term form
where its val-set14 rms log error is lower than the previous calibration's (VVC, WebP, HEIC), keep the previous one
otherwise (HEVC, AVIF). For the DCT rate heads: the form with the lowest val-set14 rms log error, no calibration
included; WebP, HEVC, AVIF and HEIC chose ``+ q2``, VVC (fitted later) the 7-term form
(``benchmarks/results/proxy_calibration_selection_dct.json``).

Several ``--records`` files are fitted together: rows of two training folders, for example. Every file must hold
whole photographs of ``--views_per_photo`` rows each (one ``calibrate_proxy_rate.py`` run with its default views),
and a file may be given once. ``--output_key`` stores the table under ``output[codec][KEY]``, so that fits from
different rows sit side by side; a codec's entry is either keyed or not, never both. The training folders were
compared this way (``benchmarks/results/proxy_calibration_sources_valset14.json``).

    python training/calibrate_proxy_rate.py --codec webp --train_data_dir photos/train-sunhays80 \\
        --num_images 16 --whole_width 512 --terms "1,log_pixels,q,q2,noise,noise*q,noise*q2" --dry_run \\
        --records_out /tmp/rec_webp.json
    python training/select_proxy_calibration.py --codec webp --records /tmp/rec_webp.json \\
        --validation_data_dir photos/val-set14 --output benchmarks/results/proxy_calibration_selection.json
    python training/select_proxy_calibration.py --codec webp --records /tmp/rec_clean.json /tmp/rec_sun.json \\
        --validation_data_dir photos/val-set14 --output /tmp/sources.json --output_key both
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rp_diffusers.codecs import encoded_bits, get_codec
from rp_diffusers.surrogates.proxy import (
    BASE_TERMS,
    RATE_TERMS,
    fit_rate_calibration,
    load_proxy,
    proxy_qualities,
    rate_correction,
)
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor

FORMS = {
    "3 terms": BASE_TERMS,
    "+ q2": ("1", "log_pixels", "q", "q2"),
    "+ q2 + noise (7 terms)": RATE_TERMS,
}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codec", type=str, required=True)
    parser.add_argument(
        "--records",
        type=str,
        nargs="+",
        required=True,
        help="calibrate_proxy_rate.py --records_out file(s); several are fitted together (e.g. two training folders).",
    )
    parser.add_argument("--views_per_photo", type=int, default=9, help="Rows per photograph (views x qualities).")
    parser.add_argument("--validation_data_dir", type=str, required=True, help="Validation photographs (val-set14).")
    parser.add_argument("--weights_dir", type=str, default=None, help="Proxy weights (default: shipped).")
    parser.add_argument("--workers", type=int, default=2, help="Processes running the real codec.")
    parser.add_argument(
        "--previous",
        type=str,
        default=None,
        help="A proxy_{codec}.json whose rate_calibration is measured too (e.g. the version before a change).",
    )
    parser.add_argument("--output", type=str, default=None, help="Merge this codec's table into a JSON file.")
    parser.add_argument(
        "--output_key",
        type=str,
        default=None,
        help="Store the table under output[codec][KEY] (e.g. the rows' training folder), not output[codec].",
    )
    return parser.parse_args(input_args)


def _log_correction(calibration, pixels, q_norm, image=None) -> float:
    return math.log(float(rate_correction(calibration, pixels, torch.tensor([q_norm]), image)[0]))


def validation_rows(proxy, codec_name: str, folder: str, workers: int) -> list[dict]:
    """Raw (uncalibrated) proxy bits, real bits and the image for every validation image at the three qualities."""
    images = [load_image(p) for p in list_images(folder)]
    qualities = sorted(set(proxy_qualities(get_codec(codec_name)).values()))
    jobs = [(codec_name, image, q) for image in images for q in qualities]
    with ProcessPoolExecutor(workers) as pool:
        real = list(tqdm(pool.map(encoded_bits, jobs), total=len(jobs), desc=f"{codec_name} validation files"))
    lo, hi = proxy.quality_range
    saved, proxy.rate_calibration = proxy.rate_calibration, None
    rows = []
    with torch.no_grad():
        for (_, image, q), real_bits in zip(jobs, real):
            x = pil_to_tensor(image)
            bits = float(proxy(x, float(q)).bits[0])
            rows.append({"x": x, "pixels": image.width * image.height, "q": q, "q_norm": (q - lo) / (hi - lo),
                         "proxy": bits, "real": real_bits})  # fmt: skip
    proxy.rate_calibration = saved
    return rows


def validation_error(calibration, rows) -> dict:
    residual = np.array(
        [
            math.log(r["real"] / r["proxy"]) - _log_correction(calibration, r["pixels"], r["q_norm"], r["x"])
            for r in rows
        ]
    )
    median = {}
    for q in sorted({r["q"] for r in rows}):
        mask = np.array([r["q"] == q for r in rows])
        median[str(q)] = round(100 * float(np.median(np.abs(np.exp(-residual[mask]) - 1))), 1)
    return {"val_median_bits_err_pct": median, "val_rms_log_err": round(float(np.sqrt(np.mean(residual**2))), 4)}


def leave_one_photo_out(records: list, terms, per_photo: int) -> float:
    photo = np.arange(len(records)) // per_photo
    residual = []
    for held_out in np.unique(photo):
        fit = fit_rate_calibration([r for r, p in zip(records, photo) if p != held_out], terms)
        for pixels, q_norm, proxy_bits, real_bits, noise in (r for r, p in zip(records, photo) if p == held_out):
            correction = rate_correction(fit, pixels, torch.tensor([q_norm]), noise=torch.tensor([noise]))
            residual.append(math.log(real_bits / proxy_bits) - math.log(float(correction[0])))
    return round(float(np.sqrt(np.mean(np.square(residual)))), 4)


def _store(results: dict, codec: str, key: str | None, table: dict) -> None:
    """Put ``table`` at ``results[codec]`` or ``results[codec][key]``, never mixing the two layouts for a codec."""
    entry = results.get(codec)
    if key:
        if entry is not None and "current" in entry:
            raise ValueError(f"the output holds an unkeyed table for {codec}: write --output_key tables elsewhere")
        results.setdefault(codec, {})[key] = table
    else:
        if entry is not None and "current" not in entry:
            raise ValueError(f"the output holds keyed tables for {codec} ({', '.join(entry)}): pass --output_key")
        results[codec] = table


def main(args) -> dict:
    if len({Path(name).resolve() for name in args.records}) != len(args.records):
        raise ValueError("a --records file is given twice: its photographs would leak into their own held-out fits")
    if args.output_key and not args.output:
        raise ValueError("--output_key names where the table goes in --output: pass --output too")
    if args.output and Path(args.output).is_file():  # refuse a layout clash before any encoding
        _store(json.loads(Path(args.output).read_text()), args.codec, args.output_key, {})
    records = []
    for name in args.records:
        rows = json.loads(Path(name).read_text())
        if any(len(r) < 5 for r in rows):
            raise ValueError(f"{name} has no noise column: re-run calibrate_proxy_rate.py with --records_out")
        if len(rows) % args.views_per_photo:
            raise ValueError(
                f"{name} has {len(rows)} rows, not a multiple of --views_per_photo {args.views_per_photo}: the "
                "leave-one-photograph-out error needs whole photographs"
            )
        records += rows
    proxy = load_proxy(args.codec, args.weights_dir)
    rows = validation_rows(proxy, args.codec, args.validation_data_dir, args.workers)
    current = proxy.rate_calibration  # None: the proxy ships without one (the DCT rate heads)
    table = {"current": {"terms": list(current.get("terms", BASE_TERMS)) if current else []}}
    table["current"].update(validation_error(proxy.rate_calibration, rows))
    if args.previous:
        previous = json.loads(Path(args.previous).read_text())["rate_calibration"]
        table["previous"] = {"terms": list(previous.get("terms", BASE_TERMS)), **validation_error(previous, rows)}
    for name, terms in FORMS.items():
        table[name] = {"terms": list(terms), **validation_error(fit_rate_calibration(records, terms), rows)}
        table[name]["train_loo_rms_log_err"] = leave_one_photo_out(records, terms, args.views_per_photo)
    for name, row in table.items():
        print(f"{args.codec:5} {name:24} {row}")
    if args.output:
        path = Path(args.output)
        results = json.loads(path.read_text()) if path.is_file() else {}
        _store(results, args.codec, args.output_key, table)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    return table


if __name__ == "__main__":
    main(parse_args())
