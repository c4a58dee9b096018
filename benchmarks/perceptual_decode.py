"""Is training-free perceptual decoding (Zhu et al. 2025, arXiv:2506.16102) a win? Codec alone vs codec + enhance.

For each codec, on the test photographs (Kodak), with real files and real decoders: the codec alone, and the codec
followed by ``PerceptualDecodePipeline`` at each preset with the noise level of the paper's rule (the model's own
calibration, computed on val-set14 by ``rp-diffusers calibrate-decode``, never on Kodak). It reports

- BD-rate (%) of each enhanced curve against the codec alone in every installed metric (negative: fewer bits for
  the same quality), with the curves' overlap;
- the measured ratio MSE(enhanced, source) / MSE(decoded, source) per quality (the rule's target is 2);
- decode time per image on this machine, as seconds and as a multiple of the codec's own decode;
- R-D plots and a side-by-side crop (source | codec | enhanced);
- with ``--preprocessor`` (e.g. ``default``): both ends together, in the same run. The pre-processor's choice for
  the codec (``rp_diffusers.adapters.choose_adapter``, as ``rp-diffusers evaluate --model`` makes it: an adapter,
  the base model, a codec step such as the JPEG dead zone, or the codec alone) gives a curve ``rp+CODEC[...]``, and
  the same followed by each preset ``rp+CODEC[...]+PRESET``; their BD-rates are against the codec alone and,
  for the enhanced ones, against ``rp+CODEC[...]`` (what the enhancement adds on top of the pre-processor).

Examples (the README's runs: 33 and 11 minutes on 2 CPU cores with 12 images):
    python benchmarks/perceptual_decode.py --images ../shared/data/kodak --limit 12 --codecs jpeg,hevc \\
        --qualities jpeg=10,20,35,55 hevc=13,17,21,25 --presets jpeg=fast,medium hevc=fast,medium
    python benchmarks/perceptual_decode.py --limit 12 --codecs jpeg --presets jpeg=fast --preprocessor default \\
        --output benchmarks/results/perceptual_decode_both_ends.json
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rp_diffusers.evaluation import bd_overlap, bd_table, evaluate, format_bd_table, list_images, plot_rd
from rp_diffusers.pipelines.perceptual_decode import enhance_images, load_pipeline
from rp_diffusers.utils.files import write_json

DEFAULT_QUALITIES = {"jpeg": "10,20,35,55", "hevc": "13,17,21,25", "vvc": "43,38,33,28", "webp": "10,25,45,70"}


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="../shared/data/kodak", help="test photographs")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--codecs", default="jpeg,hevc")
    parser.add_argument("--qualities", nargs="*", default=[], help="CODEC=Q1,Q2,... (default: 4 per codec)")
    parser.add_argument("--presets", nargs="*", default=[], help="CODEC=P1,P2 (default: fast,medium for every codec)")
    parser.add_argument("--model", default="default", help="PerceptualDecodePipeline folder or Hub id")
    parser.add_argument(
        "--preprocessor",
        default=None,
        help="RPPreprocessPipeline folder, Hub id or 'default': also run pre-processor + codec (+ each preset)",
    )
    parser.add_argument("--metrics", default=None, help="comma-separated metrics (default: every installed one)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the model")
    parser.add_argument("--crop", default="kodim03:256,128,192", help="IMAGE:left,top,size for the crop figure")
    parser.add_argument("--output", default="benchmarks/results/perceptual_decode_kodak.json")
    args = parser.parse_args(input_args)
    args.qualities = dict(item.split("=", 1) for item in args.qualities)
    args.presets = {k: v.split(",") for k, v in (item.split("=", 1) for item in args.presets)}
    return args


def mean_mse(result) -> dict[float, float]:
    """Per quality, the mean over images of the MSE on [0, 1] pixels (from each image's RGB PSNR)."""
    by_quality: dict[float, list[float]] = {}
    for record in result.records:
        by_quality.setdefault(record["quality"], []).append(10 ** (-record["psnr-rgb"] / 10))
    return {q: float(np.mean(v)) for q, v in by_quality.items()}


def crop_figure(paths, codec_name, quality, pipe, preset, crop_spec, output: Path, front=None) -> Path | None:
    """source | codec | enhanced, one crop side by side, labelled, upscaled 2x with nearest neighbour; with
    ``front`` (a :func:`both_ends` choice that is not the codec alone) also | pre-processor + codec | + enhanced."""
    from PIL import ImageDraw

    from rp_diffusers.codecs import get_codec

    name, box = crop_spec.split(":")
    left, top, size = (int(v) for v in box.split(","))
    path = next((p for p in paths if p.stem == name), None)
    if path is None:
        return None
    source = Image.open(path).convert("RGB")

    def enhance(decoded):
        generator = torch.Generator().manual_seed(0)
        return enhance_images(pipe, [decoded], preset, codec=codec_name, quality=quality, generator=generator)[0]

    coded = get_codec(codec_name).run(source, quality)
    tiles = [source, coded.reconstruction, enhance(coded.reconstruction)]
    labels = ["source", f"{codec_name} q{quality:g}: {coded.bpp:.3f} bpp", f"+ enhance ({preset}): same bits"]
    if front is not None and front["name"] is not None:
        from rp_diffusers.codecs.prequantize import with_codec_step

        encoded = front["preprocess"]([source])[0] if front["preprocess"] else source
        both = with_codec_step(get_codec(codec_name), front["codec_step"]).run(encoded, quality)
        tiles += [both.reconstruction, enhance(both.reconstruction)]
        labels += [f"{front['name']} q{quality:g}: {both.bpp:.3f} bpp", f"+ enhance ({preset}): same bits"]
    scale = 2
    figure = Image.new("RGB", (len(tiles) * (size * scale + 10) - 10, size * scale + 28), "white")
    draw = ImageDraw.Draw(figure)
    for index, (tile, label) in enumerate(zip(tiles, labels)):
        part = tile.crop((left, top, left + size, top + size)).resize((size * scale, size * scale), Image.NEAREST)
        x = index * (size * scale + 10)
        figure.paste(part, (x, 28))
        draw.text((x + 4, 6), label, fill="black")
    figure.save(output)
    return output


def both_ends(preprocessor, codec: str) -> dict:
    """The pre-processor's front end for ``codec``, chosen as ``rp-diffusers evaluate --model`` chooses it.

    Returns ``name`` (the curve, ``None`` where the choice is the codec alone, whose curve is already run),
    ``preprocess`` (images -> images, or ``None`` for a codec step without a network), ``codec_step`` and ``reason``.
    """
    from rp_diffusers.adapters import choose_adapter

    choice = choose_adapter(preprocessor, codec, None)
    print(f"{codec}: pre-processor: {choice.reason}")
    if choice.codec_alone:
        return {"name": None, "preprocess": None, "codec_step": None, "reason": choice.reason}
    label = choice.label if (preprocessor.available_adapters() or choice.codec_step is not None) else ""
    preprocess = None
    if choice.preprocess:
        done: dict[tuple, Image.Image] = {}  # every curve of this front end encodes the same pre-processed images

        def preprocess(images, adapter=choice.adapter):
            outputs = []
            for image in images:
                key = (image.size, hashlib.sha256(image.tobytes()).hexdigest())
                if key not in done:
                    done[key] = preprocessor([image], adapter_name=adapter or [], batch_size=1).images[0]
                outputs.append(done[key])
            return outputs

    name = f"rp+{codec}" + (f"[{label}]" if label else "")
    return {"name": name, "preprocess": preprocess, "codec_step": choice.codec_step, "reason": choice.reason}


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    paths = list_images(args.images)[: args.limit]
    if not paths:
        raise SystemExit(f"no images in {args.images}: the test photographs are needed (see ../shared/data)")
    pipe = load_pipeline(args.model, "cpu")
    pipe.set_progress_bar_config(disable=True)
    metrics = args.metrics.split(",") if args.metrics else None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "images": f"{Path(args.images).name}: {len(paths)} images ({paths[0].stem}..{paths[-1].stem})",
        "model": args.model,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
        },
        "codecs": {},
    }
    preprocessor = None
    if args.preprocessor:
        from rp_diffusers.default_model import load_preprocessor

        preprocessor = load_preprocessor(args.preprocessor, "cpu")
        preprocessor.set_progress_bar_config(disable=True)
        report["preprocessor"] = args.preprocessor
    fronts_of = {}
    for codec in args.codecs.split(","):
        qualities = [float(q) for q in args.qualities.get(codec, DEFAULT_QUALITIES[codec]).split(",")]
        curves, seconds = {}, {}
        alone = evaluate(paths, codec, qualities, metrics=metrics, workers=args.workers, name=codec)
        curves[codec] = alone
        front = both_ends(preprocessor, codec) if preprocessor is not None else None
        fronts_of[codec] = front
        fronts = [(codec, None, None)]
        bases = {}  # enhanced curve -> the curve of the decode it starts from
        if front is not None and front["name"] is not None:
            curves[front["name"]] = evaluate(
                paths,
                codec,
                qualities,
                metrics=metrics,
                workers=args.workers,
                name=front["name"],
                preprocess=front["preprocess"],
                codec_step=front["codec_step"],
            )
            fronts.append((front["name"], front["preprocess"], front["codec_step"]))
        for (base, preprocess, codec_step), preset in (
            (f, p) for f in fronts for p in args.presets.get(codec, ["fast", "medium"])
        ):
            timing = []

            def enhance(images, quality, preset=preset, timing=timing, codec=codec):
                start = time.perf_counter()
                out = enhance_images(
                    pipe, images, preset, codec=codec, quality=quality, generator=torch.Generator().manual_seed(0)
                )
                timing.append((time.perf_counter() - start) / len(images))
                return out

            name = f"{base}+{preset}"
            bases[name] = base
            curves[name] = evaluate(
                paths,
                codec,
                qualities,
                metrics=metrics,
                enhance=enhance,
                workers=args.workers,
                name=name,
                preprocess=preprocess,
                codec_step=codec_step,
            )
            seconds[name] = float(np.mean(timing))
        data = {name: result.to_dict() for name, result in curves.items()}
        anchor = data[codec]
        codec_decode = float(
            np.mean([r["decoding_time"] for r in alone.records if "decoding_time" in r] or [math.nan])
        )
        entry = {"qualities": qualities, "curves": data, "bd_rate": {}, "overlap": {}, "mse_ratio": {}, "seconds": {}}
        if front is not None:
            entry["preprocessor"] = {"curve": front["name"], "choice": front["reason"]}
        for name in data:
            if name == codec:
                continue
            entry["bd_rate"][name] = bd_table(anchor, data[name])
            entry["overlap"][name] = bd_overlap(anchor, data[name])
            if name not in bases:  # the pre-processor's curve: no enhancement to time
                continue
            # the MSE ratio of the rule: against the decode the enhancement starts from (same front end)
            base = bases[name]
            enhanced_mse, decoded_mse = mean_mse(curves[name]), mean_mse(curves[base])
            entry["mse_ratio"][name] = [enhanced_mse[q] / decoded_mse[q] for q in qualities]
            if base != codec:
                entry.setdefault("bd_rate_vs_preprocessed", {})[name] = bd_table(data[base], data[name])
                entry.setdefault("overlap_vs_preprocessed", {})[name] = bd_overlap(data[base], data[name])
            entry["seconds"][name] = {
                "enhance_per_image": seconds[name],
                "codec_decode_per_image": codec_decode,
                "ratio": seconds[name] / codec_decode if codec_decode else math.nan,
            }
        print(f"\n{codec}: BD-rate (%) against {codec} alone, {report['images']}")
        print(format_bd_table(entry["bd_rate"], codec, entry["overlap"]))
        if entry.get("bd_rate_vs_preprocessed"):
            print(f"\n{codec}: BD-rate (%) of the enhancement on top of {front['name']}")
            print(format_bd_table(entry["bd_rate_vs_preprocessed"], front["name"], entry["overlap_vs_preprocessed"]))
        for name, ratios in entry["mse_ratio"].items():
            cost = entry["seconds"][name]
            print(
                f"{name}: MSE ratio per quality {', '.join(f'{r:.2f}' for r in ratios)} (rule: 2); "
                f"{cost['enhance_per_image']:.2f} s per image ({cost['ratio']:.0f}x the codec's decode)"
            )
        plot = plot_rd(list(data.values()), output.with_name(f"{output.stem}_{codec}_rd.png"))
        entry["plot"] = plot.name
        report["codecs"][codec] = entry
        write_json(output, report)
    first = args.codecs.split(",")[0]
    preset = args.presets.get(first, ["fast"])[0]
    quality = float(args.qualities.get(first, DEFAULT_QUALITIES[first]).split(",")[0])
    figure = crop_figure(
        paths, first, quality, pipe, preset, args.crop, output.with_name(f"{output.stem}_crops.png"), fronts_of[first]
    )
    report["crops"] = figure.name if figure else None
    write_json(output, report)
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main(parse_args())
