"""How many refinement steps, at which step size: CorrDiff's encoder-side refinement on VALIDATION photographs.

For each val-set14 image (never Kodak), quality and Adam step size, ``CorrDiffModel.refine_latents`` runs for each
number of steps, and the rounded-symbol rate-distortion loss (``CorrDiffModel.rd_loss`` without noise: the float
hyper-synthesis estimate of the file, bpp + lambda * 255**2 * MSE) is compared with the analysis transform's
latents. Reported per (step size, steps): the mean relative loss drop, and the mean change of the estimated bpp (%)
and PSNR (dB). The shipped default (``refine_steps`` = 40 at 0.003 in ``benchmarks/corrdiff.py`` runs) was picked by
hand on bridge and barbara before this script existed; this records the comparison on more images.

Example:
    python benchmarks/corrdiff_refine_choice.py --output benchmarks/results/corrdiff_refine_choice_valset14.json
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rp_diffusers.codecs import get_codec
from rp_diffusers.corrdiff import CorrDiffConfig
from rp_diffusers.utils.files import write_json
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor
from rp_diffusers.utils.tiling import pad_to_multiple

DEFAULT_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "val-set14"


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_VAL), help="Folder of validation photographs (val-set14).")
    parser.add_argument("--names", default="bridge,barbara,comic,man", help="Images of the folder (stems; '' all).")
    parser.add_argument("--qualities", default="4", help="CorrDiff qualities.")
    parser.add_argument("--learning_rates", default="0.001,0.003,0.01", help="Adam step sizes.")
    parser.add_argument("--steps", default="10,20,40,80", help="Numbers of steps (each a separate run).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--output", default="benchmarks/results/corrdiff_refine_choice_valset14.json")
    return parser.parse_args(input_args)


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = get_codec("corrdiff").model
    wanted = [n for n in args.names.split(",") if n]
    files = [p for p in list_images(args.images) if not wanted or p.stem in wanted]
    if not files:
        raise SystemExit(f"no images named {wanted} in {args.images}")
    qualities = [int(q) for q in args.qualities.split(",")]
    rates = [float(r) for r in args.learning_rates.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    rows, start = [], time.perf_counter()
    jobs = [(p, q, r) for p in files for q in qualities for r in rates]
    for path, quality, rate in tqdm(jobs, desc="refinement runs"):
        x, size = pad_to_multiple(pil_to_tensor(load_image(path)), CorrDiffConfig.pad_multiple)
        with torch.no_grad():
            base = [float(v) for v in model.rd_loss(x, model.g_a(x), quality, size=size)]
        for count in steps:
            tic = time.perf_counter()
            y = model.refine_latents(x, quality, count, learning_rate=rate, size=size)
            seconds = time.perf_counter() - tic
            with torch.no_grad():
                loss, bpp, mse = (float(v) for v in model.rd_loss(x, y, quality, size=size))
            rows.append({
                "image": path.stem, "quality": quality, "learning_rate": rate, "steps": count, "seconds": seconds,
                "loss_drop_pct": 100 * (1 - loss / base[0]), "bpp_change_pct": 100 * (bpp / base[1] - 1),
                "psnr_change_db": 10 * math.log10(base[2] / mse),
            })  # fmt: skip
    table = {}
    print(f"{'lr':>7s} {'steps':>5s} {'loss drop %':>12s} {'bpp %':>8s} {'PSNR dB':>8s} {'s/image':>8s}")
    for rate in rates:
        for count in steps:
            sel = [r for r in rows if r["learning_rate"] == rate and r["steps"] == count]
            mean = {k: float(np.mean([r[k] for r in sel])) for k in ("loss_drop_pct", "bpp_change_pct",
                                                                     "psnr_change_db", "seconds")}  # fmt: skip
            table[f"lr {rate:g}, {count} steps"] = {k: round(v, 3) for k, v in mean.items()}
            print(f"{rate:7g} {count:5d} {mean['loss_drop_pct']:12.2f} {mean['bpp_change_pct']:8.2f} "
                  f"{mean['psnr_change_db']:8.3f} {mean['seconds']:8.1f}")  # fmt: skip
    output = {
        "benchmark": "corrdiff_refine_choice",
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "images": [p.name for p in files], "qualities": qualities, "mean": table, "rows": rows,
        "meta": {"seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "machine": platform.processor() or platform.machine()},
    }  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_json(args.output, output)}")
    return output


if __name__ == "__main__":
    main(parse_args())
