"""Compact default model on Kodak: R-D curves and BD-rate of "model + codec" vs "codec alone", and speed.

For every codec and every configuration of the shipped model (the base without adapters, then each recorded
``rp_{codec}_lambda_{value}`` adapter), the images are pre-processed once, swept with the REAL codec through
``rp_diffusers.evaluation.evaluate`` and compared with the codec alone by ``bd_table`` (negative = fewer bits for
the same quality). Speed: seconds per 768x512 image of the pipeline, next to the time of one JPEG encode of the same
image in the same run (the ratio is the number to compare across machines), with the machine's load recorded.

    python benchmarks/compact_model.py --images ../shared/data/kodak --output benchmarks/results/compact_model.json

``--validation_table`` prints the held-out verdicts recorded in the model folder (the table of training/README.md
and of the model card), read from each adapter's rp_adapter.json and adapters/base_validation.json.
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from rp_diffusers.adapters import adapter_record, saved_adapter_infos, validation_table
from rp_diffusers.codecs import card_example, get_codec
from rp_diffusers.default_model import load_preprocessor, resolve_model
from rp_diffusers.evaluation import (
    bd_overlap,
    bd_table,
    evaluate,
    format_bd_table,
    list_images,
    plot_rd,
    usable_metrics,
)
from rp_diffusers.metrics import default_metrics
from rp_diffusers.pipelines import RPPreprocessPipeline
from rp_diffusers.utils.image import load_image

DEFAULT_QUALITIES = {"jpeg": "10,20,30,45,60,80", "webp": "10,20,35,50,65,80"}
BASE_TRAINED_ON = "(stage-1 restoration: MSE + 0.05 (1 - MS-SSIM))"  # the "trained on" cell of the base model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' (the shipped model) or a pipeline folder.")
    parser.add_argument("--images", default="../shared/data/kodak", help="Test images (Kodak: the reported set).")
    parser.add_argument("--max_images", type=int, default=None, help="Use only the first N images.")
    parser.add_argument("--codecs", nargs="+", default=["jpeg", "webp"], help="Real codecs to sweep.")
    parser.add_argument("--qualities", nargs="*", default=[], help="Per codec: codec=spec, e.g. jpeg=10,30,50,70.")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="Full-reference metrics (default: rp_diffusers.metrics.default_metrics(), those that run here).",
    )
    parser.add_argument("--all_adapters_on_all_codecs", action="store_true", help="Also cross codec/adapter pairs.")
    parser.add_argument("--speed_repeats", type=int, default=2, help="Timed runs per configuration (median kept).")
    parser.add_argument("--workers", type=int, default=None, help="Codec worker processes (default: evaluate's).")
    parser.add_argument("--output", default="benchmarks/results/compact_model.json", help="The JSON written.")
    parser.add_argument(
        "--speed_only",
        action="store_true",
        help="Re-measure only the speed (e.g. on an idle machine) into the existing --output JSON (and card).",
    )
    parser.add_argument(
        "--card_only",
        action="store_true",
        help="Only render the model card (--card_dir) from the existing --output JSON; measure nothing.",
    )
    parser.add_argument(
        "--validation_table",
        action="store_true",
        help="Only print the model folder's held-out verdicts as a markdown table (training/README.md's); measure "
        "nothing.",
    )
    parser.add_argument(
        "--card_dir",
        default=None,
        help="Also render model_card.md with these results into DIR/README.md (and copy the R-D plots there).",
    )
    return parser.parse_args(argv)


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def measure_speed(pipe: RPPreprocessPipeline, image, configs: list[str | None], repeats: int) -> dict:
    """Median seconds per image of each configuration, and of one JPEG encode of the same image (the baseline)."""
    codec = get_codec("jpeg")
    rows = {}
    start = time.perf_counter()
    for _ in range(repeats):
        codec.run(image, quality=50)
    jpeg_seconds = (time.perf_counter() - start) / repeats

    def timed_row():
        pipe(image)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            pipe(image)
            times.append(time.perf_counter() - start)
        return {"seconds": median(times), "ratio_to_jpeg_encode": median(times) / jpeg_seconds}

    for config in configs:
        select(pipe, config)
        rows[config or "base"] = timed_row()
        if config is not None:  # the adapter merged into the weights (fuse_lora): the base's cost
            pipe.fuse_lora(adapter_names=[config])
            rows[f"{config} (fused)"] = timed_row()
            pipe.unfuse_lora()
    return {
        "image_size": list(image.size),
        "jpeg_encode_seconds": jpeg_seconds,
        "configs": rows,
        "loadavg_1_5_15": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def select(pipe: RPPreprocessPipeline, config: str | None) -> None:
    if config is None:
        pipe.disable_adapters()
    else:
        pipe.enable_adapters()
        pipe.set_adapters([config])


def main(argv=None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    qualities = dict(DEFAULT_QUALITIES)
    qualities.update(dict(spec.split("=", 1) for spec in args.qualities))
    folder = resolve_model(args.model)
    if args.validation_table:
        print(validation_table(folder, BASE_TRAINED_ON))
        return 0
    if args.card_only:
        if not args.card_dir:
            raise SystemExit("--card_only needs --card_dir")
        write_model_card(json.loads(output.read_text()), Path(folder), Path(args.card_dir), output.parent)
        return 0
    pipe = load_preprocessor(folder, "cpu")
    pipe.set_progress_bar_config(disable=True)
    adapters = pipe.available_adapters()
    paths = list_images(args.images)[: args.max_images]
    originals = [load_image(p) for p in paths]
    sizes = {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in Path(folder).rglob("*")
        if p.suffix == ".safetensors"
    }

    # 1. Speed on a 768x512 image (the first landscape image)
    sample = next((im for im in originals if im.size == (768, 512)), originals[0])
    speed = measure_speed(pipe, sample, [None, *list(adapters)[:1]], args.speed_repeats)
    print(json.dumps(speed, indent=2))
    if args.speed_only:
        report = json.loads(output.read_text())
        report["speed"] = speed
        output.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        print(f"updated the speed in {output}")
        if args.card_dir:
            write_model_card(report, Path(folder), Path(args.card_dir), output.parent)
        return 0

    # 2. Pre-process every image once per configuration (metrics probed first: missing tools warned once)
    args.metrics = usable_metrics(args.metrics or default_metrics())
    configs = [None, *adapters]
    preprocessed = {}
    for config in configs:
        select(pipe, config)
        start = time.perf_counter()
        preprocessed[config or "base"] = pipe(originals).images
        print(f"{config or 'base'}: {len(originals)} images pre-processed in {time.perf_counter() - start:.1f} s")

    # 3. Sweep each codec: codec alone, base + codec, adapter + codec
    report = {
        "model": folder,
        "images": args.images,
        "num_images": len(originals),
        "metrics": args.metrics,
        "perceptual_metrics_note": (
            "the model was trained on (1 - MS-SSIM) + MSE: SSIMULACRA2, Butteraugli, VMAF and VMAF-NEG are metrics "
            "it was not trained on; LPIPS/DISTS are measured only where their weights load"
        ),
        "sizes_bytes": sizes,
        "total_safetensors_bytes": sum(sizes.values()),
        "speed": speed,
        "adapters": adapters,
        "codecs": {},
    }
    for codec in args.codecs:
        runs = {
            "codec alone": evaluate(paths, codec, qualities.get(codec), metrics=args.metrics, workers=args.workers)
        }
        for config in configs:
            record = adapters.get(config, {}) if config else {}
            if config and record.get("codec") != codec and not args.all_adapters_on_all_codecs:
                continue
            images = preprocessed[config or "base"]
            runs[f"{config or 'base'} + {codec}"] = evaluate(
                paths,
                codec,
                qualities.get(codec),
                metrics=args.metrics,
                preprocess=lambda _, images=images: images,
                name=f"{config or 'base'} + {codec}",
                workers=args.workers,
            )
        dicts = {name: run.to_dict() for name, run in runs.items()}
        anchor = dicts["codec alone"]
        table = {name: bd_table(anchor, d) for name, d in dicts.items() if name != "codec alone"}
        overlaps = {name: bd_overlap(anchor, d) for name, d in dicts.items() if name != "codec alone"}
        print(format_bd_table(table, f"{codec} alone", overlaps))
        plot = output.with_name(f"{output.stem}_{codec}_rd.png")
        plot_rd(list(dicts.values()), plot)
        report["codecs"][codec] = {
            "bd_rate_percent": table,
            "overlap": overlaps,
            "plot": plot.name,
            "results": dicts,
        }
    output.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    print(f"wrote {output}")
    if args.card_dir:
        write_model_card(report, Path(folder), Path(args.card_dir), output.parent)
    return 0


DEADZONE_METRICS = ("psnr-rgb", "ms-ssim-rgb", "ssimulacra2", "butteraugli", "butteraugli-3norm", "vmaf", "vmaf-neg")


def write_model_card(report: dict, folder: Path, card_dir: Path, plots_dir: Path) -> Path:
    """Render the project's ``model_card.md`` for the compact model with the measured numbers."""
    from rp_diffusers.utils.hub import render_model_card

    card_dir.mkdir(parents=True, exist_ok=True)
    bd_rows, plots = {}, []
    for codec, entry in report["codecs"].items():
        for curve, row in entry["bd_rate_percent"].items():
            bd_rows[curve] = {metric: round(value, 2) for metric, value in row.items()}
        shutil.copy(plots_dir / entry["plot"], card_dir / f"rd_{codec}.png")
        plots.append(f"rd_{codec}.png")
    stage1 = folder / "stage1_metrics.json"
    stage1 = json.loads(stage1.read_text()) if stage1.is_file() else {}
    speed = report["speed"]
    sizes = report["sizes_bytes"]
    records = {name: adapter_record(name, info) for name, info in saved_adapter_infos(folder).items()}
    adapters = [
        {"name": name, "codec": r["codec"], "lam": r["lambda"], "rank": r["rank"]} for name, r in records.items()
    ]
    deadzone, steps = "", json.loads((folder / "model_index.json").read_text()).get("codec_steps") or {}
    jpeg_step = steps.get("jpeg", {})
    step_wins = bool((jpeg_step.get("validation") or {}).get("wins"))
    kodak_step = plots_dir / "jpeg_deadzone_kodak.json"  # written by benchmarks/jpeg_deadzone.py
    if step_wins and kodak_step.is_file():
        measured = json.loads(kodak_step.read_text())
        name = next(n for n in measured["bd_rate_percent"] if not n.startswith("base network"))
        run = f"separate run, q {measured['qualities'][0]}-{measured['qualities'][-1]}"
        bd_rows[f"{name} (no network) + jpeg, {run}"] = {
            m: round(v, 2) for m, v in measured["bd_rate_percent"][name].items()
        }
        rates, overlap = measured["bd_rate_percent"][name], measured["overlap"][name]
        tail = jpeg_step.get("tail_threshold")
        tail = (
            f", tail {tail:g}: each block's last nonzero coefficients under {tail:g} steps are coded as zero too"
            if tail is not None
            else ""
        )
        cells = " | ".join(
            f"{rates[m]:+.2f}%" + ("*" if overlap[m] < 0.75 else "") for m in DEADZONE_METRICS if m in rates
        )
        deadzone = (
            "\n\n**Before JPEG: the JPEG dead zone, no network** (`rp_diffusers.codecs.prequantize.JPEGDeadzone`, "
            f"threshold {jpeg_step['threshold']:g}{tail}, chosen on val-set14 by `benchmarks/jpeg_deadzone.py`). At the quality "
            "the file is written at, each luma AC coefficient that libjpeg would round up to +-1 from under "
            f"{jpeg_step['threshold']:g} quantisation steps is moved below 0.5 steps on the pixels, so the unmodified "
            "encoder codes it as zero (what mozjpeg's trellis or an HEVC encoder's RDOQ decide inside the encoder). "
            "It is not a network: it is the main move of per-image pre-editing through DiffJPEG (`benchmarks/"
            "preedit_anatomy.py`), which a network that does not know the quality and the 8x8 grid does not learn. "
            f"Kodak (24 images, reported only; qualities {measured['qualities']}), BD-rate against JPEG alone, `*` = "
            "curves overlapping under 75 %:\n\n"
            f"| {' | '.join(DEADZONE_METRICS)} |\n| {' | '.join('---' for _ in DEADZONE_METRICS)} |\n| {cells} |\n\n"
            f"It costs {measured['seconds']['step_per_image_first_image']:.2f} s per "
            f"{measured['seconds']['first_image_size'][0]}x{measured['seconds']['first_image_size'][1]} image on "
            f"an idle core of this CPU (NumPy; {measured['seconds']['step_and_encode_median']:.2f} s median for step "
            "+ encode in the benchmark's busy workers), against a few milliseconds for the JPEG encode itself. "
            "The base network before it does not help (val-set14 and Kodak: `benchmarks/results/jpeg_deadzone_*.json`)."
        )
        if (plots_dir / "default_crops_jpeg.png").is_file():
            shutil.copy(plots_dir / "default_crops_jpeg.png", card_dir / "default_crops_jpeg.png")
            deadzone += (
                "\n\n![original, JPEG alone and JPEG after the dead zone at about the same bpp, Kodak kodim23]"
                "(default_crops_jpeg.png)"
            )
    crops = ""
    if (plots_dir / "default_crops_webp.png").is_file():  # written by benchmarks/default_crops.py
        shutil.copy(plots_dir / "default_crops_webp.png", card_dir / "default_crops_webp.png")
        crops = (
            "\n\n![original, WebP alone and base + WebP at about the same bpp, Kodak kodim23](default_crops_webp.png)"
            "\n\nThe gain is small (about 1-2 % of the bits): the two WebP crops are hard to tell apart."
        )
    size_rows = "\n".join(f"| `{name}` | {size / 1e3:.0f} KB |" for name, size in sorted(sizes.items()))
    summary = (
        "**What it does by default.** `pipe.adapter_for(codec)` (followed by `compress`, `evaluate --model "
        "default` and the Space) runs, per codec, only what won on held-out photographs (val-set14, never Kodak) "
        "in every perceptual metric it was not trained on (SSIMULACRA2, Butteraugli 3-norm, VMAF-NEG): today that "
        "is **the base model before WebP**, "
        + (
            "**the JPEG dead zone (no network) before JPEG**, and **nothing before AVIF, HEIC, HEVC or VVC**"
            if step_wins
            else "and **nothing before JPEG, AVIF, HEIC, HEVC or VVC**"
        )
        + " (the codec runs alone and the command says why). The adapters below all lost there; they load and run "
        "when asked for by name (`--adapter`, `adapter_name=`).\n\n"
        f"{validation_table(folder, BASE_TRAINED_ON)}{crops}{deadzone}\n\n"
        "**rp-compact** is the small `RPPreprocessPipeline` that ships inside the `rp-diffusers` package "
        "(`rp_diffusers/assets/default_model`): the offline default of `rp-diffusers compress`, "
        "`evaluate --model default` and the Space. It was trained from scratch on a 2-core CPU with the project's "
        "own two-stage scripts. **It is not the SD 2.1 / SD-Turbo model of the paper and must not be presented as "
        "one**: no Stable Diffusion weight was used or distilled, and it cannot hallucinate texture the way a "
        "diffusion prior does. It is a mild, codec-aware pre-filter. Offline it loads with "
        '`RPPreprocessPipeline.from_pretrained(rp_diffusers.default_model.resolve_model("default"))`; the '
        "Hub id below is where it is meant to be published.\n\n"
        f"Size: {report['total_safetensors_bytes'] / 1e6:.2f} MB of safetensors (float32).\n\n"
        f"| file | size |\n| --- | --- |\n{size_rows}\n\n"
        f"Speed on this machine (2-core CPU, {speed['torch_threads']} torch threads, load average "
        f"{speed['loadavg_1_5_15'][0]:.1f}) per {speed['image_size'][0]}x{speed['image_size'][1]} image: "
        + "; ".join(f"{name} {row['seconds']:.2f} s" for name, row in speed["configs"].items())
        + f". One JPEG encode of the same image took {1e3 * speed['jpeg_encode_seconds']:.1f} ms."
    )
    training = (
        "Data: `train-sunhays80` (80 JPEG photographs) only, random crops. Validation: `val-set14`. Kodak is used "
        "only for the results above; nothing was tuned on it.\n\n"
        "Stage 1 (adapted, no SD teacher offline): the autoencoder is diffusers' `AutoencoderTiny` at factor 1, set "
        "to an exact identity (latents = pixels scaled to [-0.1, 0.1], `scaling_factor` 10; not trained). The UNet "
        "(`UNet2DConditionModel`, block_out_channels (8, 16, 32, 32), attention only in the mid block at 1/8 "
        "resolution) is a residual one-step restorer x0 = z + UNet(z) (last conv initialised at zero) trained on "
        "crops with light Gaussian noise (sigma <= 0.02) against the clean crop, loss MSE + 0.05 (1 - MS-SSIM)"
        + (
            f": {stage1.get('unet_steps')} steps; on val-set14 the base reaches {stage1.get('map_psnr', 0):.2f} dB "
            f"PSNR / {stage1.get('map_ms_ssim', 0):.4f} MS-SSIM against its input."
            if stage1
            else "."
        )
        + "\n\nStage 2: one rank-4 LoRA per (codec, lambda) on the UNet's attention projections and resnet convs, "
        "trained through the codec's differentiable surrogate (DiffJPEG for jpeg, the fitted learned proxy for "
        "webp) with loss (1 - MS-SSIM) + MSE + lambda x s x bpp, where s is the codec's own R-D slope at the drawn "
        "quality (`--rate_weighting codec_slope`): lambda = 1 is the codec's own trade-off, 2 favours fewer bits.\n\n"
        "Validation: `training/validate_adapters.py` on val-set14 writes each verdict into the adapter's "
        "`rp_adapter.json` and the base model's into `adapters/base_validation.json`; the default policy reads "
        "nothing else.\n\n"
        "The exact commands are in `training/compact_recipe.sh` (documented in `training/README.md`); "
        "`tests/test_compact_model.py` runs a shortened version of them."
    )
    limits = (
        (
            "- Before JPEG no network of this model wins in SSIMULACRA2, Butteraugli and VMAF-NEG at once: the JPEG "
            "gain is the dead zone's alone, a step computed from the quality's quantisation table, not learned. It "
            "assumes libjpeg's standard tables scaled by quality (Pillow, libjpeg-turbo); an encoder with its own "
            "tables or its own trellis (mozjpeg, jpegli) gets a mismatched or redundant step. It loses in plain VMAF "
            "(Kodak above).\n"
            if step_wins
            else "- Before JPEG nothing of this model wins in SSIMULACRA2, Butteraugli and VMAF-NEG at once, so JPEG "
            "runs alone by default. Per-image pre-editing through DiffJPEG (`benchmarks/preedit_ceiling.py`) loses "
            "13-18% in VMAF-NEG with SSIMULACRA2 or MSE objectives, and wins in all three with SSIMULACRA2 + 3 x "
            "(1 - VIF) (val-set14); no adapter of this model was trained on that objective.\n"
        )
        + "- The adapters were trained on (1 - MS-SSIM) + MSE. SSIMULACRA2, Butteraugli (max and 3-norm), VMAF and VMAF-NEG "
        "are metrics it was NOT trained on: they are the independent judges, and where they show positive BD-rates "
        "the model costs bits. LPIPS/DISTS are reported only where their weights could be downloaded.\n"
        "- The model is tiny and trained for minutes: its gains over the codec alone are a few percent. The "
        "adapters trade PSNR for MS-SSIM (they were trained on 1 - MS-SSIM): a positive PSNR BD-rate above means "
        "more bits for the same PSNR. Lambda 2 also flattens the top of the curve (it caps the highest quality "
        "reachable), so use lambda 1 or the base above about 1.2 bpp.\n"
        "- It cannot add detail: at low rates it does not give the perceptual gains of the SD-based model.\n"
        "- Trained on 80 photographs; behaviour on graphics, text or medical images is unknown."
    )
    card = render_model_card(
        "rp-diffusers/rp-compact",
        adapters=adapters,
        bd_rows=bd_rows,
        rd_plot=plots[0] if plots else None,
        summary=summary,
        training=training,
        limits=limits,
        results_intro=(
            f'BD-rate (%) of "model + codec" against "codec alone" on Kodak ({report["num_images"]} images), '
            "Akima interpolation over the qualities swept; negative = fewer bits for the same quality. R-D plots: "
            + ", ".join(f"`{p}`" for p in plots)
            + "."
        ),
        **card_example(adapters[0]["codec"] if adapters else "jpeg"),
    )
    path = card_dir / "README.md"
    card.save(str(path))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
