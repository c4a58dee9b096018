"""``rp-diffusers compress``: pre-process images with a rate-perception model and encode them with a real codec."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..default_model import DTYPES  # light: no torch at import
from ..utils.files import check_outputs, write_atomic, write_json

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compress",
        help="pre-process images with a rate-perception model and encode them with a standard codec",
        description=(
            "For each IMAGE, write the pre-processed image's standard codec file (NAME.rp.EXT) and the codec-alone "
            "file (NAME.EXT) to --out, and print bpp and quality (PSNR, MS-SSIM, SSIMULACRA2, Butteraugli, VMAF, "
            "VMAF-NEG, LPIPS, DISTS where available) of both against the original. Existing files are never replaced "
            "without --overwrite, and inputs whose names differ only in the extension (a.png, a.tiff) are refused, "
            "as they would write the same NAME.EXT: both checks run before anything is written."
        ),
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--codec", default="jpeg", help="codec name, e.g. jpeg, webp, avif, heic, hevc, vvc")
    parser.add_argument("--quality", type=int, default=None, help="codec quality, higher = better (default: codec's)")
    parser.add_argument(
        "--target-bpp", type=float, default=None, help="instead of --quality: highest quality within this bpp"
    )
    parser.add_argument(
        "--model",
        default="default",
        help="RPPreprocessPipeline folder or Hub id (an SD 2.1 / SD-Turbo folder works too); 'default': the "
        "compact model shipped with the package",
    )
    parser.add_argument("--adapter", default=None, help="adapter name in the model, or a folder holding one")
    parser.add_argument(
        "--metrics",
        default="default",
        help="comma-separated metrics to report; 'default': PSNR, MS-SSIM, every installed weight-free perceptual "
        "metric (SSIMULACRA2, Butteraugli, VMAF, VMAF-NEG), LPIPS and DISTS",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype")
    parser.add_argument("--tile-size", type=int, default=None, help="tile side in pixels for large images")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the table as JSON")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing files in --out (and the --json file)"
    )
    parser.set_defaults(func=run)
    return parser


def _format_table(rows: list[dict], metric_names: list[str]) -> str:
    widths = {m: max(10, len(m) + 2) for m in metric_names}
    header = f"{'image':<24}{'variant':<14}{'quality':>8}{'bpp':>9}" + "".join(
        f"{m:>{widths[m]}}" for m in metric_names
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = "".join(
            f"{row[m]:>{widths[m]}.4f}" if isinstance(row.get(m), float) else f"{'-':>{widths[m]}}"
            for m in metric_names
        )
        lines.append(f"{row['image'][:23]:<24}{row['variant']:<14}{row['quality']:>8}{row['bpp']:>9.4f}{cells}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..adapters import choose_adapter
    from ..codecs import get_codec
    from ..default_model import load_preprocessor
    from ..utils import load_image

    if args.quality is not None and args.target_bpp is not None:
        raise ValueError("give either --quality or --target-bpp, not both")
    codec = get_codec(args.codec)
    if args.quality is not None:
        codec.check_quality(args.quality)
    from ..evaluation import parse_metrics, usable_metrics
    from ..evaluation.compare import encode_pair, measure_pair
    from ..evaluation.results import RESULT_KEYS, comparison_report

    metric_names = usable_metrics(parse_metrics(args.metrics))  # missing tools and weights: warned once here
    out = Path(args.out)
    paths = [Path(path) for path in args.images]
    table = [("--json", Path(args.json))] if args.json else []

    def planned(suffixes: tuple[str, ...]) -> list[tuple[str, Path]]:
        return [(str(p), out / f"{p.stem}{suffix}{codec.extension}") for p in paths for suffix in suffixes] + table

    check_outputs(planned(("",)), paths, args.overwrite)  # the codec-alone files are always written
    pipe = load_preprocessor(args.model, args.device, args.dtype)  # the one loader (rp_diffusers.default_model)
    pipe.set_progress_bar_config(disable=True)
    if args.tile_size is not None:
        pipe.enable_tiling(tile_size=args.tile_size, overlap=min(128, args.tile_size // 4))
    choice = choose_adapter(pipe, codec.name, args.adapter)  # --adapter, else what won: a network, a step or nothing
    print(f"{codec.name}: {'pre-processing with ' if choice.preprocess else ''}{choice.reason}")
    if choice.codec_alone:
        print(f"writing the {codec.name} files only")
    else:
        check_outputs(planned(("", ".rp")), paths, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    match = "quality" if args.target_bpp is None else "target_bpp"  # each variant at the same setting
    for path in paths:
        original = load_image(path)
        pre = pipe(original, adapter_name=choice.adapter or []).images[0] if choice.preprocess else None
        if pre is None and choice.codec_step is not None:
            pre = original  # no network: the codec step alone runs before the encoder
        pair = encode_pair(
            codec,
            original,
            pre,
            quality=args.quality,
            target_bpp=args.target_bpp,
            match=match,
            codec_step=choice.codec_step,
        )
        scores = measure_pair(original, pair, metric_names)
        for (variant, values), result, suffix in zip(scores.items(), pair, ("", ".rp")):
            target = write_atomic(out / f"{path.stem}{suffix}{codec.extension}", result.data, args.overwrite)
            row = {"image": path.name, "variant": variant, "file": str(target), "quality": result.quality}
            rows.append({**row, "bpp": result.bpp, **values})
    print(f"{codec.name}, model {args.model}" + (f", adapter {choice.adapter}" if choice.adapter else ""))
    print(_format_table(rows, [RESULT_KEYS.get(m, m) for m in metric_names]))
    if args.json:
        meta = {
            "codec": codec.name,
            "quality": args.quality,
            "target_bpp": args.target_bpp,
            "model": args.model,
            "adapter": choice.adapter,
            "preprocess": choice.preprocess,
            "codec_step": choice.codec_step.config() if choice.codec_step is not None else None,
            "choice": choice.reason,
        }
        description = f"rp-diffusers compress: {codec.name} alone" + ("" if choice.codec_alone else " vs rp + codec")
        report = comparison_report(rows, name=codec.name, description=description, meta=meta)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, report, args.overwrite)  # null: lossless PSNR
    print(f"wrote {len(rows)} files to {out}/")
    return 0
