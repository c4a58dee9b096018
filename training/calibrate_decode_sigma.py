"""Build the noise-level table of PerceptualDecodePipeline (the rule of arXiv:2506.16102) on training photographs.

For each codec and quality: encode + decode every photograph with the real codec (``rp_diffusers.codecs``), record
the mean codec MSE, then (unless ``--codec-mse-only``) search the sigma at which the enhanced images' MSE to the
sources is ``--ratio`` (2) times the codec MSE with the given model and preset. Results are merged into a JSON
table (default: the one shipped in ``rp_diffusers/decode/sigma_table.json``) that the pipeline interpolates in
quality at run time. Photographs are centre-cropped to ``--crop`` pixels (never resized). Never run this on Kodak:
it is the test set.

Examples:
    python training/calibrate_decode_sigma.py --data photos/ --codec-mse-only --codec jpeg webp avif hevc
    python training/calibrate_decode_sigma.py --data photos/ --model openai/diffusers-cd_imagenet64_lpips \\
        --codec jpeg --qualities 5,10,20,30,50,75 --preset fast --device cuda
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from rp_diffusers.codecs import get_codec
from rp_diffusers.decode.calibration import (
    DEFAULT_QUALITIES,
    DEFAULT_TABLE_PATH,
    SigmaTable,
    calibrate_sigmas,
    load_photographs,
)
from rp_diffusers.default_model import DTYPES
from rp_diffusers.pipelines.perceptual_decode import load_pipeline
from rp_diffusers.utils.image import pil_to_tensor

logger = logging.getLogger("calibrate_decode_sigma")


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder of training photographs (train-sunhays80, not Kodak)")
    parser.add_argument("--num-images", type=int, default=80, help="use the first N photographs (sorted by name)")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side in pixels (0: whole images)")
    parser.add_argument("--codec", nargs="+", default=["jpeg"], help="codec names from rp_diffusers.codecs")
    parser.add_argument("--qualities", help="comma-separated qualities (default: a per-codec list)")
    parser.add_argument("--codec-mse-only", action="store_true", help="only measure the codecs' MSE (no model)")
    parser.add_argument("--model", default="openai/diffusers-cd_imagenet64_lpips", help="Hub id or local folder")
    parser.add_argument("--model-key", help="id stored in the table (default: --model)")
    parser.add_argument("--preset", choices=("fast", "medium", "slow"), default="fast", help="preset to calibrate")
    parser.add_argument("--num-steps", type=int, help="model calls for medium/slow (pipeline default otherwise)")
    parser.add_argument("--ratio", type=float, default=2.0, help="target MSE(enhanced, source) / codec MSE")
    parser.add_argument("--rtol", type=float, default=0.02, help="relative tolerance of the ratio search")
    parser.add_argument("--sigma-max", type=float, default=10.0, help="upper end of the sigma search bracket")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (the same noise for every sigma tried)")
    parser.add_argument("--device", help="torch device (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--output", default=str(DEFAULT_TABLE_PATH), help="JSON table to create or update")
    return parser.parse_args(input_args)


def mean_mse(images: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    return float(sum((a.float() - b.float()).pow(2).mean() for a, b in zip(images, references)) / len(images))


def encode_all(codec_name: str, quality: int, sources: list[torch.Tensor]) -> list[torch.Tensor]:
    from rp_diffusers.utils.image import tensor_to_pil

    codec = get_codec(codec_name)
    return [pil_to_tensor(codec.run(tensor_to_pil(s)[0], quality).reconstruction) for s in sources]


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sources = load_photographs(args.data, args.num_images, args.crop)
    dataset = f"{Path(args.data).name}: {len(sources)} images, centre crop {args.crop or 'none'}"
    output = Path(args.output)
    table = SigmaTable.load(output) if output.is_file() else SigmaTable()
    pipe = None if args.codec_mse_only else load_pipeline(args.model, args.device, args.dtype)
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
    for codec_name in args.codec:
        qualities = [
            int(q) for q in (args.qualities or DEFAULT_QUALITIES.get(codec_name, "10,30,50,70,90")).split(",")
        ]
        if pipe is None:
            codec_mses = []
            for quality in qualities:
                start = time.perf_counter()
                codec_mses.append(mean_mse(encode_all(codec_name, quality, sources), sources))
                logger.info(
                    "%s q=%s codec MSE %.3e (%.1fs)", codec_name, quality, codec_mses[-1], time.perf_counter() - start
                )
            table.set_codec_mse(codec_name, qualities, codec_mses, dataset)
        else:  # the library's calibration (the one behind `rp-diffusers calibrate-decode`)
            if args.model_key:
                pipe.register_to_config(calibration_key=args.model_key)
            entry, record = calibrate_sigmas(
                pipe,
                sources,
                codec_name,
                qualities,
                preset=args.preset,
                num_steps=args.num_steps,
                ratio=args.ratio,
                rtol=args.rtol,
                sigma_max=args.sigma_max,
                seed=args.seed,
                dataset=dataset,
            )
            table.set_codec_mse(codec_name, qualities, record["mse"], dataset)
            table.add_entry(entry)
        table.save(output)
        logger.info("wrote %s", output)


if __name__ == "__main__":
    main(parse_args())
