"""``rp-diffusers evaluate``: R-D sweeps of real codecs (alone, after rp pre-processing, or enhanced)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    parser.add_argument(
        "--dataset",
        default=None,
        help="a Hub image dataset (or a local folder) read with datasets.load_dataset, instead of --images",
    )
    parser.add_argument("--split", default="train", help="the --dataset split")
    parser.add_argument("--image-column", default="image", help="the --dataset column that holds the images")
    parser.add_argument("--streaming", action="store_true", help="stream --dataset rather than download it whole")
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
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="measure only shard I of N (every N-th image from the I-th) and write its curves for `rp-diffusers "
        "merge`; under `accelerate launch` the processes shard and merge by themselves",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in --output (same command) from the images it had measured",
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
    from ..evaluation import evaluate, parse_metrics
    from ..evaluation.runs import PARTIAL_DIR, Journal, parse_shard, read_shards, shard_indices

    codecs = [c.strip() for c in args.codec.split(",") if c.strip()]
    if not codecs:
        raise ValueError(f"--codec names no codec ({args.codec!r}); give e.g. --codec jpeg or --codec jpeg,webp")
    repeated = sorted({c.lower() for c in codecs if [d.lower() for d in codecs].count(c.lower()) > 1})
    if repeated:
        raise ValueError(f"--codec lists {', '.join(repeated)} more than once; give each codec once")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a number of images >= 1, got {args.limit}; leave it out for all images")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    shard = parse_shard(args.shard) if args.shard else None
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    distributed = world > 1 and shard is None
    if args.fid and (shard or distributed or args.resume):
        raise ValueError(
            "--fid needs every decoded image in one process: run it without --shard, --resume or accelerate launch"
        )
    metrics = parse_metrics(args.metrics)
    output = Path(args.output)
    # a killed run's journal: --resume continues it and rewrites whatever of its results it had begun to write
    resuming = args.resume and (output / PARTIAL_DIR).is_dir()
    overwrite = args.overwrite or resuming
    earlier = [p.name for p in earlier_results(output)]
    if earlier and not overwrite and shard is None:  # refused before anything loads
        raise exists_error(output, earlier)
    images, image_names = _inputs(args)

    state = None
    if distributed:
        import torch
        from accelerate import PartialState

        # CPU processes (gloo) where there is no GPU, or where ACCELERATE_USE_CPU asks for them
        cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        state = PartialState(cpu=cpu)
        if state.num_processes != world:
            raise RuntimeError(
                f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es): launch with "
                "`accelerate launch --multi_gpu --num_processes N` (CPU: with ACCELERATE_USE_CPU=1)"
            )
        shard = (state.process_index, state.num_processes)
    # Pre-processing batches: same-size images, --batch-size at a time, fixed by the whole list. Each image is
    # pre-processed in the same batch whether the run is one process, a shard or resumed: the same numbers.
    groups = batch_groups([_image_size(image) for image in images], args.batch_size)
    target = output
    if shard is not None:
        kept = sorted(i for g in shard_indices(len(groups), *shard) for i in groups[g])  # whole batches
        if not kept:
            raise ValueError(
                f"shard {shard[0]}/{shard[1]} has no image: {len(images)} images make {len(groups)} batches of "
                f"--batch-size {args.batch_size} for {shard[1]} shards"
            )
        local = {i: k for k, i in enumerate(kept)}
        groups = [[local[i] for i in group] for group in groups if group[0] in local]
        run_images, run_names = [images[i] for i in kept], [image_names[i] for i in kept]
        if distributed:
            target = output / ".shards" / f"shard-{shard[0]}-of-{shard[1]}"
    else:
        run_images, run_names = images, image_names

    settings = {  # what a resumed run must share with the run it continues
        "codecs": codecs,
        "qualities": args.qualities,
        "metrics": metrics,
        "model": args.model,
        "adapter": args.adapter,
        "dtype": args.dtype,
        "enhance": [args.enhance, args.enhance_model, args.enhance_sigma],
        "images": image_names,
        "shard": list(shard) if shard else None,
    }
    Journal.check(target, args.resume, args.overwrite)  # before the model loads

    device = args.device or (str(state.device) if state is not None else None)
    pipe = load_preprocessor(args.model, device, args.dtype) if args.model else None
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
    enhancer = _load_enhancer(args, device) if args.enhance else None

    # 1. Plan every curve, and so every file this run writes, before measuring anything
    runs = []  # (curve name, codec, preprocess function, enhance function, codec step)
    for codec in codecs:
        plain = [(codec, None, None)]
        if pipe is not None:
            from ..adapters import choose_adapter

            choice = choose_adapter(pipe, codec, args.adapter)
            if state is None or state.is_main_process:
                print(f"{codec}: {'pre-processing with ' if choice.preprocess else ''}{choice.reason}")
            if not choice.codec_alone:
                adapter = choice.adapter
                label = choice.label if (pipe.available_adapters() or choice.codec_step is not None) else ""
                network = partial(_preprocess_fn, pipe, adapter, groups, run_images) if choice.preprocess else None
                plain.append((f"rp+{codec}" + (f"[{label}]" if label else ""), network, choice.codec_step))
        for name, preprocess, step in plain:
            runs.append((name, codec, preprocess, None, step))
            if enhancer is not None:
                runs.append((f"{name}+{args.enhance}", codec, preprocess, partial(enhancer, codec=codec), step))
    names = [name for name, *_ in runs]
    if len(names) > 1 and args.anchor and args.anchor not in names:
        raise ValueError(f"--anchor {args.anchor!r} is not one of the curves: {', '.join(names)}")
    files = {name: f"{name.replace('/', '_')}.json" for name in names}
    writes = [*files.values(), *(() if shard else ("rd.png", *(["bd_rate.json"] if len(runs) > 1 else [])))]
    if len({w.lower() for w in writes}) != len(writes):
        raise ValueError(f"two curves would write the same results file ({', '.join(files.values())})")
    clashing = [w for w in writes if (target / w).exists()]
    if clashing and not overwrite and not distributed:
        raise exists_error(target, clashing)

    # 2. Measure, image by image into the journal (target/.partial) that --resume continues from
    settings["codec_steps"] = {name: step.config() for name, _, _, _, step in runs if step is not None}
    journal = None if args.fid else Journal(target, settings, resume=args.resume, overwrite=args.overwrite)
    curves = []
    for name, codec, preprocess_for, enhance, step in runs:
        kwargs = dict(name=name, metrics=metrics, enhance=enhance, workers=args.workers, progress=not args.no_progress)
        kwargs["codec_step"] = step
        if journal is None:  # --fid: the set metrics need every decode at once
            preprocess = preprocess_for(range(len(run_images))) if preprocess_for else None
            result = evaluate(
                run_images, codec, args.qualities, preprocess=preprocess, set_metrics=("fid", "kid"), **kwargs
            )
            curves.append(result.to_dict())
            continue
        done = journal.done(name)
        todo = [i for i, image_name in enumerate(run_names) if image_name not in done]
        if not todo and not journal.pieces(name):
            todo = [len(run_names) - 1]  # killed between the last image and the curve's header: measure it again
        if todo:
            if done:
                print(f"{name}: resuming, {len(run_names) - len(todo)} of {len(run_names)} images already measured")
            result = evaluate(
                [run_images[i] for i in todo],
                codec,
                args.qualities,
                names=[run_names[i] for i in todo],
                preprocess=preprocess_for(todo) if preprocess_for else None,
                on_image=partial(journal.append, name),
                **kwargs,
            )
            journal.save_meta(name, result.to_dict())
        curves.append(journal.curve(name, run_names))

    # 3. Write: a shard's curves, or (one process, or the main process after the others) the run's results
    if shard is not None:
        target.mkdir(parents=True, exist_ok=True)
        for data in curves:
            data["meta"]["shard"] = {
                "index": shard[0],
                "count": shard[1],
                "curves": names,
                "anchor": args.anchor,
                "images": image_names,
            }
            write_json(target / files[data["name"]], data, True if distributed else overwrite)
        journal.remove()
        if not distributed:
            print(
                f"wrote shard {shard[0]}/{shard[1]} ({len(run_names)} images, {len(curves)} curves) to {target}/; "
                "join the shards with `rp-diffusers merge`"
            )
            return 0
        state.wait_for_everyone()
        if state.is_main_process:
            folders = sorted((output / ".shards").glob(f"shard-*-of-{shard[1]}"))
            curves, _ = read_shards(folders)
            print(f"merged {shard[1]} process shards ({len(images)} images)")
            write_results(output, curves, args.anchor, overwrite, earlier)
            shutil.rmtree(output / ".shards")
        state.wait_for_everyone()
        return 0
    write_results(output, curves, args.anchor, overwrite, earlier)
    if journal is not None:
        journal.remove()
    return 0


def write_results(output: Path, curves: list[dict], anchor: str | None, overwrite: bool, earlier: list[str]) -> None:
    """Write a run's results (each file atomically): one JSON per curve, ``rd.png`` and, for several curves,
    ``bd_rate.json`` against ``anchor`` (default: the first curve); then remove the earlier run's results files
    (``earlier``) this run did not rewrite. ``evaluate`` and ``merge`` write through here."""
    from ..evaluation import MIN_OVERLAP, bd_overlap, bd_table, format_bd_table, plot_rd

    names = [c["name"] for c in curves]
    files = {name: f"{name.replace('/', '_')}.json" for name in names}
    writes = [*files.values(), "rd.png", *(["bd_rate.json"] if len(curves) > 1 else [])]
    output.mkdir(parents=True, exist_ok=True)
    for data in curves:
        write_json(output / files[data["name"]], data, overwrite)
        _print_curve(data)
    with atomic_path(output / "rd.png", overwrite) as temporary:
        plot_rd(curves, temporary)
    plot = output / "rd.png"
    print(f"\nwrote {len(curves)} results files and {plot} to {output}/")
    if len(curves) > 1:
        anchor_name = anchor or names[0]
        reference = curves[names.index(anchor_name)]
        rows = {c["name"]: bd_table(reference, c) for c in curves if c is not reference}
        overlaps = {c["name"]: bd_overlap(reference, c) for c in curves if c is not reference}
        table = {"anchor": anchor_name, "bd_rate": rows, "overlap": overlaps, "min_overlap": MIN_OVERLAP}
        write_json(output / "bd_rate.json", table, overwrite)
        print()
        print(format_bd_table(rows, anchor_name, overlaps))
    stale = sorted(set(earlier) - set(writes))
    for name in stale:
        (output / name).unlink(missing_ok=True)
    if stale:
        print(f"removed the earlier run's {', '.join(stale)} (not part of this run)")


def _inputs(args) -> tuple[list, list[str]]:
    """The images to measure (paths, or decoded images from --dataset) and their record names, --limit applied.

    Names are the files' stems (``{stem}_{k}`` where two files share one; ``{index:06d}`` for dataset rows with
    no file name): distinct, so that shards and a resumed run join by name."""
    from ..evaluation import EXAMPLES_DIR, list_images
    from ..utils import load_image

    if args.dataset is not None:
        if args.images:
            raise ValueError("give --images or --dataset, not both")
        try:
            import datasets
        except ImportError:
            raise ImportError("--dataset needs the datasets package: pip install datasets") from None
        rows = datasets.load_dataset(args.dataset, split=args.split, streaming=args.streaming)
        if args.image_column not in (rows.column_names or [args.image_column]):
            raise ValueError(f"{args.dataset} has no column {args.image_column!r}; its columns: {rows.column_names}")
        rows = rows.cast_column(args.image_column, datasets.Image(decode=False))  # our decoder, not theirs
        images, stems = [], []
        for index, row in enumerate(rows):
            if args.limit is not None and index >= args.limit:
                break
            cell = row[args.image_column]
            data = cell.get("bytes") or Path(cell["path"]).read_bytes()
            images.append(load_image(data))
            stems.append(Path(cell["path"]).stem if cell.get("path") else f"{index:06d}")
        if not images:
            raise ValueError(f"{args.dataset} ({args.split}) holds no images")
    else:
        images = list_images(args.images or [EXAMPLES_DIR])
        if args.limit is not None:
            images = images[: args.limit]
        stems = [path.stem for path in images]
    counts = {stem: stems.count(stem) for stem in stems}
    names, seen = [], {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if counts[stem] == 1 else f"{stem}_{seen[stem]}")
    if len(set(names)) != len(names):
        names = [f"{index:06d}" for index in range(len(names))]
    return images, names


def exists_error(output: Path, names: list[str]) -> FileExistsError:
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


def batch_groups(sizes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """The pre-processing batches of images of these sizes: same-size images, ``batch_size`` at a time, in order
    of their first image (``[[0, 1], [2], ...]``). Shards take whole batches."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(index)
    groups = [m[k : k + batch_size] for m in by_size.values() for k in range(0, len(m), batch_size)]
    return sorted(groups, key=lambda group: group[0])


