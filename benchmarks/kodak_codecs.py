"""Every real codec on Kodak in every metric this machine measures: R-D sweeps, default-quality table, BD-rates.

Writes ``benchmarks/results/kodak_codecs/`` (one CompressAI-schema results file per codec over its six-point
sweep, ``rd.png`` with a panel per metric, ``bd_rate.json`` against JPEG with the curves' overlap per metric)
and ``benchmarks/results/kodak_default_quality/`` (each codec at its default quality). The metrics are
``rp_diffusers.metrics.default_metrics()``: PSNR, MS-SSIM, SSIMULACRA2, Butteraugli (max and 3-norm), VMAF and
VMAF-NEG where installed, and LPIPS/DISTS where their weights load. Real files, real decoders.

Kodak is the TEST set: this measures, nothing here tunes anything.

Example:
    python benchmarks/kodak_codecs.py                 # all codecs, 24 images (about 30 min on 2 cores)
    python benchmarks/kodak_codecs.py --limit 2 --codecs jpeg webp --output /tmp/kodak
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rp_diffusers.codecs import available_codecs, get_codec
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

DEFAULT_KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_KODAK), help="Folder of test images (Kodak).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N images (sorted by name).")
    parser.add_argument("--codecs", nargs="+", default=None, help="Codecs (default: all available; jpeg first).")
    parser.add_argument("--workers", type=int, default=None, help="Processes for codec and metric work.")
    parser.add_argument(
        "--output", default=str(RESULTS), help="Folder receiving kodak_codecs/ and kodak_default_quality/."
    )
    return parser.parse_args(input_args)


def main(args: argparse.Namespace) -> dict:
    images = list_images(args.images)[: args.limit] if args.limit else list_images(args.images)
    codecs = args.codecs or available_codecs()
    codecs = ["jpeg", *[c for c in codecs if c != "jpeg"]]  # the anchor of the BD-rates
    metrics = usable_metrics(default_metrics())
    sweep_dir, default_dir = Path(args.output) / "kodak_codecs", Path(args.output) / "kodak_default_quality"
    curves = []
    for name in codecs:
        codec = get_codec(name)
        qualities = sorted({*codec.sweep_qualities, codec.default_quality})
        result = evaluate(images, name, qualities, metrics=metrics, workers=args.workers)
        full = result.to_dict()
        sweep = _subset(full, list(codec.sweep_qualities))
        default = _subset(full, [codec.default_quality])
        for folder, data in ((sweep_dir, sweep), (default_dir, default)):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        curves.append(sweep)
    plot_rd(curves, sweep_dir / "rd.png")
    anchor = curves[0]
    rows = {c["name"]: bd_table(anchor, c) for c in curves[1:]}
    overlaps = {c["name"]: bd_overlap(anchor, c) for c in curves[1:]}
    table = {"anchor": anchor["name"], "bd_rate": rows, "overlap": overlaps, "min_overlap": MIN_OVERLAP}
    (sweep_dir / "bd_rate.json").write_text(json.dumps(table, indent=2) + "\n")
    print(format_bd_table(rows, anchor["name"], overlaps))
    print()
    print(format_default_table([_subset(c, []) for c in curves], default_dir))
    return table


def _subset(data: dict, qualities: list) -> dict:
    """The results file restricted to ``qualities`` (all when empty): averages and per-image records."""
    if not qualities:
        return data
    keep = [i for i, q in enumerate(data["results"]["quality"]) if q in qualities]
    results = {key: [values[i] for i in keep] for key, values in data["results"].items()}
    per_image = [r for r in data["per_image"] if r["quality"] in qualities]
    return {**data, "meta": {**data["meta"], "qualities": qualities}, "results": results, "per_image": per_image}


def format_default_table(curves: list[dict], default_dir: Path) -> str:
    """The default-quality results as a markdown table (what the README shows)."""
    loaded = [json.loads((default_dir / f"{c['name']}.json").read_text()) for c in curves]
    keys = [k for k in loaded[0]["results"] if k not in ("quality", "encoding_time", "decoding_time")]
    lines = ["| codec | quality | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 2)]
    for data in loaded:
        r = data["results"]
        cells = " | ".join(f"{r[k][0]:.4g}" for k in keys)
        lines.append(f"| {data['name']} | {r['quality'][0]:g} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_args())
