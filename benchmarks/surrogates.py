"""Fidelity and speed of codec surrogates against their real codecs on a folder of photographs (default: Kodak).

For every surrogate name (``--codecs jpeg,webp,...``: any name ``get_surrogate`` knows that is also a codec in
``rp_diffusers.codecs``) and quality, over every image:

- PSNR (dB) between the surrogate's reconstruction and the real codec's decode (min and median), and how many
  reconstructions, rounded to 8 bits, equal the real decode exactly;
- the estimated size against the real file: median and max absolute relative error, Pearson r of log bits
  (per quality and pooled over qualities); for surrogates with an ``exact_bits`` method, its error too;
- rate descent: the relative change of the real file size after a step of RMS 2/255 along -grad(bits), and
  after a random step of the same size (a useful rate gradient makes the first clearly negative);
- seconds per megapixel of the surrogate's forward (no grad) and forward + backward, and of the real codec's
  encode + decode in the same run (the plain baseline), with the ratio surrogate / real.

    python benchmarks/surrogates.py --codecs jpeg --qualities 15,50,85 --output benchmarks/results/surrogates.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import features

from rp_diffusers.codecs import get_codec
from rp_diffusers.surrogates import get_surrogate
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", default="jpeg", help="comma-separated surrogate names (also real codec names)")
    parser.add_argument("--qualities", default="15,50,85", help="comma-separated qualities on each codec's scale")
    parser.add_argument("--images", type=Path, default=Path("../shared/data/kodak"), help="folder of photographs")
    parser.add_argument("--max_images", type=int, default=None, help="use only the first N images")
    parser.add_argument("--device", default="cpu", help="torch device for the surrogates")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/surrogates.json"), help="JSON path")
    return parser.parse_args(input_args)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pearson(x: list[float], y: list[float]) -> float:
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 else math.nan


def measure_one(surrogate, codec, image, quality: int, device: torch.device) -> dict:
    """One image at one quality: fidelity numbers and timings."""
    result = codec.run(image, quality)
    real = np.asarray(result.reconstruction, dtype=np.float64)
    tensor = pil_to_tensor(image).to(device)
    megapixels = image.width * image.height / 1e6

    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = surrogate(tensor, float(quality))
    _sync(device)
    forward = time.perf_counter() - start

    leaf = tensor.clone().requires_grad_(True)
    _sync(device)
    start = time.perf_counter()
    graded = surrogate(leaf, float(quality))
    (graded.bits.sum() / (image.width * image.height) + graded.reconstruction.float().square().mean()).backward()
    _sync(device)
    backward = time.perf_counter() - start

    # Rate descent: a step of RMS 2/255 along -grad(bits) against a random step of the same size (real sizes).
    leaf = tensor.clone().requires_grad_(True)
    surrogate(leaf, float(quality)).bits.sum().backward()
    scale = 2 / 255 * math.sqrt(leaf.numel())
    noise = torch.randn(leaf.shape, generator=torch.Generator().manual_seed(0)).to(device)
    descent = {}
    for key, direction in (("descent", leaf.grad), ("random", noise)):
        stepped = (tensor - direction / direction.norm().clamp_min(1e-12) * scale).clamp(0, 1)
        descent[key] = 8.0 * len(codec.run(stepped.cpu(), quality).data) / (8.0 * len(result.data)) - 1

    ours = out.reconstruction[0].float().permute(1, 2, 0).cpu().numpy().astype(np.float64) * 255
    mse = float(np.mean((ours - real) ** 2))
    row = {
        "psnr": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse),
        "identical": bool(np.array_equal(np.clip(np.round(ours), 0, 255), real)),
        "bits": float(out.bits[0]),
        "real_bits": 8.0 * len(result.data),
        "forward_s_per_mp": forward / megapixels,
        "forward_backward_s_per_mp": backward / megapixels,
        "real_codec_s_per_mp": (result.encode_seconds + result.decode_seconds) / megapixels,
        "descent_rel_change": descent["descent"],
        "random_rel_change": descent["random"],
    }
    if hasattr(surrogate, "exact_bits"):
        row["exact_bits"] = float(surrogate.exact_bits(tensor, float(quality))[0])
    return row


def summarise(rows: list[dict]) -> dict:
    """Per (codec, quality) aggregate of ``measure_one`` rows."""
    rel = [abs(r["bits"] / r["real_bits"] - 1) for r in rows]
    psnrs = [r["psnr"] for r in rows]
    out = {
        "images": len(rows),
        "psnr_min": float(min(psnrs)),
        "psnr_median": float(np.median(psnrs)),
        "identical_decodes": int(sum(r["identical"] for r in rows)),
        "bits_median_abs_rel_error": float(np.median(rel)),
        "bits_max_abs_rel_error": float(max(rel)),
        "log_bits_pearson": _pearson([math.log(r["bits"]) for r in rows], [math.log(r["real_bits"]) for r in rows]),
        "real_bits_median": float(np.median([r["real_bits"] for r in rows])),
    }
    if "exact_bits" in rows[0]:
        out["exact_bits_max_abs_rel_error"] = float(max(abs(r["exact_bits"] / r["real_bits"] - 1) for r in rows))
    out["descent_rel_change_mean"] = float(np.mean([r["descent_rel_change"] for r in rows]))
    out["random_rel_change_mean"] = float(np.mean([r["random_rel_change"] for r in rows]))
    for key in ("forward_s_per_mp", "forward_backward_s_per_mp", "real_codec_s_per_mp"):
        out[key] = float(np.median([r[key] for r in rows]))
    out["forward_over_real_codec"] = out["forward_s_per_mp"] / out["real_codec_s_per_mp"]
    return out


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    paths = list_images(args.images)[: args.max_images]
    if not paths:
        raise FileNotFoundError(f"no images in {args.images}")
    images = [load_image(p) for p in paths]
    qualities = [int(q) for q in args.qualities.split(",")]
    report = {
        "description": "surrogate vs real codec: PSNR between decodes, size error, seconds per megapixel",
        "images": f"{args.images} ({len(images)} images)",
        "environment": {
            "device": str(device),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "results": {},
    }
    for name in [c.strip() for c in args.codecs.split(",") if c.strip()]:
        surrogate, codec = get_surrogate(name).to(device).eval(), get_codec(name)
        per_quality, pooled = {}, []
        for quality in qualities:
            rows = [measure_one(surrogate, codec, image, quality, device) for image in images]
            per_quality[str(quality)] = summarise(rows)
            pooled += rows
            print(f"{name} q={quality} done", flush=True)
        report["results"][name] = {
            "per_quality": per_quality,
            "pooled_log_bits_pearson": _pearson(
                [math.log(r["bits"]) for r in pooled], [math.log(r["real_bits"]) for r in pooled]
            ),
            "pooled_bits_median_abs_rel_error": float(
                np.median([abs(r["bits"] / r["real_bits"] - 1) for r in pooled])
            ),
        }
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


def print_table(report: dict) -> None:
    header = (
        f"{'codec':6} {'q':>4} {'PSNR min':>9} {'PSNR med':>9} {'exact':>6} {'bits MedARE':>11} {'bits MaxARE':>11} "
        f"{'logbits r':>9} {'exact MaxARE':>12} {'descent':>8} {'random':>7} "
        f"{'fwd s/MP':>9} {'f+b s/MP':>9} {'real s/MP':>9} {'fwd/real':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, result in report["results"].items():
        for quality, s in result["per_quality"].items():
            print(
                f"{name:6} {quality:>4} {s['psnr_min']:9.2f} {s['psnr_median']:9.2f} "
                f"{s['identical_decodes']:>3}/{s['images']:<2} "
                f"{100 * s['bits_median_abs_rel_error']:10.2f}% {100 * s['bits_max_abs_rel_error']:10.2f}% "
                f"{s['log_bits_pearson']:9.4f} {100 * s.get('exact_bits_max_abs_rel_error', math.nan):11.3f}% "
                f"{100 * s['descent_rel_change_mean']:7.2f}% {100 * s['random_rel_change_mean']:6.2f}% "
                f"{s['forward_s_per_mp']:9.3f} {s['forward_backward_s_per_mp']:9.3f} "
                f"{s['real_codec_s_per_mp']:9.4f} {s['forward_over_real_codec']:8.1f}"
            )
        print(
            f"{name:6} all: log-bits Pearson {result['pooled_log_bits_pearson']:.4f}, "
            f"bits MedARE {100 * result['pooled_bits_median_abs_rel_error']:.2f}%"
        )


if __name__ == "__main__":
    main(parse_args())
