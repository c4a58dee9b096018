"""Compact default model on Kodak: R-D curves and BD-rate of "model + codec" vs "codec alone", and speed.

For every codec and every configuration of the shipped model (the base without adapters, then each recorded
``rp_{codec}_lambda_{value}`` adapter), the images are pre-processed once, swept with the REAL codec through
``rp_diffusers.evaluation.evaluate`` and compared with the codec alone by ``bd_table`` (negative = fewer bits for
the same quality). Speed: seconds per 768x512 image of the pipeline, next to the time of one JPEG encode of the same
image in the same run (the ratio is the number to compare across machines), with the machine's load recorded.

    python benchmarks/compact_model.py --images ../shared/data/kodak --output benchmarks/results/compact_model.json
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from rp_diffusers.codecs import get_codec
from rp_diffusers.default_model import resolve_model
from rp_diffusers.evaluation import bd_table, evaluate, format_bd_table, list_images, plot_rd
from rp_diffusers.pipelines import RPPreprocessPipeline
from rp_diffusers.utils.image import load_image

DEFAULT_QUALITIES = {"jpeg": "10,20,30,45,60,80", "webp": "10,20,35,50,65,80"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' (the shipped model) or a pipeline folder.")
    parser.add_argument("--images", default="../shared/data/kodak", help="Test images (Kodak: the reported set).")
    parser.add_argument("--max_images", type=int, default=None, help="Use only the first N images.")
    parser.add_argument("--codecs", nargs="+", default=["jpeg", "webp"], help="Real codecs to sweep.")
    parser.add_argument("--qualities", nargs="*", default=[], help="Per codec: codec=spec, e.g. jpeg=10,30,50,70.")
    parser.add_argument("--metrics", nargs="+", default=["psnr", "ms_ssim"], help="Full-reference metrics.")
    parser.add_argument("--all_adapters_on_all_codecs", action="store_true", help="Also cross codec/adapter pairs.")
    parser.add_argument("--speed_repeats", type=int, default=2, help="Timed runs per configuration (median kept).")
    parser.add_argument("--workers", type=int, default=None, help="Codec worker processes (default: evaluate's).")
    parser.add_argument("--output", default="benchmarks/results/compact_model.json", help="The JSON written.")
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
    for config in configs:
        select(pipe, config)
        pipe(image)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            pipe(image)
            times.append(time.perf_counter() - start)
        rows[config or "base"] = {"seconds": median(times), "ratio_to_jpeg_encode": median(times) / jpeg_seconds}
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
    pipe = RPPreprocessPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    adapters = pipe.config.adapters
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

    # 2. Pre-process every image once per configuration
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
        "perceptual_metrics_note": "LPIPS/DISTS pretrained weights are not available offline: not measured",
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
        print(format_bd_table(table, f"{codec} alone"))
        plot = output.with_name(f"{output.stem}_{codec}_rd.png")
        plot_rd(list(dicts.values()), plot)
        report["codecs"][codec] = {"bd_rate_percent": table, "plot": plot.name, "results": dicts}
    output.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
