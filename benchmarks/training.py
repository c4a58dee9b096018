"""Stage-2 training step (rate-perception LoRA) at SD 2.1 size: step time and peak memory, measured on this CPU.

One training step of ``training/finetune_rp.py`` with random weights in SD 2.1 / SD-Turbo's shapes (built in code:
UNet block_out_channels (320, 640, 1280, 1280), cross_attention_dim 1024, attention_head_dim (5, 10, 20, 20),
linear projections; VAE block_out_channels (128, 256, 512, 512)): frozen bf16 VAE and UNet, rank-8 LoRA on
to_q/to_k/to_v/to_out.0 in fp32, bf16 autocast, the one-step map, DiffJPEG (or an identity stand-in when its rate
calibration is missing), DISTS (random weights: same cost) and AdamW. The VAE encoder runs without gradients
(its input needs none); the decoder is on the gradient path.

Settings, each in its own process (peak memory is per process): no gradient checkpointing (the baseline), UNet
checkpointing, UNet + VAE checkpointing (what ``--gradient_checkpointing`` enables). Memory is the growth of the
resident set during the steps over the resident set after loading (weights included in "resident after load").

The GPU column is an ESTIMATE, not a measurement: bf16 weights + LoRA/Adam state + the CPU-measured step memory,
fitted over the measured crop sizes as fixed + per-pixel parts and evaluated at 512 x 512, batch 4 (SDPA attention
is linear in memory), + 1.5 GiB of CUDA context and allocator slack.

The learned proxies and DiffJPEG are also timed alone (forward + backward on the same crop and batch, float32, and
with ``--surrogate-precisions fp32 bf16`` also under the step's bf16 autocast, which CPUs run far slower than
float32), as a fraction of the no-checkpointing step measured in the same worker.

``--step-precision fp32`` runs the step in float32 instead: on a CPU without native bf16 (AVX2 only) the bf16 step is
emulated and takes tens of minutes, so the surrogate's share would be understated.

Example:
    python benchmarks/training.py --output benchmarks/results/training.json
    python benchmarks/training.py --resolutions 64 128 --steps 1  # a loaded 2-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rp_diffusers.utils.testing import sd21_size_unet, sd21_size_vae

GIB = 2**30
SETTINGS = ("no_checkpointing", "unet_checkpointing", "unet_vae_checkpointing")
CUDA_OVERHEAD_GIB = 1.5  # context + allocator fragmentation (estimate)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--resolutions",
        type=int,
        nargs="+",
        default=[128, 256],
        help="Square crop sizes measured; with two or more, step memory is fitted as fixed + per-pixel parts.",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="Batch size of the measured step.")
    parser.add_argument("--steps", type=int, default=2, help="Timed steps after one warm-up step.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each worker.")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank.")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS, help="Settings to run.")
    parser.add_argument("--target-resolution", type=int, default=512, help="Resolution of the GPU estimate.")
    parser.add_argument("--target-batch-size", type=int, default=4, help="Batch size of the GPU estimate.")
    parser.add_argument(
        "--surrogates",
        nargs="*",
        default=["jpeg", "avif", "heic", "hevc", "vvc", "webp"],
        help="Surrogates whose own forward + backward is timed on the step's crop, beside the step (the flag alone: none).",
    )
    parser.add_argument(
        "--surrogate-precisions",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16", "loop"],
        help="Precisions of the surrogate timing (bf16: under the step's autocast; loop: fp32 with the real codec in "
        "the forward pass, rp_diffusers.surrogates.CodecInTheLoop, as finetune_rp.py --surrogate_forward real).",
    )
    parser.add_argument(
        "--step-precision",
        default="bf16",
        choices=["bf16", "fp32"],
        help="bf16: frozen bf16 weights under bf16 autocast, as finetune_rp.py trains on a GPU; fp32: everything in "
        "float32, for CPUs without native bf16 (AVX2-only CPUs emulate it, and a step takes tens of minutes).",
    )
    parser.add_argument("--surrogate-repeats", type=int, default=3, help="Timed surrogate calls after a warm-up.")
    parser.add_argument("--output", type=str, default="benchmarks/results/training.json", help="JSON output path.")
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(input_args)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(setting: str, args: argparse.Namespace) -> dict:
    """Build the models, run warm-up + timed steps for one setting, return its measurements."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params

    from rp_diffusers.adapters import rp_lora_config
    from rp_diffusers.losses import RatePerceptionLoss
    from rp_diffusers.metrics import DISTS
    from rp_diffusers.models import one_step_map
    from rp_diffusers.surrogates import SurrogateOutput, get_surrogate

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet, vae = sd21_size_unet(), sd21_size_vae()
    counts = {
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "vae_params": sum(p.numel() for p in vae.parameters()),
    }
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    unet.add_adapter(rp_lora_config(rank=args.rank), adapter_name="rp_jpeg_lambda_0p5")
    bf16 = args.step_precision == "bf16"
    if bf16:
        unet.to(torch.bfloat16)
        vae.to(torch.bfloat16)
        cast_training_params(unet, dtype=torch.float32)
    lora = [p for p in unet.parameters() if p.requires_grad]
    counts["lora_params"] = sum(p.numel() for p in lora)
    if setting != "no_checkpointing":
        unet.enable_gradient_checkpointing()
    if setting == "unet_vae_checkpointing":
        vae.enable_gradient_checkpointing()
    try:
        surrogate, surrogate_name = get_surrogate("jpeg"), "DiffJPEG"
    except FileNotFoundError:  # rate calibration not generated yet: identity codec, same model cost

        def surrogate(image, quality):
            return SurrogateOutput(image, image.flatten(1).mean(1) * 0)

        surrogate_name = "identity stand-in (DiffJPEG calibration missing)"
    dists = DISTS(load_weights=False)
    counts["dists_params"] = sum(p.numel() for p in dists.parameters())
    loss_fn = RatePerceptionLoss(surrogate, dists, lambda_rate=0.5, lambda_perceptual=1.0, lambda_mse=1.0)
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    embeds = torch.randn(1, 77, 1024)
    image = torch.rand(args.batch_size, 3, args.resolution, args.resolution)  # set per worker

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = one_step_map(vae, unet, image, embeds, 999, alphas)
            terms = loss_fn(image, output, 40.0)
        terms.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return terms.loss.item()

    resident_after_load = _rss()
    exact_peak = _reset_peak()
    step()  # warm-up (allocates Adam state and caches)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    peak = _peak() if exact_peak else _rss()
    step_seconds = sorted(times)[len(times) // 2]
    surrogate_costs = {  # timed once per crop size, in the baseline setting's worker
        f"{name} {kind}": surrogate_seconds(
            name, image, args.threads, autocast=kind == "bf16", repeats=args.surrogate_repeats, loop=kind == "loop"
        )
        for name in (args.surrogates if setting == SETTINGS[0] else [])
        for kind in args.surrogate_precisions
    }
    return {
        "setting": setting,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "step_seconds": step_seconds,
        "step_seconds_all": times,
        "resident_after_load_gib": resident_after_load / GIB,
        "step_memory_gib": max(0, peak - resident_after_load) / GIB,
        "peak_exact": exact_peak,
        "loss": loss,
        "surrogate": surrogate_name,
        "surrogate_seconds": surrogate_costs,
        "surrogate_fraction_of_step": {k: v / step_seconds for k, v in surrogate_costs.items()},
        **counts,
    }


def surrogate_seconds(name: str, image, threads: int, autocast: bool, repeats: int = 3, loop: bool = False) -> float:
    """Median seconds of one forward + backward of surrogate ``name`` (its default quality; DiffJPEG at 40, as in
    the step) on ``image`` (the step's crop and batch), in float32 or under the step's bf16 autocast, after one
    warm-up call. ``loop``: through ``CodecInTheLoop`` (one real encode + decode per image, then the surrogate's
    forward + backward); ``--rate_weighting codec_slope`` adds two more real encodes per image, without a gradient."""
    import torch

    from rp_diffusers.surrogates import CodecInTheLoop, get_surrogate

    torch.set_num_threads(threads)
    surrogate = get_surrogate(name)
    if loop:
        surrogate = CodecInTheLoop(surrogate, workers=threads)
    quality = 40.0 if name == "jpeg" else surrogate.default_quality
    times = []
    for i in range(repeats + 1):
        x = image.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = surrogate(x, quality)
            loss = out.reconstruction.float().square().mean() + out.bits.float().mean()
        loss.backward()
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def memory_fit(rows: list[dict]) -> tuple[float, float]:
    """Step memory (GiB) = fixed + per_pixel x (batch x H x W), least squares over the measured sizes.

    With a single size the fixed part is taken as 0 (an upper bound when scaling up).
    """
    pixels = [r["batch_size"] * r["resolution"] ** 2 for r in rows]
    memory = [r["step_memory_gib"] for r in rows]
    if len(set(pixels)) < 2:
        return 0.0, memory[0] / pixels[0]
    mean_p, mean_m = sum(pixels) / len(pixels), sum(memory) / len(memory)
    slope = sum((p - mean_p) * (m - mean_m) for p, m in zip(pixels, memory)) / sum((p - mean_p) ** 2 for p in pixels)
    return max(0.0, mean_m - slope * mean_p), slope


def gpu_estimate(row: dict, fit: tuple[float, float], args: argparse.Namespace) -> float:
    """GiB on a GPU at the target size: weights + LoRA/Adam + fitted step memory + CUDA overhead (ESTIMATE)."""
    weights = 2 * (row["unet_params"] + row["vae_params"]) + 4 * row["dists_params"]
    lora_state = 16 * row["lora_params"]  # fp32 weight, gradient, two Adam moments
    fixed, per_pixel = fit
    step = fixed + per_pixel * args.target_batch_size * args.target_resolution**2
    return (weights + lora_state) / GIB + step + CUDA_OVERHEAD_GIB


def main(args: argparse.Namespace) -> dict:
    if args.worker is not None:
        setting, resolution = args.worker.split(":")
        args.resolution = int(resolution)
        print("RESULT " + json.dumps(worker(setting, args)), flush=True)
        return {}
    rows = []
    for setting in args.settings:
        for resolution in args.resolutions:
            command = [sys.executable, __file__, *sys.argv[1:], "--worker", f"{setting}:{resolution}"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"worker {setting} at {resolution} failed:\n{done.stderr[-3000:]}")
            row = json.loads(lines[-1][len("RESULT ") :])
            rows.append(row)
            print(f"{setting} {resolution}px: {row['step_seconds']:.1f} s/step, {row['step_memory_gib']:.2f} GiB")
    for setting in args.settings:
        own = [r for r in rows if r["setting"] == setting]
        fit = memory_fit(own)
        for row in own:
            row["memory_fit_fixed_gib"], row["memory_fit_gib_per_megapixel"] = fit[0], fit[1] * 1e6
            # the estimate assumes the bf16 step's activations; a float32 step's memory would overstate it
            row["gpu_estimate_gib"] = gpu_estimate(row, fit, args) if args.step_precision == "bf16" else None
    for row in rows:
        baseline = next(
            (r for r in rows if r["setting"] == "no_checkpointing" and r["resolution"] == row["resolution"]), row
        )
        row["time_ratio_to_baseline"] = row["step_seconds"] / baseline["step_seconds"]
        row["memory_ratio_to_baseline"] = row["step_memory_gib"] / max(baseline["step_memory_gib"], 1e-9)
    first = rows[0]
    print(
        f"\nStage-2 step, SD 2.1 size ({first['unet_params'] / 1e6:.0f}M UNet + {first['vae_params'] / 1e6:.0f}M "
        f"VAE params, LoRA rank {args.rank}: {first['lora_params'] / 1e6:.2f}M), batch {args.batch_size}, "
        f"{'bf16 autocast' if args.step_precision == 'bf16' else 'float32'}, CPU {args.threads} threads, "
        f"surrogate: {first['surrogate']}"
    )
    header = (
        "| setting | crop | s/step (CPU) | x baseline | step memory GiB (CPU) | x baseline | resident after load GiB | "
        f"GPU {args.target_resolution}px batch {args.target_batch_size} GiB (ESTIMATE) |"
    )
    print(header + "\n|" + " --- |" * 8)
    for row in rows:
        print(
            f"| {row['setting']} | {row['resolution']} | {row['step_seconds']:.1f} | {row['time_ratio_to_baseline']:.2f} | "
            f"{row['step_memory_gib']:.2f} | {row['memory_ratio_to_baseline']:.2f} | "
            f"{row['resident_after_load_gib']:.2f} | "
            f"{'-' if row['gpu_estimate_gib'] is None else format(row['gpu_estimate_gib'], '.1f')} |"
        )
    costs = [r for r in rows if r["surrogate_seconds"]]
    if costs:
        print(
            "\nSurrogate forward + backward on the same crop and batch, against the no-checkpointing step (CPU): "
            "fp32, under the step's bf16 autocast (bf16), with the real codec in the forward pass (loop)"
        )
        kinds = args.surrogate_precisions
        print(
            "| surrogate | crop | "
            + " | ".join(f"{k} ms | x step" for k in kinds)
            + " |\n|"
            + " --- |" * (2 + 2 * len(kinds))
        )
        for row in costs:
            for name in args.surrogates:
                cells = [
                    f"{row['surrogate_seconds'][f'{name} {kind}'] * 1e3:.0f} | "
                    f"{row['surrogate_fraction_of_step'][f'{name} {kind}']:.2%}"
                    for kind in args.surrogate_precisions
                ]
                print(f"| {name} | {row['resolution']} | " + " | ".join(cells) + " |")
    report = {
        "name": "training-stage2-step",
        "description": __doc__.split("\n")[0],
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "resolution")},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "gpu_estimate_note": (
            "estimate, not measured: bf16 weights + LoRA/Adam + the CPU step memory fitted as "
            f"fixed + per-pixel and evaluated at the target size + {CUDA_OVERHEAD_GIB} GiB CUDA overhead"
            if args.step_precision == "bf16"
            else "not estimated: this run's step is float32 (--step-precision fp32), and the estimate assumes the "
            "bf16 step's memory"
        ),
        "results": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(parse_args())
