"""The weight-free perceptual metrics: speed at 768x512, and SSIMULACRA2 against the independent NumPy port.

1. Agreement: every Kodak image (or ``--limit`` of them) under real codecs at several qualities, our
   SSIMULACRA2 (float32, the default, and float64) against ``ssimulacra2`` from PyPI (BSD-3, NumPy): mean and
   max absolute difference in points. The issue's bar: mean <= 0.5, max <= 2.
2. Speed: seconds per 768x512 image (kodim01 against its JPEG at quality 30) for our SSIMULACRA2 (forward, and
   forward + backward as a loss), the NumPy port (the plain baseline: ratios are against it), Butteraugli
   (``butteraugli_main``, one run gives the max and the 3-norm) and VMAF + VMAF-NEG (one ffmpeg run); medians
   of ``--repeats`` runs in this process, torch at 2 threads.

Writes ``benchmarks/results/metrics.json`` and prints both tables. Kodak is only measured, never tuned on.

Example:
    python benchmarks/metrics.py --limit 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rp_diffusers.codecs import get_codec
from rp_diffusers.evaluation import list_images
from rp_diffusers.metrics import (
    butteraugli_available,
    butteraugli_scores,
    ssimulacra2,
    vmaf_available,
    vmaf_scores,
)
from rp_diffusers.utils import load_image, pil_to_tensor

DEFAULT_KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
CASES = [("jpeg", 15), ("jpeg", 50), ("jpeg", 85), ("webp", 50), ("avif", 50), ("heic", 30)]


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_KODAK), help="Folder of test images (Kodak).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N images (sorted by name).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per speed row (median reported).")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    parser.add_argument("--output", default="benchmarks/results/metrics.json", help="JSON output path.")
    return parser.parse_args(input_args)


def agreement(paths: list[Path]) -> dict:
    from ssimulacra2.ssimulacra2 import compute_ssimulacra2

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for path in tqdm(paths, desc="SSIMULACRA2 vs the NumPy port", unit="image"):
            original = load_image(path)
            original.save(Path(folder) / "reference.png")
            for codec, quality in CASES:
                decoded = get_codec(codec).run(original, quality=quality).reconstruction
                decoded.save(Path(folder) / "distorted.png")
                x, y = pil_to_tensor(original), pil_to_tensor(decoded)
                rows.append(
                    {
                        "image": path.name,
                        "codec": codec,
                        "quality": quality,
                        "port": float(
                            compute_ssimulacra2(Path(folder) / "reference.png", Path(folder) / "distorted.png")
                        ),
                        "ours_float32": float(ssimulacra2(x, y)[0]),
                        "ours_float64": float(ssimulacra2(x.double(), y.double())[0]),
                    }
                )
    summary = {}
    for precision in ("float32", "float64"):
        diff = np.abs(np.array([r[f"ours_{precision}"] - r["port"] for r in rows]))
        summary[precision] = {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())}
    scores = [r["port"] for r in rows]
    return {"pairs": len(rows), "score_range": [min(scores), max(scores)], "summary": summary, "rows": rows}


def _median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(path: Path, repeats: int) -> list[dict]:
    from ssimulacra2.ssimulacra2 import compute_ssimulacra2

    original = load_image(path)
    decoded = get_codec("jpeg").run(original, quality=30).reconstruction
    x, y = pil_to_tensor(original), pil_to_tensor(decoded)

    def loss_step():
        distorted = y.clone().requires_grad_(True)
        ssimulacra2(x, distorted, quantize=False).sum().backward()

    with tempfile.TemporaryDirectory() as folder:
        original.save(Path(folder) / "r.png")
        decoded.save(Path(folder) / "d.png")
        rows = [
            (
                "ssimulacra2 (NumPy port, PyPI)",
                lambda: compute_ssimulacra2(Path(folder) / "r.png", Path(folder) / "d.png"),
            )
        ]
        rows += [
            ("ssimulacra2 (ours, float32)", lambda: ssimulacra2(x, y)),
            ("ssimulacra2 (ours, float64)", lambda: ssimulacra2(x.double(), y.double())),
            ("ssimulacra2 (ours, float32, forward + backward)", loss_step),
        ]
        if butteraugli_available():
            rows.append(("butteraugli max + 3-norm (butteraugli_main)", lambda: butteraugli_scores(x, y)))
        if vmaf_available():
            rows.append(("vmaf + vmaf_neg (libvmaf in ffmpeg)", lambda: vmaf_scores(x, y)))
        measured = [{"metric": name, "seconds": _median_seconds(fn, repeats)} for name, fn in rows]
    baseline = measured[0]["seconds"]
    for row in measured:
        row["vs_numpy_port"] = row["seconds"] / baseline
    return measured


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    paths = list_images(args.images)
    paths = paths[: args.limit] if args.limit else paths
    first = next(p for p in paths if p.stem == "kodim01") if any(p.stem == "kodim01" for p in paths) else paths[0]
    report = {
        "name": "metrics",
        "description": "weight-free perceptual metrics: SSIMULACRA2 against the NumPy port; speed at 768x512",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads},
        "load_average_at_start": os.getloadavg(),
        "speed_image": f"{first.name} vs its JPEG q30 ({load_image(first).size[0]}x{load_image(first).size[1]})",
        "speed": speed(first, args.repeats),
        "agreement": agreement(paths),
        "load_average_at_end": os.getloadavg(),
    }
    print(f"\nSpeed per image, {report['speed_image']}, median of {args.repeats}:")
    print(f"{'metric':52}{'seconds':>9}{'vs port':>9}")
    for row in report["speed"]:
        print(f"{row['metric']:52}{row['seconds']:9.3f}{row['vs_numpy_port']:9.2f}")
    agree = report["agreement"]
    print(f"\nSSIMULACRA2 vs the NumPy port, {agree['pairs']} pairs ({len(paths)} images x {CASES}):")
    for precision, stats in agree["summary"].items():
        print(f"  {precision}: mean |diff| {stats['mean_abs_diff']:.2e}, max {stats['max_abs_diff']:.2e} points")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main(parse_args())
