"""Throughput of ``rp-diffusers evaluate`` at 1 and 2 processes, on the same sweep in the same run.

A fixed sweep on Kodak (JPEG, VVC, the slowest encoder here, and WebP, which the default model pre-processes), with and without ``--model default``, run as a
user runs it (the CLI in a fresh process, model loading included) in three ways:

- ``1 process, 1 worker``: the plain baseline, everything in series;
- ``1 process, 2 workers``: ``evaluate``'s own process pool for the codec and metric work (its default);
- ``ACCELERATE_USE_CPU=1 accelerate launch --config_file training/configs/cpu_2proc.yaml``: two processes, one shard of the images each, merged by the main one.

It prints images per minute and the ratio to the baseline, checks that every way wrote the same results
(timings aside), and writes ``benchmarks/results/evaluate_scale.json``. Kodak is only measured here.

Example:
    python benchmarks/evaluate_scale.py                       # 8 Kodak images, about 10 minutes on 2 cores
    python benchmarks/evaluate_scale.py --limit 2 --sweeps jpeg=30 vvc=33 --output /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
RESULTS = Path(__file__).resolve().parent / "results"
WAYS = {
    "1 process, 1 worker": (1, 1),
    "1 process, 2 workers": (1, 2),
    "accelerate, 2 processes x 1 worker": (2, 1),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_KODAK), help="Folder of test images (default: Kodak).")
    parser.add_argument("--limit", type=int, default=8, help="First N images.")
    parser.add_argument("--metrics", default="psnr,ssimulacra2", help="Per-image metrics of the sweep.")
    parser.add_argument(
        "--sweeps",
        nargs="+",
        default=["jpeg=30,50,70", "vvc=25,33", "webp=30,60"],
        help="CODEC=QUALITIES per sweep (WebP: the codec the default model pre-processes, so --model default "
        "adds an rp + codec curve; for JPEG and VVC it runs the codec alone)",
    )
    parser.add_argument("--output", default=str(RESULTS / "evaluate_scale.json"), help="JSON to write.")
    return parser.parse_args(argv)


def _normalized(folder: Path) -> dict:
    found = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "meta" in data:
            for key in ("date", "preprocess_seconds_per_image"):
                data["meta"].pop(key, None)
            data["results"] = {k: v for k, v in data["results"].items() if not k.endswith("_time")}
            data["per_image"] = [{k: v for k, v in r.items() if not k.endswith("_time")} for r in data["per_image"]]
        found[path.name] = data
    return found


def _sweep(args, codec: str, qualities: str, model: bool, processes: int, workers: int, output: Path) -> float:
    command = ["-m", "rp_diffusers.cli", "evaluate", "--images", args.images, "--limit", str(args.limit)]
    command += ["--codec", codec, "--qualities", qualities, "--metrics", args.metrics, "--workers", str(workers)]
    command += ["--output", str(output), "--no-progress", *(["--model", "default"] if model else [])]
    if processes > 1:
        launcher = shutil.which("accelerate")
        if launcher is None:
            raise RuntimeError("accelerate's launcher is not on PATH")
        config = Path(__file__).resolve().parents[1] / "training" / "configs" / "cpu_2proc.yaml"
        command = [launcher, "launch", "--config_file", str(config), "--num_processes", str(processes), *command]
    else:
        command = [sys.executable, *command]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}  # gloo processes on the CPU
    start = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.images).is_dir():
        print(f"no images at {args.images}: pass --images FOLDER", file=sys.stderr)
        return 2
    sweeps = dict(item.split("=", 1) for item in args.sweeps)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in (False, True):
            for codec, qualities in sweeps.items():
                reference = None
                for way, (processes, workers) in WAYS.items():
                    output = Path(scratch) / f"{codec}-{model}-{processes}-{workers}"
                    seconds = _sweep(args, codec, qualities, model, processes, workers, output)
                    results = _normalized(output)
                    reference = reference if reference is not None else results
                    curves = sorted(name[:-5] for name in results if name != "bd_rate.json")
                    rows.append(
                        {
                            "codec": codec,
                            "model": "default" if model else None,
                            "curves": curves,
                            "way": way,
                            "processes": processes,
                            "workers": workers,
                            "seconds": seconds,
                            "images_per_minute": 60 * args.limit / seconds,
                            "same_results_as_baseline": results == reference,
                        }
                    )
                    print(f"{codec:5} model={'default' if model else '-':8} {way:36} {seconds:7.1f} s", flush=True)
    for row in rows:
        base = next(
            r
            for r in rows
            if (r["codec"], r["model"], r["processes"], r["workers"]) == (row["codec"], row["model"], 1, 1)
        )
        row["speedup"] = base["seconds"] / row["seconds"]
    header = "| codec | --model | curves | way | images/min | x baseline | same results |"
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {row['codec']} | {row['model'] or '-'} | {', '.join(row['curves'])} | {row['way']} | "
            f"{row['images_per_minute']:.1f} | {row['speedup']:.2f} | {'yes' if row['same_results_as_baseline'] else 'NO'} |"
        )
    print("\n" + "\n".join(lines))
    report = {
        "images": args.images,
        "limit": args.limit,
        "metrics": args.metrics,
        "qualities": sweeps,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "rows": rows,
        "table": "\n".join(lines),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
