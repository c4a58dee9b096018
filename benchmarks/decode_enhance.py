"""Time PerceptualDecodePipeline's presets on real model sizes (random weights) against one plain model call.

Models (configs written in code, weights random: speed does not depend on them):
- ``cm64``: openai/diffusers-cd_imagenet64_lpips' UNet2DModel (296M parameters, 64x64, class-conditional) with
  its CMStochasticIterativeScheduler; larger images run as 64x64 tiles with 16-pixel overlap.
- ``adm64``: the same UNet with a DDPM (VP) schedule, so ``medium`` is the paper's few-step DPM-Solver ODE.
- ``sd-turbo``: SD 2.1 / SD-Turbo's UNet2DConditionModel (865M) and AutoencoderKL (84M), latent space.

The baseline is one plain model call on one native-size input (a 64x64 tile, or the latent of the image for
SD), measured in the same run; each preset's time is reported as seconds and as a multiple of that call. The paper's
budgets (A30 GPU, 256x256): fast ~0.1 s, medium 1-10 s, slow >10 s.

Example:
    python benchmarks/decode_enhance.py --models cm64 --sizes 64,128 --presets fast,medium,slow
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import torch

from rp_diffusers.utils.testing import SD21_UNET_CONFIG, SD21_VAE_CONFIG

CM64_UNET = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 3,
    "num_class_embeds": 1000,
    "block_out_channels": [192, 384, 576, 768],
    "attention_head_dim": 64,
    "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
    "resnet_time_scale_shift": "scale_shift",
    "upsample_type": "resnet",
    "downsample_type": "resnet",
}  # diffusers' scripts/convert_consistency_to_diffusers.py, IMAGENET_64_UNET_CONFIG


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time PerceptualDecodePipeline presets on real model sizes.")
    parser.add_argument("--models", default="cm64", help="comma-separated: cm64, adm64, sd-turbo")
    parser.add_argument("--sizes", default="64,128", help="comma-separated square image sides in pixels")
    parser.add_argument("--presets", default="fast,medium,slow", help="comma-separated presets")
    parser.add_argument("--steps", default="", help="steps per preset, e.g. medium=2,slow=4 (default: the pipeline's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per cell (the minimum is reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="benchmarks/results/decode_enhance.json", help="JSON results file")
    return parser.parse_args(input_args)


def build_pipeline(name: str):
    from diffusers import (
        AutoencoderKL,
        CMStochasticIterativeScheduler,
        DDPMScheduler,
        UNet2DConditionModel,
        UNet2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from rp_diffusers.pipelines.perceptual_decode import PerceptualDecodePipeline
    from rp_diffusers.utils.testing import tiny_clip_tokenizer

    torch.manual_seed(0)
    if name in ("cm64", "adm64"):
        scheduler = (
            CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
            if name == "cm64"
            else DDPMScheduler(beta_schedule="linear")
        )
        return PerceptualDecodePipeline(unet=UNet2DModel(**CM64_UNET).eval(), scheduler=scheduler)
    if name == "sd-turbo":
        # A one-layer text encoder of SD's width: it runs once per call to embed the empty prompt (not timed apart).
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=1024,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=8,
                vocab_size=128,
                max_position_embeddings=16,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
        return PerceptualDecodePipeline(
            unet=UNet2DConditionModel(**SD21_UNET_CONFIG).eval(),
            vae=AutoencoderKL(**SD21_VAE_CONFIG).eval(),
            scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
            text_encoder=text_encoder.eval(),
            tokenizer=tiny_clip_tokenizer(),
        )
    raise ValueError(f"unknown model {name!r}; use cm64, adm64 or sd-turbo")


def blur_surrogate(image, quality=None):
    """A differentiable stand-in codec (3x3 box blur) used when DiffJPEG is not available."""
    kernel = torch.full((3, 1, 3, 3), 1 / 9, device=image.device, dtype=image.dtype)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(image, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)


def jpeg_surrogate():
    try:
        from rp_diffusers.surrogates import get_surrogate

        return get_surrogate("jpeg"), "DiffJPEG q=30"
    except (ImportError, FileNotFoundError, KeyError, ValueError):
        return blur_surrogate, "3x3 blur (DiffJPEG unavailable)"


def time_call(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def baseline_seconds(pipe, size: int, device: str, repeats: int) -> float:
    """One plain model call on one native input: a 64x64 tile (pixel models) or the image's latent (SD)."""
    unet = pipe.unet
    with torch.no_grad():
        if pipe.is_latent:
            latent = torch.randn(1, 4, size // 8, size // 8, device=device)
            embeds = torch.randn(1, 77, unet.config.cross_attention_dim, device=device)
            return time_call(
                lambda: unet(latent, torch.tensor([500.0], device=device), encoder_hidden_states=embeds), repeats
            )
        tile = torch.randn(1, 3, 64, 64, device=device)
        labels = torch.tensor([1], device=device) if unet.config.num_class_embeds else None
        return time_call(lambda: unet(tile, torch.tensor([1.0], device=device), class_labels=labels), repeats)


class CallCounter:
    """Counts model evaluations (batch items: one per tile per step) through a forward pre-hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module, inputs) -> None:
        self.count += len(inputs[0])


def bench_model(model: str, args: argparse.Namespace, surrogate, surrogate_name: str, steps: dict) -> list[dict]:
    pipe = build_pipeline(model).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    counter = CallCounter(pipe.unet)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        base = baseline_seconds(pipe, size, args.device, args.repeats)
        rows.append(
            {
                "model": model,
                "size": size,
                "preset": "baseline (1 model call)",
                "seconds": base,
                "model_evals": 1,
                "x_baseline": 1.0,
            }
        )
        print(f"{model:>9} {size:>5} {'baseline':>8} {base:9.3f}s", flush=True)
        for preset in args.presets.split(","):
            num_steps = int(steps[preset]) if preset in steps else None
            counter.count = 0
            call = partial(
                pipe,
                image,
                preset=preset,
                sigma=0.5,
                num_steps=num_steps,
                codec="jpeg",
                quality=30,
                surrogate=surrogate,
                output_type="pt",
            )
            seconds = time_call(call, args.repeats)
            row = {
                "model": model,
                "size": size,
                "preset": preset,
                "num_steps": num_steps,
                "seconds": seconds,
                "model_evals": counter.count // args.repeats,
                "x_baseline": seconds / base,
                "surrogate": surrogate_name if preset == "slow" else None,
                "load_1min": os.getloadavg()[0],
            }
            rows.append(row)
            print(
                f"{model:>9} {size:>5} {preset:>8} {seconds:9.3f}s  {row['model_evals']:>4} model evals "
                f"(x{row['x_baseline']:.1f} baseline)",
                flush=True,
            )
    return rows


def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    steps = dict(item.split("=") for item in args.steps.split(",") if item)
    surrogate, surrogate_name = jpeg_surrogate()
    rows = []
    for model in args.models.split(","):
        rows += bench_model(model, args, surrogate, surrogate_name, steps)
    return rows


def write(rows: list[dict], args: argparse.Namespace) -> None:
    print("\n| model | size | preset | seconds | model evals (tiles x steps) | x one model call |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['size']} | {r['preset']} | {r['seconds']:.3f} | {r['model_evals']} | "
            f"{r['x_baseline']:.1f} |"
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.is_file():  # keep earlier rows of cells not re-measured in this run (runs per model are long on CPU)
        measured = {(r["model"], r["size"], r["preset"]) for r in rows}
        earlier = json.loads(output.read_text()).get("results", [])
        rows = [r for r in earlier if (r["model"], r["size"], r["preset"]) not in measured] + rows
    meta = {
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "load_average_1min_at_end": os.getloadavg()[0],  # other jobs on the machine inflate absolute times
        "note": "random weights; the paper's budgets are A30 GPU times at 256x256 (fast 0.1 s, medium 1-10 s)",
    }
    output.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    arguments = parse_args()
    write(main(arguments), arguments)
