"""``rp-diffusers evaluate``: R-D sweeps of real codecs (alone, after rp pre-processing, or enhanced)."""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from ..default_model import DTYPES  # light: no torch at import
from ..utils.files import atomic_path, write_json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="R-D curves of codecs over a folder of images (results JSON, plot, BD-rate table)",
        description="Encode every image at every quality with real codecs, measure, and write CompressAI-style "
        "results JSON, an R-D plot and a BD-rate table. Without --images, runs on the bundled examples. An "
        "--output folder holding an earlier run's results is refused without --overwrite; with it, the earlier "
        "run's results files this run does not rewrite (results JSON, rd.png, bd_rate.json) are removed, so "
        "every result in the folder is from this run. Other files are never touched.",
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
    parser.add_argument(
        "--adapter", default=None, help="rate-perception adapter name (default: what the model's adapter_for picks)"
    )
    parser.add_argument("--device", default=None, help="torch device of --model (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call (same-size images batch)")
    parser.add_argument("--enhance", default=None, choices=["fast", "medium", "slow"], help="perceptual decoding")
    parser.add_argument(
        "--enhance-model",
        default=None,
        help="PerceptualDecodePipeline folder or Hub id (default: the small denoiser shipped with the package)",
    )
    parser.add_argument(
        "--enhance-sigma",
        default=None,
        help="noise level for --enhance: a number, 'auto' (searched per image), or unset (the calibration table)",
    )
    parser.add_argument("--anchor", default=None, help="curve name the BD-rate table is against (default: first)")
    parser.add_argument("--output", default="results", help="output folder (JSON per curve, rd.png, bd_rate.json)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: up to 4)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (N >= 1)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's results in --output (and remove those of its results this run does not write)",
    )
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
    from ..default_model import load_preprocessor
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

    codecs = [c.strip() for c in args.codec.split(",") if c.strip()]
    if not codecs:
        raise ValueError(f"--codec names no codec ({args.codec!r}); give e.g. --codec jpeg or --codec jpeg,webp")
    repeated = sorted({c.lower() for c in codecs if [d.lower() for d in codecs].count(c.lower()) > 1})
    if repeated:
        raise ValueError(f"--codec lists {', '.join(repeated)} more than once; give each codec once")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a number of images >= 1, got {args.limit}; leave it out for all images")
    images = list_images(args.images or [EXAMPLES_DIR])
    if args.limit is not None:
        images = images[: args.limit]
    metrics = parse_metrics(args.metrics)
    output = Path(args.output)
    earlier = [p.name for p in earlier_results(output)]
    if earlier and not args.overwrite:  # refused before any model loads
        raise _exists_error(output, earlier)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    pipe = load_preprocessor(args.model, args.device, args.dtype) if args.model else None
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
    enhancer = _load_enhancer(args) if args.enhance else None

    # 1. Plan every curve, and so every file this run writes, before measuring anything
    runs = []  # (curve name, codec, preprocess function, enhance function)
    for codec in codecs:
        plain = [(codec, None)]
        if pipe is not None:
            from ..adapters import choose_adapter

            choice = choose_adapter(pipe, codec, args.adapter)
            print(f"{codec}: {'pre-processing with ' if choice.preprocess else ''}{choice.reason}")
            if choice.preprocess:
                adapter = choice.adapter
                label = f"[{adapter}]" if adapter else ("[base]" if getattr(pipe.config, "adapters", None) else "")
                plain.append((f"rp+{codec}{label}", _preprocess_fn(pipe, adapter, args.batch_size)))
        for name, preprocess in plain:
            runs.append((name, codec, preprocess, None))
            if enhancer is not None:
                runs.append((f"{name}+{args.enhance}", codec, preprocess, partial(enhancer, codec=codec)))
    names = [name for name, *_ in runs]
    if len(names) > 1 and args.anchor and args.anchor not in names:
        raise ValueError(f"--anchor {args.anchor!r} is not one of the curves: {', '.join(names)}")
    files = {name: f"{name.replace('/', '_')}.json" for name in names}
    writes = [*files.values(), "rd.png", *(["bd_rate.json"] if len(runs) > 1 else [])]
    if len({w.lower() for w in writes}) != len(writes):
        raise ValueError(f"two curves would write the same results file ({', '.join(files.values())})")
    clashing = [w for w in writes if (output / w).exists()]
    if clashing and not args.overwrite:
        raise _exists_error(output, clashing)

    # 2. Measure
    curves = []
    for name, codec, preprocess, enhance in runs:
        result = evaluate(
            images,
            codec,
            args.qualities,
            name=name,
            metrics=metrics,
            preprocess=preprocess,
            enhance=enhance,
            set_metrics=("fid", "kid") if args.fid else (),
            workers=args.workers,
            progress=not args.no_progress,
        )
        curves.append(result.to_dict())

    # 3. Write (each file atomically), then remove the earlier run's results this run did not rewrite
    output.mkdir(parents=True, exist_ok=True)
    for data in curves:
        write_json(output / files[data["name"]], data, args.overwrite)
        _print_curve(data)
    with atomic_path(output / "rd.png", args.overwrite) as temporary:
        plot_rd(curves, temporary)
    plot = output / "rd.png"
    print(f"\nwrote {len(curves)} results files and {plot} to {output}/")
    if len(curves) > 1:
        anchor_name = args.anchor or names[0]
        anchor = curves[names.index(anchor_name)]
        rows = {c["name"]: bd_table(anchor, c) for c in curves if c is not anchor}
        overlaps = {c["name"]: bd_overlap(anchor, c) for c in curves if c is not anchor}
        table = {"anchor": anchor_name, "bd_rate": rows, "overlap": overlaps, "min_overlap": MIN_OVERLAP}
        write_json(output / "bd_rate.json", table, args.overwrite)
        print()
        print(format_bd_table(rows, anchor_name, overlaps))
    stale = sorted(set(earlier) - set(writes))
    for name in stale:
        (output / name).unlink(missing_ok=True)
    if stale:
        print(f"removed the earlier run's {', '.join(stale)} (not part of this run)")
    return 0


