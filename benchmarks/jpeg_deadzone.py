"""The JPEG dead zone against JPEG alone: real files, real decoder, every weight-free metric, BD-rate, R-D plot.

``JPEGDeadzone`` (``rp_diffusers.codecs.prequantize``) moves the luma AC coefficients that libjpeg would round up to
+-1 from under ``threshold`` quantisation steps down to 0.4 steps, on the pixels, before the unmodified encoder at the
quality the file is written at. This benchmark sweeps JPEG alone and JPEG after the step at each threshold in the
same run (Pillow / libjpeg-turbo, 4:2:0, the project's ``jpeg`` codec), optionally with the shipped model's base
network before the step, and reports BD-rates against JPEG alone, the overlap of the curves, the time the step takes
and an R-D plot. Nothing is trained, so no metric is "trained on"; the thresholds are chosen on val-set14
(``--select``), and Kodak gets only the chosen one, for reporting.

    python benchmarks/jpeg_deadzone.py --images ../shared/data/val-set14 --thresholds 0.65,0.7,0.75,0.8 --select \
        --output benchmarks/results/jpeg_deadzone_val-set14.json
    python benchmarks/jpeg_deadzone.py --images ../shared/data/kodak --thresholds 0.75 --with_base \
        --output benchmarks/results/jpeg_deadzone_kodak.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from rp_diffusers.codecs.prequantize import JPEGDeadzone
from rp_diffusers.evaluation import (
    MIN_OVERLAP,
    bd_overlap,
    bd_table,
    evaluate,
    format_bd_table,
    list_images,
    plot_rd,
    usable_metrics,
)
from rp_diffusers.metrics import default_metrics
from rp_diffusers.utils.image import load_image

HEADLINE = ("ssimulacra2", "butteraugli-3norm", "vmaf-neg")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="../shared/data/val-set14", help="Photographs (a folder).")
    parser.add_argument("--qualities", default="15,25,40,60,80", help="JPEG qualities of every curve.")
    parser.add_argument(
        "--thresholds",
        default="0.65,0.7,0.75,0.8",
        help="Dead-zone thresholds (steps), comma-separated; T/TAIL adds a tail threshold (e.g. 0.75/0.9).",
    )
    parser.add_argument("--frequency_ramp", action="store_true", help="Thresholds that grow with frequency.")
    parser.add_argument(
        "--with_base", action="store_true", help="Also the model's base network + the step --base_step."
    )
    parser.add_argument("--base_step", default=None, help="T or T/TAIL (default: the first of --thresholds).")
    parser.add_argument("--model", default="default", help="The model whose base network --with_base runs.")
    parser.add_argument("--select", action="store_true", help="Choose a threshold (this must be a validation set).")
    parser.add_argument("--metrics", nargs="*", default=None, help="Metrics (default: every weight-free one).")
    parser.add_argument("--workers", type=int, default=2, help="Processes for the codec and metric work.")
    parser.add_argument("--output", default="benchmarks/results/jpeg_deadzone_val-set14.json", help="JSON written.")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Measure nothing: recompute the per-image BD-rates of the existing --output JSON and print them.",
    )
    return parser.parse_args(argv)


def parse_step(spec: str, frequency_ramp: bool) -> tuple[str, JPEGDeadzone]:
    """``"0.75"`` or ``"0.75/0.9"`` (threshold / tail threshold) -> (curve name, step)."""
    threshold, _, tail = spec.strip().partition("/")
    step = JPEGDeadzone(float(threshold), frequency_ramp, tail_threshold=float(tail) if tail else None)
    return f"jpeg dead zone {step.threshold:g}" + (f" tail {step.tail_threshold:g}" if tail else ""), step


def per_image_bd(anchor: dict, curve: dict) -> dict[str, dict[str, float]]:
    """Per image, the BD-rate of ``curve`` against ``anchor`` in every metric (both curves' per-image records)."""
    keys = [k for k in anchor["results"] if k not in ("quality", "encoding_time", "decoding_time")]
    table = {}
    for image in sorted({r["image"] for r in anchor["per_image"]}):
        one = [
            {"results": {k: [r[k] for r in c["per_image"] if r["image"] == image] for k in keys + ["quality"]}}
            for c in (anchor, curve)
        ]
        table[image] = bd_table(*one)
    return table


def summarize_images(per_image: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: how many images the curve wins on (negative BD-rate), and the range."""
    metrics = next(iter(per_image.values())).keys()
    summary = {}
    for m in metrics:
        values = [row[m] for row in per_image.values() if row[m] == row[m]]
        summary[m] = {
            "wins": sum(v < 0 for v in values),
            "images": len(values),
            "min": min(values),
            "max": max(values),
        }
    return summary


def add_per_image(report: dict) -> None:
    """Add each curve's per-image BD-rates and their summary (wins per metric) to ``report``."""
    curves = report["curves"]
    report["per_image_bd_rate_percent"] = {
        name: per_image_bd(curves["jpeg alone"], c) for name, c in curves.items() if name != "jpeg alone"
    }
    report["per_image_summary"] = {
        name: summarize_images(rows) for name, rows in report["per_image_bd_rate_percent"].items()
    }


def select_threshold(table: dict, overlaps: dict, steps: dict[str, JPEGDeadzone]) -> dict:
    """The threshold that wins in every headline metric (over curves that overlap, as an adapter's validation asks)
    with the best mean of them; ``None`` where none wins."""
    winners = {
        name: sum(table[name][m] for m in HEADLINE) / len(HEADLINE)
        for name in steps
        if all(table[name].get(m, float("nan")) < 0 and overlaps[name].get(m, 0.0) >= MIN_OVERLAP for m in HEADLINE)
    }
    if not winners:
        return {"curve": None, "step": None, "wins": False, "bd_rate": None}
    best = min(winners, key=winners.get)
    return {"curve": best, "step": steps[best].config(), "wins": True, "bd_rate": table[best], "headline": HEADLINE}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        output = Path(args.output)
        report = json.loads(output.read_text())
        add_per_image(report)
        output.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        print(json.dumps(report["per_image_summary"], indent=1))
        return 0
    metrics = usable_metrics(args.metrics or [m for m in default_metrics() if m not in ("lpips", "dists")])
    paths = list_images([args.images])
    if not paths:
        raise SystemExit(f"no images in {args.images}")
    steps = dict(parse_step(spec, args.frequency_ramp) for spec in args.thresholds.split(","))
    common = dict(metrics=metrics, workers=args.workers)
    curves = {"jpeg alone": evaluate(paths, "jpeg", args.qualities, name="jpeg alone", **common).to_dict()}
    for name, step in steps.items():
        curves[name] = evaluate(paths, "jpeg", args.qualities, codec_step=step, name=name, **common).to_dict()

    network = None
    if args.with_base:
        from rp_diffusers.default_model import load_preprocessor

        pipe = load_preprocessor(args.model, "cpu")
        pipe.set_progress_bar_config(disable=True)
        label, step = parse_step(args.base_step or args.thresholds.split(",")[0], args.frequency_ramp)
        name = f"base network + {label}"
        network = {"model": args.model, "curve": name}

        def base(images):
            return [pipe(image, adapter_name=[] if pipe.available_adapters() else None).images[0] for image in images]

        curves[name] = evaluate(paths, "jpeg", args.qualities, preprocess=base, codec_step=step, name=name, **common)
        curves[name] = curves[name].to_dict()

    anchor = curves["jpeg alone"]
    table = {name: bd_table(anchor, c) for name, c in curves.items() if name != "jpeg alone"}
    overlaps = {name: bd_overlap(anchor, c) for name, c in curves.items() if name != "jpeg alone"}
    print(format_bd_table(table, "jpeg alone", overlaps))

    # the step's own cost: seconds per image at each quality (median), against the encode alone
    image = load_image(paths[0])
    step = next(iter(steps.values()))
    seconds = []
    for quality in (int(q) for q in args.qualities.split(",")):
        start = time.perf_counter()
        step(image, quality)
        seconds.append(time.perf_counter() - start)
    encode = statistics.median(r["encoding_time"] for r in anchor["per_image"])
    stepped = statistics.median(r["encoding_time"] for r in curves[next(iter(steps))]["per_image"])

    report = {
        "images": str(args.images),
        "num_images": len(paths),
        "qualities": [int(q) for q in args.qualities.split(",")],
        "codec": anchor["description"],
        "metrics": metrics,
        "trained_on": None,
        "headline": list(HEADLINE),
        "steps": {name: s.config() for name, s in steps.items()},
        "network": network,
        "bd_rate_percent": table,
        "overlap": overlaps,
        "seconds": {
            "step_per_image_first_image": statistics.median(seconds),
            "first_image_size": list(image.size),
            "encode_median": encode,
            "step_and_encode_median": stepped,
            "ratio_step_and_encode_to_encode": stepped / encode if encode else None,
        },
        "curves": curves,
    }
    add_per_image(report)
    if args.select:
        report["selection"] = select_threshold(table, overlaps, steps)
        print(f"selected: {json.dumps(report['selection'])}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    shown = ["jpeg alone", *(c for c in curves if c != "jpeg alone")]
    keys = [k for k in ("psnr-rgb", "ssimulacra2", "butteraugli-3norm", "vmaf-neg") if k in anchor["results"]]
    plot_rd([curves[name] for name in shown], output.with_suffix(".png"), keys)
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
