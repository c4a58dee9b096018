"""``rp-diffusers calibrate-decode``: the paper's noise-level rule for a perceptual-decoding model, cached with it.

For each quality, real encodes and decodes of held-out photographs, then a search for the sigma at which
MSE(enhanced, source) is twice MSE(decoded, source) (Zhu et al. 2025, arXiv:2506.16102). The result is written to
``decode_calibration.json`` in the model's folder (or ``--output``), where ``PerceptualDecodePipeline`` finds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..decode.calibration import DEFAULT_QUALITIES, load_photographs


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate-decode",
        help="compute the noise levels of perceptual decoding for a model (cached next to it)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("--model", default="default", help="PerceptualDecodePipeline folder or Hub id")
    parser.add_argument("--data", required=True, help="folder of held-out photographs (never the test set)")
    parser.add_argument("--codec", nargs="+", default=["jpeg"], help="codec names")
    parser.add_argument("--qualities", help="comma-separated qualities (default: a per-codec list)")
    parser.add_argument("--preset", choices=("fast", "medium", "slow"), default="fast")
    parser.add_argument("--steps", type=int, help="model calls of the preset (default: the pipeline's)")
    parser.add_argument("--num-images", type=int, default=13, help="use the first N photographs (sorted by name)")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side in pixels (0: whole images)")
    parser.add_argument("--ratio", type=float, default=2.0, help="target MSE(enhanced, source) / codec MSE")
    parser.add_argument("--output", help="JSON table to update (default: decode_calibration.json in the model folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..decode.calibration import CALIBRATION_FILE, SigmaTable, calibrate_sigmas
    from ..pipelines.perceptual_decode import load_pipeline, resolve_decode_model

    folder = Path(resolve_decode_model(args.model))
    if args.output:
        output = Path(args.output)
    elif folder.is_dir():
        output = folder / CALIBRATION_FILE
    else:
        raise ValueError("--model is a Hub id: pass --output (e.g. DIR/decode_calibration.json)")
    sources = load_photographs(args.data, args.num_images, args.crop)
    dataset = f"{Path(args.data).resolve().name}: {len(sources)} images, centre crop {args.crop or 'none'}"
    pipe = load_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    table = SigmaTable.load(output) if output.is_file() else SigmaTable()
    print(f"{'codec':<6} {'quality':>7} {'codec MSE':>10} {'sigma':>8} {'ratio':>6}")
    for codec in args.codec:
        qualities = [float(q) for q in (args.qualities or DEFAULT_QUALITIES.get(codec, "10,30,50,70,90")).split(",")]
        qualities = [int(q) if q.is_integer() else q for q in qualities]
        entry, record = calibrate_sigmas(
            pipe, sources, codec, qualities, args.preset, args.steps, args.ratio, seed=args.seed, dataset=dataset
        )
        table.set_codec_mse(codec, qualities, record["mse"], dataset)
        table.add_entry(entry)
        table.save(output)
        for quality, mse, sigma, ratio in zip(qualities, record["mse"], entry["sigmas"], entry["ratios"]):
            print(f"{codec:<6} {quality:>7} {mse:>10.3e} {sigma:>8.4g} {ratio:>6.2f}")
    print(f"wrote {output}")
    return 0


__all__ = ["add_parser", "run"]
