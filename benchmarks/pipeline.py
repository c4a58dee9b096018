"""Benchmark RPPreprocessPipeline against the plain diffusers path at SD 2.1 sizes (random weights), and tiled memory.

The models are SD-Turbo's UNet and VAE (SD 2.1 layout) built from their configs in code with random weights, so the
timings are real and nothing is downloaded; output differences are measured on these random weights too (trained
weights give smaller activations, so the bf16 differences here are an upper bound rather than a typical value).

Speed: for each dtype, the plain path (``vae.encode -> unet -> x0 -> vae.decode`` at diffusers' defaults) and our
pipeline (default settings, then after ``pipe.optimize_for_cpu()``) run on the same image in the same process,
interleaved, and the ratio plain / ours is reported (paired within each repetition, median over repetitions). Memory: a large image runs through the tiled pipeline in a fresh
subprocess and its peak resident set size (RSS) is read from the kernel.

    pip install -e .  # or PYTHONPATH=. from the repository root
    python benchmarks/pipeline.py --dtypes float32,bfloat16 --repeats 2 --large-size 1920x1080
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sd21_components(dtype: torch.dtype, seed: int = 0):
    """SD-Turbo's UNet, VAE and scheduler (SD 2.1 layout) from their configs, random weights."""
    from diffusers import EulerDiscreteScheduler

    from rp_diffusers.utils.testing import sd21_size_unet, sd21_size_vae

    unet = sd21_size_unet(seed)
    vae = sd21_size_vae(seed + 1)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="trailing",
    )
    torch.manual_seed(seed + 2)
    prompt_embeds = torch.randn(1, 77, 1024)
    return vae.eval().to(dtype), unet.eval().to(dtype), scheduler, prompt_embeds


def test_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour field with mild noise (a stand-in for a photograph; content does not affect speed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    base = np.stack([np.sin(xx / 37), np.cos(yy / 23), np.sin((xx + yy) / 51)], -1) * 0.35 + 0.5
    return Image.fromarray((np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1) * 255).astype(np.uint8))


@torch.no_grad()
def plain_diffusers(vae, unet, scheduler, image: torch.Tensor, prompt_embeds: torch.Tensor, timestep: int = 999):
    """The plain path with diffusers' components at their defaults: encode, one UNet call, x0, decode.

    The posterior's mode is used instead of ``latent_dist.sample()``: sampling costs nothing measurable but would
    make the outputs incomparable.
    """
    latents = vae.encode(image.to(vae.dtype) * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    eps = unet(latents, timestep, encoder_hidden_states=prompt_embeds.to(unet.dtype)).sample
    alpha_bar = scheduler.alphas_cumprod[timestep]
    x0 = (latents.float() - (1 - alpha_bar).sqrt() * eps.float()) / alpha_bar.sqrt()
    decoded = vae.decode((x0 / vae.config.scaling_factor).to(vae.dtype)).sample
    return (decoded.float() / 2 + 0.5).clamp(0, 1)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a.float() - b.float()).abs()
    mse = float((diff**2).mean())
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "psnr_db": float("inf") if mse == 0 else 10 * np.log10(1.0 / mse),
    }