def _image_size(image) -> tuple[int, int]:
    """The (width, height) ``load_image`` will give, read from the header (EXIF orientation applied)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.size
    try:
        with Image.open(image) as opened:
            width, height = opened.size
            turned = opened.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap the sides
    except Exception:  # load_image explains an unreadable file when it gets to it
        return (0, 0)
    return (height, width) if turned else (width, height)


def _preprocess_fn(pipe, adapter: str | None, groups: list[list[int]], images: list, todo):
    """The pre-processing of images ``todo`` (positions in ``images``) with ``adapter`` (``None``: the base model,
    adapters off), for these calls only, batch by batch as ``groups`` says: a batch only partly in ``todo`` is
    run whole (its other images loaded again), so that every image comes out of the same batch as in a full run.
    """
    from ..utils import load_image

    position = {index: k for k, index in enumerate(todo)}

    def preprocess(loaded):
        outputs = [None] * len(position)
        for group in groups:
            if not any(index in position for index in group):
                continue
            batch = [loaded[position[i]] if i in position else load_image(images[i]) for i in group]
            done = pipe(batch, adapter_name=adapter or [], batch_size=len(batch)).images
            for index, image in zip(group, done):
                if index in position:
                    outputs[position[index]] = image
        return outputs

    return preprocess


def _load_enhancer(args, device=None):
    import torch

    from ..pipelines.perceptual_decode import enhance_images, load_pipeline

    pipe = load_pipeline(args.enhance_model or "default", device or getattr(args, "device", None))
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
