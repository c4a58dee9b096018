"""Rate-distortion of a trained CorrDiff model on Kodak against JPEG and HEIC, from real bitstreams.

Measured per image (every rate is ``8 * len(file) / pixels`` of the original image):
- ``corrdiff-e2e``: files without side information (``num_inference_steps=0``), decoded by the end-to-end decoder;
- ``corrdiff-dw{w}``: the corrected diffusion decoder at distortion weight ``w`` (its side information counted);
- ``diffusion-uncorrected``: the plain DDIM sample with the same seed (rate = the same file minus the side stream,
  i.e. what a codec without correction would send);
- ``jpeg`` / ``heic``: ``rp_diffusers.codecs`` at their sweep qualities.
Metrics: RGB PSNR and MS-SSIM (``rp_diffusers.metrics``, 8-bit, CompressAI conventions) and a texture-energy
ratio (mean squared Laplacian of the reconstruction over the original's: 1 = as much fine detail as the
original, < 1 = blurred), a cheap stand-in for a perceptual metric when LPIPS/DISTS weights are absent.
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

from rp_diffusers.codecs import get_codec
from rp_diffusers.corrdiff import CorrDiffCodec
from rp_diffusers.evaluation.plot import plot_rd
from rp_diffusers.evaluation.results import EvaluationResult
from rp_diffusers.metrics.psnr import psnr
from rp_diffusers.metrics.ssim import ms_ssim
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor

DEFAULT_KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
BASELINE_QUALITIES = {"jpeg": "5,10,20,35,55,80", "heic": "10,20,30,40,50,60"}


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="CorrDiff model folder (or Hub id) from train_corrdiff.py.")
    parser.add_argument("--images", default=str(DEFAULT_KODAK), help="Folder of test images (Kodak).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N images (sorted by name).")
    parser.add_argument("--qualities", default=None, help="CorrDiff qualities of the e2e curve (default: all).")
    parser.add_argument(
        "--diffusion_qualities", default="0,2,4", help="Qualities run with the diffusion decoder ('' skips it)."
    )
    parser.add_argument("--distortion_weights", default="1.0,0.0", help="Distortion weights of the corrected runs.")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="DDIM steps (default: the model's).")
    parser.add_argument("--seed", type=int, default=0, help="Diffusion noise seed.")
    parser.add_argument("--baselines", default="jpeg,heic", help="Comma-separated rp_diffusers codecs to compare.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy CPU).")
    parser.add_argument("--output", default="benchmarks/results/corrdiff.json", help="JSON output path.")
    parser.add_argument("--plot", default="benchmarks/results/corrdiff.png", help="R-D plot path (PNG/SVG).")
    return parser.parse_args(input_args)


def texture_ratio(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Mean squared Laplacian of ``test`` over that of ``reference`` ((1, 3, H, W) in [0, 1])."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    energy = [F.conv2d(x.double(), kernel.double(), groups=3).pow(2).mean() for x in (reference, test)]
    return float(energy[1] / energy[0])


def measure(reference: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    return {
        "psnr-rgb": float(psnr(reference, test)[0]),
        "ms-ssim-rgb": float(ms_ssim(reference, test)[0]),
        "texture-ratio": texture_ratio(reference, test),
    }


def corrdiff_results(args, images) -> tuple[list[EvaluationResult], dict]:
    e2e = CorrDiffCodec.from_pretrained(args.model, num_inference_steps=0)
    qualities = [int(q) for q in args.qualities.split(",")] if args.qualities else list(e2e.sweep_qualities)
    curves = {"e2e": EvaluationResult("corrdiff-e2e", f"{e2e.description}; end-to-end decoder only")}
    for name, image, reference in images:
        for quality in qualities:
            result = e2e.run(image, quality)
            row = {"image": name, "quality": quality, "bpp": result.bpp, "encoding_time": result.encode_seconds}
            curves["e2e"].records.append({**row, **measure(reference, pil_to_tensor(result.reconstruction))})
    checks = {}
    weights = [float(w) for w in args.distortion_weights.split(",") if w] if args.diffusion_qualities else []
    for weight_index, weight in enumerate(weights):
        codec = CorrDiffCodec(model=e2e.model, distortion_weight=weight, seed=args.seed,
                              num_inference_steps=args.num_inference_steps)  # fmt: skip
        corrected = curves.setdefault(f"dw{weight}", EvaluationResult(f"corrdiff-dw{weight}", codec.description))
        plain = curves.setdefault("plain", EvaluationResult("diffusion-uncorrected", "same seed, no correction"))
        for index, (name, image, reference) in enumerate(images):
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
        for image_name, image, reference in images:
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


def at_rate(curve: dict, bpp: float, key: str) -> float:
    """Linear interpolation of a mean curve at ``bpp`` (nan outside its range)."""
    points = sorted(zip(curve["bpp"], curve[key]))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return float(np.interp(bpp, xs, ys)) if xs[0] <= bpp <= xs[-1] else float("nan")


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
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
    print(f"{'method':24s} {'q':>3s} {'bpp':>7s} {'side':>7s} {'PSNR':>6s} {'MS-SSIM':>8s} {'texture':>8s}  "
          + "  ".join(f"{b.name} PSNR@bpp" for b in baselines))  # fmt: skip
    for curve in curves:
        r = curve["results"]
        for i, quality in enumerate(r["quality"]):
            side = r.get("side-bpp", [0.0] * len(r["bpp"]))[i]
            same_rate = "  ".join(f"{at_rate(b.averaged(), r['bpp'][i], 'psnr-rgb'):17.2f}" for b in baselines)
            print(f"{curve['name']:24s} {quality:3.0f} {r['bpp'][i]:7.4f} {side:7.4f} {r['psnr-rgb'][i]:6.2f} "
                  f"{r['ms-ssim-rgb'][i]:8.4f} {r['texture-ratio'][i]:8.3f}  {same_rate}")  # fmt: skip
    print(f"decoded files pixel-identical to the encoder's reconstruction: {checks}")
    main_curve = next((c for c in curves if c["name"].startswith("corrdiff-dw")), curves[0])
    output = {
        **main_curve,
        "name": "corrdiff",
        "curves": curves,
        "meta": {
            "command": " ".join(sys.argv), "model": args.model, "images": args.images, "num_images": len(images), "seed": args.seed,
            "decode_checks": checks, "seconds": time.perf_counter() - start, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        },
    }  # fmt: skip
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + "\n")
    plot_rd(curves, args.plot, metrics=["psnr-rgb", "ms-ssim-rgb", "texture-ratio"])
    print(f"wrote {path} and {args.plot}")
    return output


if __name__ == "__main__":
    main(parse_args())