def speed(dtype_name: str, width: int, height: int, repeats: int) -> dict:
    from rp_diffusers import RPPreprocessPipeline
    from rp_diffusers.utils import pil_to_tensor

    vae, unet, scheduler, embeds = sd21_components(DTYPES[dtype_name])
    pipe = RPPreprocessPipeline(vae=vae, unet=unet, scheduler=scheduler)
    fast = RPPreprocessPipeline(vae=copy.deepcopy(vae), unet=unet, scheduler=scheduler)  # shares the UNet
    for p in (pipe, fast):
        p.prompt_embeds = embeds
        p.set_progress_bar_config(disable=True)
    fast.optimize_for_cpu()
    image = test_image(width, height)
    x = pil_to_tensor(image)

    small = test_image(64, 64)  # warm-up: oneDNN primitive creation, lazy imports
    plain_diffusers(vae, unet, scheduler, pil_to_tensor(small), embeds)
    pipe(small, output_type="pt")
    fast(small, output_type="pt")

    runs = {"plain": [], "ours_default": [], "ours_optimized": []}
    outputs = {}
    for rep in range(repeats):
        seconds, outputs["plain"] = timed(lambda: plain_diffusers(vae, unet, scheduler, x, embeds))
        runs["plain"].append(seconds)
        if rep == 0:  # same computation as the plain path: once is enough to show the overhead and exactness
            seconds, out = timed(lambda: pipe(image, output_type="pt").images)
            runs["ours_default"].append(seconds)
            outputs["ours_default"] = out
        seconds, outputs["ours_optimized"] = timed(lambda: fast(image, output_type="pt").images)
        runs["ours_optimized"].append(seconds)
        print(f"  {dtype_name} rep {rep}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in runs.items()), flush=True)
    return {
        "dtype": dtype_name,
        "size": [width, height],
        "seconds": runs,
        **speedups(runs),
        "diff_default_vs_plain": compare(outputs["ours_default"], outputs["plain"]),
        "diff_optimized_vs_plain": compare(outputs["ours_optimized"], outputs["plain"]),
    }


def _rss_gib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def speedups(runs: dict[str, list[float]]) -> dict[str, float]:
    """plain / ours, paired within each repetition (the shared machine's speed drifts between repetitions)."""
    paired = [p / o for p, o in zip(runs["plain"], runs["ours_optimized"])]
    return {
        "speedup_default": runs["plain"][0] / runs["ours_default"][0],
        "speedup_optimized": float(np.median(paired)),
        "speedup_optimized_per_repeat": paired,
    }


def large_worker(
    dtype_name: str,
    width: int,
    height: int,
    optimize: bool,
    plain: bool = False,
    save_output: str | None = None,
    untiled: bool = False,
) -> dict:
    """Run in a fresh process: resident memory after loading the models, and the peak while one large image runs.

    ``plain`` runs the plain diffusers path on the whole image instead of our (tiled) pipeline. The peak counter is
    reset after loading (``/proc/self/clear_refs``), so building the random models in float32 before casting them
    does not count; without that file the peak since start is reported. ``save_output`` writes the output (float16
    .npy, H x W x 3) for the parent to compare.
    """
    from rp_diffusers import RPPreprocessPipeline
    from rp_diffusers.utils import pil_to_tensor

    vae, unet, scheduler, embeds = sd21_components(DTYPES[dtype_name])
    pipe = RPPreprocessPipeline(vae=vae, unet=unet, scheduler=scheduler)
    pipe.prompt_embeds = embeds
    pipe.set_progress_bar_config(disable=True)
    if optimize:
        pipe.optimize_for_cpu()
    if untiled:
        pipe.disable_tiling()
    image = test_image(width, height)
    x = pil_to_tensor(image)
    rss_loaded = _rss_gib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        peak_reset = True
    except OSError:
        peak_reset = False
    if plain:
        seconds, out = timed(lambda: plain_diffusers(vae, unet, scheduler, x, embeds))
    else:
        seconds, out = timed(lambda: pipe(image, output_type="pt").images)
    if save_output:
        np.save(save_output, out[0].permute(1, 2, 0).numpy().astype(np.float16))
    return {
        "path": "plain diffusers"
        if plain
        else "ours" + (" + optimize_for_cpu" if optimize else "") + (", untiled" if untiled and not plain else ""),
        "dtype": dtype_name,
        "size": [width, height],
        "optimized": optimize,
        "tiles": 1 if plain else pipe._num_tiles(height, width),
        "tile_size": pipe._tile_size,
        "tile_overlap": pipe._tile_overlap,
        "output_size": [int(out.shape[-1]), int(out.shape[-2])],
        "seconds": seconds,
        "rss_gib_models_loaded": rss_loaded,
        "peak_rss_gib": _rss_gib("VmHWM"),
        "peak_counter_reset_after_loading": peak_reset,
    }


def run_worker(
    args, size: str, dtype_name: str, optimize: bool, plain: bool = False, save_output=None, untiled: bool = False
) -> dict:
    """``large_worker`` in a fresh subprocess (so its peak memory is its own)."""
    command = [sys.executable, __file__, "--large-worker", "--large-size", size, "--large-dtype", dtype_name]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--optimize"] if optimize else []
    command += ["--plain"] if plain else []
    command += ["--save-output", save_output] if save_output else []
    command += ["--untiled"] if untiled else []
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["machine"] = machine(load_before)
    return row


def size_comparison(args, size: str, dtype_name: str) -> dict:
    """Plain diffusers (whole image) vs ours + optimize_for_cpu (tiled above 768 px unless ``--sizes-untiled``), each
    in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        plain = run_worker(args, size, dtype_name, False, plain=True, save_output=f"{folder}/plain.npy")
        print(f"  {dtype_name} {size} plain: {plain['seconds']:.1f} s, {plain['peak_rss_gib']:.2f} GiB", flush=True)
        ours = run_worker(args, size, dtype_name, True, save_output=f"{folder}/ours.npy", untiled=args.sizes_untiled)
        print(f"  {dtype_name} {size} ours: {ours['seconds']:.1f} s, {ours['peak_rss_gib']:.2f} GiB", flush=True)
        a, b = (torch.from_numpy(np.load(f"{folder}/{n}.npy").astype(np.float32)) for n in ("ours", "plain"))
    return {
        "plain": plain,
        "ours_optimized": ours,
        "speedup": plain["seconds"] / ours["seconds"],
        "peak_rss_ratio_ours_over_plain": ours["peak_rss_gib"] / plain["peak_rss_gib"],
        "diff_vs_plain": compare(a, b),
    }


def roofline(dtype_name: str, width: int, height: int, plain_seconds: float | None = None) -> dict:
    """How far an exact rewrite can go: FLOPs of the plain path and of ours, against this CPU's measured conv peak.

    FLOPs are counted by ``torch.utils.flop_counter`` on meta tensors (no compute). The peak is the best of three
    channels-last 3x3 convolutions of SD's VAE shapes in ``dtype``, the op that is 80-85% of the plain path's time.
    ``floor_s`` is the time if every FLOP ran at that peak and nothing else cost anything.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from rp_diffusers.models.subpixel_upsample import use_subpixel_upsampling

    vae, unet, scheduler, embeds = sd21_components(torch.float32)
    vae, unet, embeds = vae.to("meta"), unet.to("meta"), embeds.to("meta")
    image = torch.zeros(1, 3, height, width, device="meta")

    def count() -> float:
        with FlopCounterMode(display=False) as counter:
            plain_diffusers(vae, unet, scheduler, image, embeds)
        return float(counter.get_total_flops())

    flops_plain = count()
    use_subpixel_upsampling(vae), use_subpixel_upsampling(unet)
    flops_ours = count()
    dtype = DTYPES[dtype_name]
    peak = 0.0
    with torch.no_grad():
        for channels, h, w in ((128, height, width), (256, height // 2, width // 2), (512, height // 4, width // 4)):
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
            x = torch.randn(1, channels, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
            conv(x)
            for _ in range(3):
                seconds, _ = timed(partial(conv, x))
                peak = max(peak, 2 * 9 * channels * channels * h * w / seconds)
    row = {
        "tflop_plain": round(flops_plain / 1e12, 3),
        "tflop_ours": round(flops_ours / 1e12, 3),
        "conv_peak_gflops": round(peak / 1e9, 1),
        "floor_s_plain": round(flops_plain / peak, 2),
        "floor_s_ours": round(flops_ours / peak, 2),
    }
    if plain_seconds:
        row["plain_gflops_achieved"] = round(flops_plain / plain_seconds / 1e9, 1)
        row["max_exact_speedup"] = round(plain_seconds / row["floor_s_ours"], 2)
    return row


def machine(load_before: float) -> dict:
    """Where a row was measured: the machine is shared, so the 1-minute load average before and after is kept."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="768x512", help="WxH of the speed comparison")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions per path (median reported)")
    parser.add_argument("--large-size", default="1920x1080", help="WxH of the tiled memory run; 'none' skips it")
    parser.add_argument("--large-dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--large-optimize", action="store_true", help="optimize_for_cpu() before the large run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", default="benchmarks/results/pipeline.json", help="results JSON (merged)")
    parser.add_argument("--large-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--optimize", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save-output", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--sizes",
        default="none",
        help="comma-separated WxH: plain vs ours + optimize_for_cpu, latency and peak RSS, each in a fresh process",
    )
    parser.add_argument("--sizes-dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--sizes-untiled", action="store_true", help="ours processes every size whole (exact mode)")
    parser.add_argument("--untiled", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def print_table(results: dict) -> None:
    """The speed table (median seconds; ratios paired per repetition) and the tiled memory rows."""
    speed_rows = results.get("speed", {})
    print(
        ""
        if not speed_rows
        else f"\n{'dtype':<10}{'size':>10}{'plain s':>10}{'ours s':>9}{'ours+opt s':>12}{'x default':>11}"
        f"{'x opt':>8}{'max|d| def':>12}{'PSNR opt dB':>13}  x opt per repeat"
    )
    for row in speed_rows.values():
        sec = {k: float(np.median(v)) for k, v in row["seconds"].items()}
        print(
            f"{row['dtype']:<10}{'x'.join(map(str, row['size'])):>10}{sec['plain']:>10.1f}{sec['ours_default']:>9.1f}"
            f"{sec['ours_optimized']:>12.1f}{row['speedup_default']:>11.2f}{row['speedup_optimized']:>8.2f}"
            f"{row['diff_default_vs_plain']['max_abs']:>12.1e}{row['diff_optimized_vs_plain']['psnr_db']:>13.1f}  "
            + ", ".join(f"{r:.2f}" for r in row["speedup_optimized_per_repeat"])
        )
    for row in speed_rows.values():
        if "roofline" in row:
            r = row["roofline"]
            print(
                f"roofline {row['dtype']}: {r['tflop_plain']} TFLOP plain, {r['tflop_ours']} ours; conv peak "
                f"{r['conv_peak_gflops']} GFLOP/s; plain runs at {r.get('plain_gflops_achieved', 'n/a')} GFLOP/s; "
                f"floor {r['floor_s_ours']} s -> at most {r.get('max_exact_speedup', 'n/a')}x without fewer FLOPs "
                "or lower precision"
            )
    if results.get("sizes"):
        print(
            f"\n{'dtype size':<20}{'plain s':>9}{'ours s':>9}{'x':>6}{'plain GiB':>11}{'ours GiB':>10}{'tiles':>7}{'PSNR dB':>9}"
        )
    for key, row in results.get("sizes", {}).items():
        plain, ours = row["plain"], row["ours_optimized"]
        print(
            f"{key:<20}{plain['seconds']:>9.1f}{ours['seconds']:>9.1f}{row['speedup']:>6.2f}{plain['peak_rss_gib']:>11.2f}"
            f"{ours['peak_rss_gib']:>10.2f}{ours['tiles']:>7}{row['diff_vs_plain']['psnr_db']:>9.1f}"
        )
    for key, large in results.get("large", {}).items():
        print(
            f"\ntiled {key}: {large['tiles']} tiles of {large['tile_size']} px, {large['seconds']:.0f} s, "
            f"peak RSS {large['peak_rss_gib']:.2f} GiB (models loaded: {large['rss_gib_models_loaded']:.2f} GiB)"
        )


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.large_worker:
        size = parse_size(args.large_size)
        row = large_worker(
            args.large_dtype,
            *size,
            args.optimize,
            plain=args.plain,
            save_output=args.save_output,
            untiled=args.untiled,
        )
        print(json.dumps(row))
        return 0
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.is_file() else {}
    speed_rows = results.setdefault("speed", {})
    for dtype_name in [d.strip() for d in args.dtypes.split(",") if d.strip() and d.strip() != "none"]:
        load_before = os.getloadavg()[0]
        speed_rows[dtype_name] = speed(dtype_name, *parse_size(args.size), args.repeats)
        speed_rows[dtype_name]["machine"] = machine(load_before)
        plain_seconds = float(np.median(speed_rows[dtype_name]["seconds"]["plain"]))
        speed_rows[dtype_name]["roofline"] = roofline(dtype_name, *parse_size(args.size), plain_seconds)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
    for size in [s.strip() for s in args.sizes.split(",") if s.strip() and s.strip() != "none"]:
        key = f"{args.sizes_dtype} {size}{' untiled' if args.sizes_untiled else ''}"
        results.setdefault("sizes", {})[key] = size_comparison(args, size, args.sizes_dtype)
        output.write_text(json.dumps(results, indent=2) + "\n")
    if args.large_size.lower() != "none":
        row = run_worker(args, args.large_size, args.large_dtype, args.large_optimize)
        key = f"{args.large_dtype}{'+optimize_for_cpu' if args.large_optimize else ''} {args.large_size}"
        results.setdefault("large", {})[key] = row
        output.write_text(json.dumps(results, indent=2) + "\n")

    print_table(results)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
