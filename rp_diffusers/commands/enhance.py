"""``rp-diffusers enhance``: training-free perceptual enhancement of decoded images (arXiv:2506.16102), as PNG."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..default_model import DTYPES  # light: no torch at import

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"  # the small EDM denoiser shipped in rp_diffusers/assets/decode_model
PRESET_CHOICES = ("fast", "medium", "slow")  # mirrors pipelines.perceptual_decode.PRESETS (kept light to import)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "enhance",
        help="improve the perceptual quality of decoded images (noise + denoise with a diffusion model)",
        description=(
            "Add noise at a calibrated level to each decoded image and denoise it with a diffusion or consistency "
            "model (training-free perceptual decoding). Writes lossless PNGs of the same size, NAME.png "
            "in --out. Existing files are never replaced without --overwrite, and inputs whose names differ only in "
            "the extension (a.jpg, a.webp) are refused, as they would write the same NAME.png: both checks run "
            "before anything is written. Inputs are taken as they decode: JPEG, WebP, AVIF and HEIC carry no "
            "checksum, so a file corrupted inside its coded data decodes to a damaged picture without an error."
        ),
    )
    parser.add_argument("images", nargs="+", metavar="DECODED", help="decoded image files (any format Pillow reads)")
    parser.add_argument("--out", required=True, help="output folder for <name>.png")
    parser.add_argument("--preset", choices=PRESET_CHOICES, default="fast", help="speed/quality preset")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="'default' (the small denoiser shipped with the package, offline), or a Hub id or local folder of a "
        "PerceptualDecodePipeline, ConsistencyModelPipeline, DDPM or SD model",
    )
    parser.add_argument("--codec", help="codec the images were decoded with (e.g. jpeg); sets the default sigma")
    parser.add_argument("--quality", type=float, help="codec quality the images were encoded with")
    parser.add_argument(
        "--sigma",
        help="noise level (VE units of the model's space), or 'auto' for a per-image search; "
        "default: the calibrated level for the codec and quality",
    )
    parser.add_argument("--steps", type=int, help="model calls for the medium/slow presets")
    parser.add_argument("--interpolation", type=float, help="alpha in [0, 1]: (1 - alpha) decoded + alpha enhanced")
    parser.add_argument("--dps-scale", type=float, default=1.0, help="DPS step size of the slow preset")
    parser.add_argument("--class-label", type=int, help="class for class-conditional models (default: random)")
    parser.add_argument("--calibration", help="sigma calibration table (JSON) instead of the shipped one")
    parser.add_argument("--seed", type=int, default=0, help="random seed (results are deterministic per seed)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace existing PNGs in --out")
    parser.set_defaults(func=run)
    return parser


def _parse_sigma(value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError as error:
        raise ValueError(f"--sigma must be a number or 'auto', got {value!r}") from error


def run(args: argparse.Namespace) -> int:
    import torch

    from ..pipelines.perceptual_decode import load_pipeline
    from ..utils.files import atomic_path, check_outputs
    from ..utils.image import load_image

    sigma = _parse_sigma(args.sigma)
    paths = [Path(p) for p in args.images]
    out_dir = Path(args.out)
    targets = [out_dir / f"{p.stem}.png" for p in paths]
    check_outputs([(str(p), target) for p, target in zip(paths, targets)], paths, args.overwrite)
    images = [load_image(p) for p in paths]  # fail on unreadable inputs before loading a model
    if args.model == DEFAULT_MODEL:
        logger.warning(
            "the shipped decode model is a small denoiser trained on 2 CPU cores so that this command runs offline; "
            "on Kodak it lowers every metric measured (benchmarks/results/perceptual_decode_kodak.json): pass "
            "--model with a strong diffusion model for a real gain"
        )
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"{'file':<40} {'size':>11} {'sigma':>8} {'seconds':>8}")
    for path, target, image in zip(paths, targets, images):
        start = time.perf_counter()
        output = pipe(
            image,
            preset=args.preset,
            sigma=sigma,
            num_steps=args.steps,
            codec=args.codec,
            quality=args.quality,
            generator=generator,
            interpolation=args.interpolation,
            dps_scale=args.dps_scale,
            class_labels=args.class_label,
            calibration=args.calibration,
        )
        with atomic_path(
            target, args.overwrite
        ) as temporary:  # a killed run leaves no half-written PNG under the final name
            output.images[0].save(temporary, format="PNG")
        size = f"{image.width}x{image.height}"
        print(f"{path.name:<40} {size:>11} {output.sigmas[0]:>8.4g} {time.perf_counter() - start:>8.2f}")
    print(f"wrote {len(targets)} PNG(s) to {out_dir}")
    return 0


__all__ = ["DEFAULT_MODEL", "add_parser", "run"]
