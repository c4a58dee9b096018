"""``rp-diffusers evaluate``: R-D sweeps of real codecs (alone, after rp pre-processing, or enhanced)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="R-D curves of codecs over a folder of images (results JSON, plot, BD-rate table)",
        description="Encode every image at every quality with real codecs, measure, and write CompressAI-style "
        "results JSON, an R-D plot and a BD-rate table. Without --images, runs on the bundled examples.",
    )
    parser.add_argument("--images", nargs="+", default=None, help="image files or folders (default: bundled examples)")
    parser.add_argument("--codec", default="jpeg", help="codec name(s), comma-separated, e.g. jpeg,webp,heic")
    parser.add_argument("--qualities", default=None, help="e.g. 10,30,50 or 10:90:10 (default: the codec's sweep)")
    parser.add_argument(
        "--metrics",
        default="default",
        help="per-image metrics, comma-separated; 'default': psnr, ms_ssim, every installed weight-free perceptual "
        "metric (ssimulacra2, butteraugli, butteraugli_3norm, vmaf, vmaf_neg), lpips and dists",
    )
    parser.add_argument("--fid", action="store_true", help="also patch FID and KID per quality (Inception weights)")
    parser.add_argument(
        "--model",
        default=None,
        help="RPPreprocessPipeline folder, Hub id or 'default' (the compact model shipped): adds rp + codec curves",
    )
    parser.add_argument("--adapter", default=None, help="rate-perception adapter name (default: the model's own)")
    parser.add_argument("--enhance", default=None, choices=["fast", "medium", "slow"], help="perceptual decoding")
    parser.add_argument("--enhance-model", default=None, help="PerceptualDecodePipeline folder or Hub id")
    parser.add_argument(
        "--enhance-sigma",
        default=None,
        help="noise level for --enhance: a number, 'auto' (searched per image), or unset (the calibration table)",
    )
    parser.add_argument("--anchor", default=None, help="curve name the BD-rate table is against (default: first)")
    parser.add_argument("--output", default="results", help="output folder (JSON per curve, rd.png, bd_rate.json)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: up to 4)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def _print_curve(data: dict) -> None:
    results = data["results"]
    keys = [k for k in results if k not in ("quality", "encoding_time", "decoding_time")]
    print(f"\n{data['name']}  ({data['description']})")
    widths = [max(13, len(k) + 2) for k in keys]
    print("quality".rjust(8) + "".join(f"{k:>{w}}" for k, w in zip(keys, widths)))
    for i, q in enumerate(results["quality"]):
        print(f"{q:>8g}" + "".join(f"{results[k][i]:>{w}.4f}" for k, w in zip(keys, widths)))


def run(args: argparse.Namespace) -> int:
    from ..evaluation import (
        EXAMPLES_DIR,
        MIN_OVERLAP,
        bd_overlap,
        bd_table,
        evaluate,
        format_bd_table,
        list_images,
        parse_metrics,
        plot_rd,
    )

    images = list_images(args.images or [EXAMPLES_DIR])
    if args.limit:
        images = images[: args.limit]
    metrics = parse_metrics(args.metrics)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    pipe = _load_preprocessor(args.model) if args.model else None
    enhancer = _load_enhancer(args) if args.enhance else None

    curves = []
    for codec in [c.strip() for c in args.codec.split(",") if c.strip()]:
        runs = [(codec, None)]
        if pipe is not None:
            choice = _adapter_choice(pipe, codec, args.adapter)
            print(f"{codec}: {'rp + ' if choice.preprocess else ''}{choice.reason}")
            if choice.preprocess:
                adapter = choice.adapter
                label = f"[{adapter}]" if adapter else ("[base]" if getattr(pipe.config, "adapters", None) else "")
                runs.append((f"rp+{codec}{label}", _preprocess_fn(pipe, adapter)))
        for name, preprocess in runs:
            common = dict(
                metrics=metrics,
                preprocess=preprocess,
                set_metrics=("fid", "kid") if args.fid else (),
                workers=args.workers,
                progress=not args.no_progress,
            )
            result = evaluate(images, codec, args.qualities, name=name, **common)
            curves.append(result.to_dict())
            if enhancer is not None:
                result = evaluate(
                    images, codec, args.qualities, name=f"{name}+{args.enhance}", enhance=enhancer, **common
                )
                curves.append(result.to_dict())
    for data in curves:
        path = output / f"{data['name'].replace('/', '_')}.json"
        path.write_text(json.dumps(data, indent=2) + "\n")
        _print_curve(data)
    plot = plot_rd(curves, output / "rd.png")
    print(f"\nwrote {len(curves)} results files and {plot} to {output}/")
    if len(curves) > 1:
        names = [c["name"] for c in curves]
        anchor_name = args.anchor or names[0]
        if anchor_name not in names:
            raise ValueError(f"--anchor {anchor_name!r} is not one of the curves: {', '.join(names)}")
        anchor = curves[names.index(anchor_name)]
        rows = {c["name"]: bd_table(anchor, c) for c in curves if c is not anchor}
        overlaps = {c["name"]: bd_overlap(anchor, c) for c in curves if c is not anchor}
        table = {"anchor": anchor_name, "bd_rate": rows, "overlap": overlaps, "min_overlap": MIN_OVERLAP}
        (output / "bd_rate.json").write_text(json.dumps(table, indent=2) + "\n")
        print()
        print(format_bd_table(rows, anchor_name, overlaps))
    return 0


def _load_preprocessor(model: str):
    from ..default_model import resolve_model
    from ..pipelines import RPPreprocessPipeline

    return RPPreprocessPipeline.from_pretrained(resolve_model(model))


def _adapter_choice(pipe, codec: str, asked: str | None):
    """``--adapter`` when given (the user asked for it), else the pipeline's policy (:meth:`adapter_for`)."""
    from ..adapters import AdapterChoice, normalize_adapter_name

    if asked:
        name = normalize_adapter_name(asked)
        if name not in pipe.available_adapters():
            raise ValueError(f"--adapter {asked!r} is not one of the model's: {', '.join(pipe.available_adapters())}")
        return AdapterChoice(name, True, f"{name} (asked for with --adapter)")
    return pipe.adapter_for(codec)


def _preprocess_fn(pipe, adapter: str | None):
    """Pre-process with ``adapter`` (``None``: the base model, adapters off), for these calls only."""

    def preprocess(images):
        return [pipe(image, adapter_name=adapter or []).images[0] for image in images]

    return preprocess


def _load_enhancer(args):
    import torch

    from ..pipelines.perceptual_decode import PerceptualDecodePipeline, enhance_images

    if not args.enhance_model:
        raise ValueError("--enhance needs --enhance-model (a PerceptualDecodePipeline folder or Hub id)")
    pipe = PerceptualDecodePipeline.from_pretrained(args.enhance_model)
    codec = args.codec.split(",")[0]

    sigma = args.enhance_sigma
    if sigma not in (None, "auto"):
        try:
            sigma = float(sigma)
        except ValueError:
            raise ValueError(f"--enhance-sigma must be a number or 'auto', got {sigma!r}") from None
    generator_seed = 0

    def enhance(images, quality):
        generator = torch.Generator().manual_seed(generator_seed)  # same noise for every quality: comparable curves
        return enhance_images(
            pipe, images, preset=args.enhance, codec=codec, quality=quality, sigma=sigma, generator=generator
        )

    return enhance
