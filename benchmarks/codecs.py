"""Speed, rate and PSNR of every real codec at its default quality on Kodak (or any folder of images).

For each codec: mean bpp (every byte of the file over the original pixels), mean RGB PSNR (numpy,
10*log10(255^2/MSE) per image, then averaged), median encode and decode times per image (ms, wall clock,
subprocess start included for hevc/vvc), megapixels per second, and the encode time as a ratio to JPEG's
(the plain baseline) measured in the same run. ``--sweep`` also runs each codec's ``sweep_qualities`` and
stores the R-D points in CompressAI's schema (``{"name", "description", "results": {"bpp", "psnr-rgb"}}``).

Kodak is the TEST set: this measures, nothing here tunes anything.

Example:
    python benchmarks/codecs.py --limit 4
    python benchmarks/codecs.py --sweep --output benchmarks/results/codecs.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import numpy as np

from rp_diffusers.codecs import available_codecs, get_codec
from rp_diffusers.utils.image import list_images, load_image

DEFAULT_KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=str, default=str(DEFAULT_KODAK), help="Folder of test images (Kodak).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N images (sorted by name).")
    parser.add_argument("--codecs", nargs="+", default=None, help="Codecs to measure (default: all available).")
    parser.add_argument("--sweep", action="store_true", help="Also measure bpp/PSNR at every sweep quality.")
    parser.add_argument("--output", type=str, default="benchmarks/results/codecs.json", help="JSON output path.")
    return parser.parse_args(input_args)


def psnr_rgb(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB over the three 8-bit RGB channels (inf for identical images)."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def measure(codec, images: list, quality: int) -> dict:
    """Run ``codec`` at ``quality`` on every image; per-image rows and their aggregates."""
    rows = []
    for name, image in images:
        result = codec.run(image, quality)
        rows.append(
            {
                "image": name,
                "pixels": image.width * image.height,
                "bpp": result.bpp,
                "psnr-rgb": psnr_rgb(np.asarray(image), np.asarray(result.reconstruction)),
                "encode_ms": 1000 * result.encode_seconds,
                "decode_ms": 1000 * result.decode_seconds,
            }
        )
    megapixels = sum(row["pixels"] for row in rows) / 1e6
    return {
        "quality": quality,
        "bpp": statistics.fmean(row["bpp"] for row in rows),
        "psnr-rgb": statistics.fmean(row["psnr-rgb"] for row in rows),
        "encode_ms_median": statistics.median(row["encode_ms"] for row in rows),
        "decode_ms_median": statistics.median(row["decode_ms"] for row in rows),
        "encode_mpix_per_s": megapixels / (sum(row["encode_ms"] for row in rows) / 1000),
        "decode_mpix_per_s": megapixels / (sum(row["decode_ms"] for row in rows) / 1000),
        "per_image": rows,
    }


def main(args: argparse.Namespace) -> dict:
    folder = Path(args.images)
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}: pass --images with the Kodak folder")
    paths = list_images(folder)
    paths = paths[: args.limit] if args.limit else paths
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    images = [(p.name, load_image(p)) for p in paths]
    names = args.codecs or available_codecs()
    if "jpeg" not in names:
        names = ["jpeg", *names]  # the baseline of the speed ratios
    report = {
        "name": "codecs",
        "description": f"real codecs at their default quality on {len(images)} images of {folder.name}",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
        },
        "images": [name for name, _ in images],
        "codecs": {},
        "sweeps": {},
    }
    for name in names:
        codec = get_codec(name)
        entry = measure(codec, images, codec.default_quality)
        entry.update(description=codec.description, settings=codec.encoder_settings(codec.default_quality))
        report["codecs"][name] = entry
        print(
            f"{name}: {entry['bpp']:.3f} bpp, {entry['psnr-rgb']:.2f} dB, {entry['encode_ms_median']:.0f} ms",
            flush=True,
        )
        if args.sweep:
            points = [measure(codec, images, quality) for quality in codec.sweep_qualities]
            report["sweeps"][name] = {
                "name": name,
                "description": codec.description,
                "qualities": list(codec.sweep_qualities),
                "results": {"bpp": [p["bpp"] for p in points], "psnr-rgb": [p["psnr-rgb"] for p in points]},
            }
    baseline = report["codecs"]["jpeg"]["encode_ms_median"]
    for entry in report["codecs"].values():
        entry["encode_time_vs_jpeg"] = entry["encode_ms_median"] / baseline
    report["machine"]["load_average_at_end"] = os.getloadavg()
    print_table(report)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"wrote {output}")
    return report


def print_table(report: dict) -> None:
    header = f"{'codec':6} {'q':>3} {'bpp':>6} {'PSNR':>6} {'enc ms':>8} {'dec ms':>8} {'enc MP/s':>9} {'dec MP/s':>9} {'enc/jpeg':>9}"
    print(header)
    print("-" * len(header))
    for name, e in report["codecs"].items():
        print(
            f"{name:6} {e['quality']:3d} {e['bpp']:6.3f} {e['psnr-rgb']:6.2f} {e['encode_ms_median']:8.1f} "
            f"{e['decode_ms_median']:8.1f} {e['encode_mpix_per_s']:9.2f} {e['decode_mpix_per_s']:9.2f} "
            f"{e['encode_time_vs_jpeg']:9.1f}"
        )
    for name, sweep in report["sweeps"].items():
        points = ", ".join(
            f"q{q}: {b:.2f}/{p:.1f}"
            for q, b, p in zip(sweep["qualities"], sweep["results"]["bpp"], sweep["results"]["psnr-rgb"])
        )
        print(f"sweep {name} (bpp/dB): {points}")


if __name__ == "__main__":
    main(parse_args())