def _exists_error(output: Path, names: list[str]) -> FileExistsError:
    return FileExistsError(
        f"{output} already holds results ({', '.join(names)}); pass --overwrite to replace them (results of the "
        "earlier run that this run does not write are removed), or choose another --output"
    )


def earlier_results(folder: Path) -> list[Path]:
    """Files in ``folder`` that an earlier ``rp-diffusers evaluate`` wrote: ``rd.png``, ``bd_rate.json`` and its
    results JSON (recognised by their content: name, meta, results.bpp and per_image, saved under their name).
    Any other file, a CompressAI results file included, is the user's."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.name == "rd.png":
            found.append(path)
            continue
        if path.suffix != ".json":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if path.name == "bd_rate.json" and {"anchor", "bd_rate"} <= set(data):
            found.append(path)
        elif (
            {"name", "meta", "results", "per_image"} <= set(data)
            and isinstance(data["name"], str)
            and isinstance(data["results"], dict)
            and "bpp" in data["results"]
            and path.name == f"{data['name'].replace('/', '_')}.json"
        ):
            found.append(path)
    return found


def _preprocess_fn(pipe, adapter: str | None, batch_size: int = 4):
    """Pre-process with ``adapter`` (``None``: the base model, adapters off), for these calls only, in batches of
    same-size images (the pipeline groups them; outputs come back in input order)."""

    def preprocess(images):
        return pipe(list(images), adapter_name=adapter or [], batch_size=batch_size).images

    return preprocess


def _load_enhancer(args):
    import torch

    from ..pipelines.perceptual_decode import enhance_images, load_pipeline

    pipe = load_pipeline(args.enhance_model or "default", getattr(args, "device", None))
    pipe.set_progress_bar_config(disable=True)

    sigma = args.enhance_sigma
    if sigma not in (None, "auto"):
        try:
            sigma = float(sigma)
        except ValueError:
            raise ValueError(f"--enhance-sigma must be a number or 'auto', got {sigma!r}") from None
    generator_seed = 0

    def enhance(images, quality, codec):
        generator = torch.Generator().manual_seed(generator_seed)  # same noise for every quality: comparable curves
        return enhance_images(
            pipe, images, preset=args.enhance, codec=codec, quality=quality, sigma=sigma, generator=generator
        )

    return enhance
