#!/usr/bin/env python
"""Stage 1 of the compact default model, scaled down for a CPU: a small VAE and a residual one-step restorer.

No SD teacher is available offline, so stage 1 of the method of Guo et al. 2025 (arXiv:2512.15270), distillation
into a one-step model, is adapted:

1. a small ``AutoencoderKL`` (factor 2, no attention) is trained to near-lossless reconstruction (L1 + MSE + a tiny
   KL term) on random crops of --train_data_dir;
2. a small ``UNet2DConditionModel`` (attention only in its mid block, lowest resolution) is trained, VAE frozen, as
   a residual one-step restorer: x0 = Enc(x~) + UNet(Enc(x~)), input x~ = lightly degraded crop (Gaussian noise),
   target = the clean crop, loss MSE + (1 - MS-SSIM). Its last conv starts at zero, so the base starts at the
   identity (in latent space) and stays near it.

The result is a folder ``RPPreprocessPipeline.from_pretrained`` loads (fixed random prompt embedding, no text
encoder; ``residual=True``, ``prediction_type="sample"``), the base stage 2 (``training/finetune_rp.py``) adapts.

    accelerate launch training/train_compact_base.py --train_data_dir photos/ \
      --validation_data_dir val/ --vae_steps 200 --unet_steps 10 --output_dir compact-base

(``training/compact_recipe.sh`` holds the exact commands of the shipped model.)
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from rp_diffusers.metrics import computable, ms_ssim, psnr
from rp_diffusers.models.one_step import decode_latents, encode_image, one_step_map
from rp_diffusers.pipelines import RPPreprocessPipeline
from rp_diffusers.training_utils import (
    RandomCropImageDataset,
    build_optimizer,
    collate_images,
    end_run,
    load_image_dataset,
    make_accelerator,
    optimizer_step,
    step_generator,
)
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor
from rp_diffusers.utils.tiling import crop_to_size, pad_to_multiple

logger = get_logger(__name__, log_level="INFO")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Stage 1 (compact): train a small VAE and a residual one-step UNet.")
    # model
    parser.add_argument(
        "--vae_type",
        type=str,
        default="kl",
        choices=["kl", "tiny"],
        help="kl: AutoencoderKL (GroupNorm, SD's VAE class); tiny: AutoencoderTiny (TAESD's class: plain convs, "
        "no normalisation, so tiles and crops see the same maps as whole images).",
    )
    parser.add_argument(
        "--vae_init",
        type=str,
        default="random",
        choices=["random", "identity"],
        help="tiny with one level only: 'identity' sets the autoencoder to an exact identity (latents = the pixels "
        "scaled to [-latent_scale, latent_scale], scaling_factor = 1 / latent_scale) before any VAE step.",
    )
    parser.add_argument(
        "--latent_scale", type=float, default=0.1, help="identity init: raw latent range (keeps the tanh linear)."
    )
    parser.add_argument("--vae_channels", type=int, nargs="+", default=[16, 32], help="VAE block_out_channels.")
    parser.add_argument(
        "--vae_blocks", type=int, nargs="+", default=None, help="tiny: AutoencoderTiny blocks per level (default 1s)."
    )
    parser.add_argument("--latent_channels", type=int, default=12, help="VAE latent channels (12 = 2x2x3 pixels).")
    parser.add_argument("--unet_channels", type=int, nargs="+", default=[16, 32, 32], help="UNet block_out_channels.")
    parser.add_argument("--cross_attention_dim", type=int, default=32, help="Width of the fixed prompt embedding.")
    parser.add_argument("--prompt_length", type=int, default=8, help="Tokens of the fixed (random) prompt embedding.")
    parser.add_argument("--timestep", type=int, default=999, help="The fixed t* recorded in the pipeline.")
    # data
    parser.add_argument("--train_data_dir", type=str, required=True, help="A folder of training images.")
    parser.add_argument("--validation_data_dir", type=str, default=None, help="Folder of validation images.")
    parser.add_argument("--num_validation_images", type=int, default=13, help="Validation images used (first N).")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N images.")
    parser.add_argument("--vae_resolution", type=int, default=96, help="Crop size of the VAE phase.")
    parser.add_argument("--unet_resolution", type=int, default=192, help="Crop size of the UNet phase (>= 161).")
    parser.add_argument("--random_flip", action="store_true", help="Random horizontal flips.")
    parser.add_argument("--vae_batch_size", type=int, default=8, help="Batch size of the VAE phase.")
    parser.add_argument("--unet_batch_size", type=int, default=4, help="Batch size of the UNet phase.")
    # optimisation
    parser.add_argument("--vae_steps", type=int, default=1500, help="Optimisation steps of the VAE phase.")
    parser.add_argument("--unet_steps", type=int, default=300, help="Optimisation steps of the UNet phase.")
    parser.add_argument("--vae_learning_rate", type=float, default=2e-3, help="Peak learning rate of the VAE.")
    parser.add_argument("--unet_learning_rate", type=float, default=2e-4, help="Peak learning rate of the UNet.")
    parser.add_argument("--lr_scheduler", type=str, default="cosine", help="diffusers' get_scheduler name.")
    parser.add_argument("--lr_warmup_steps", type=int, default=50, help="Warm-up steps of each phase.")
    parser.add_argument(
        "--max_minutes",
        type=float,
        default=None,
        help="Stop each phase after this many minutes (the steps done are recorded in stage1_metrics.json).",
    )
    parser.add_argument("--kl_weight", type=float, default=1e-7, help="Weight of the VAE's KL term.")
    parser.add_argument("--ssim_weight", type=float, default=0.05, help="Weight of 1 - MS-SSIM in the UNet phase.")
    parser.add_argument("--noise_max", type=float, default=0.02, help="Largest sigma of the input noise (UNet phase).")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of everything random.")
    parser.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"], help="AMP.")
    parser.add_argument("--output_dir", type=str, default="compact-base", help="Where the pipeline folder goes.")
    return parser.parse_args(input_args)


def build_models(args) -> tuple[AutoencoderKL | AutoencoderTiny, UNet2DConditionModel, DDPMScheduler, torch.Tensor]:
    """Seeded untrained components: VAE (no attention), UNet (mid-block attention only, zero last conv), embedding."""
    torch.manual_seed(args.seed)
    n = len(args.vae_channels)
    if args.vae_type == "tiny":
        blocks = tuple(args.vae_blocks or (1,) * n)
        vae = AutoencoderTiny(
            encoder_block_out_channels=tuple(args.vae_channels),
            decoder_block_out_channels=tuple(args.vae_channels),
            num_encoder_blocks=blocks,
            num_decoder_blocks=tuple(reversed(blocks)),
            latent_channels=args.latent_channels,
            scaling_factor=1.0 / args.latent_scale if args.vae_init == "identity" else 1.0,
        )
        if args.vae_init == "identity":
            init_tiny_identity(vae, args.latent_scale)
    elif args.vae_init == "identity":
        raise ValueError("--vae_init identity needs --vae_type tiny")
    else:
        vae = _kl_vae(args, n)
    return vae, *_unet_scheduler_embeds(args)


@torch.no_grad()
def init_tiny_identity(vae: AutoencoderTiny, latent_scale: float) -> None:
    """Make a one-level ``AutoencoderTiny`` an identity: latents = latent_scale * (2 * rgb - 1), decoded back.

    Only the RGB path is set: the first three channels of every conv carry the pixels, each residual block's last
    conv is zeroed (so the block is a ReLU, the identity on [0, 1] values), the other channels keep their random
    weights but start with zero outgoing weights, so they receive gradients and can be learned later. The decoder's
    ``tanh(x / 3) * 3`` is linear to within 4e-4 (relative) on latents of magnitude 0.1; measured round trip on
    random images: 67 dB at latent_scale 0.1.
    """
    enc, dec = vae.encoder.layers, vae.decoder.layers
    if len(vae.config.encoder_block_out_channels) != 1 or vae.config.latent_channels < 3:
        raise ValueError("identity init needs a one-level AutoencoderTiny (factor 1) with >= 3 latent channels")
    eye = torch.zeros(3, 3, 3, 3)
    eye[range(3), range(3), 1, 1] = 1.0

    def set_rgb(conv, scale: float, bias: float, zero_other_inputs: bool):
        if zero_other_inputs:
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
        conv.weight[:3, :3] = eye * scale
        conv.weight[:3, 3:] = 0.0
        if conv.bias is not None:
            conv.bias[:3] = bias

    set_rgb(enc[0], 1.0, 0.0, zero_other_inputs=False)  # [0, 1] RGB into channels 0-2
    set_rgb(enc[-1], 2 * latent_scale, -latent_scale, zero_other_inputs=True)
    set_rgb(dec[0], 1.0 / (2 * latent_scale), 0.5, zero_other_inputs=False)
    set_rgb(dec[-1], 1.0, 0.0, zero_other_inputs=True)
    for module in vae.modules():
        if type(module).__name__ == "AutoencoderTinyBlock":
            last = module.conv[-1]
            last.weight.zero_()
            last.bias.zero_()


def _kl_vae(args, n: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(args.vae_channels),
        layers_per_block=1,
        latent_channels=args.latent_channels,
        norm_num_groups=8,
        sample_size=args.vae_resolution,
        scaling_factor=1.0,
        mid_block_add_attention=False,  # attention at half resolution would be quadratic in the pixels
    )


def _unet_scheduler_embeds(args):
    m = len(args.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=args.latent_channels,
        out_channels=args.latent_channels,
        down_block_types=("DownBlock2D",) * m,
        up_block_types=("UpBlock2D",) * m,
        mid_block_type="UNetMidBlock2DCrossAttn",  # the only attention: lowest resolution, where LoRA also goes
        block_out_channels=tuple(args.unet_channels),
        layers_per_block=1,
        cross_attention_dim=args.cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=True,
    )
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="sample"
    )
    generator = torch.Generator().manual_seed(args.seed)
    embeds = torch.randn(1, args.prompt_length, args.cross_attention_dim, generator=generator)
    return unet, scheduler, embeds


def loader(args, dataset, column, resolution: int, batch_size: int, seed: int):
    data = RandomCropImageDataset(dataset, column, resolution, seed, random_flip=args.random_flip)
    return data, torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate_images)


def batches(data, dataloader, steps: int):
    """Yield ``steps`` batches, cycling epochs (each epoch draws new crops)."""
    step, epoch = 0, 0
    while True:
        data.set_epoch(epoch)
        for batch in dataloader:
            yield batch["pixel_values"]
            step += 1
            if step >= steps:
                return
        epoch += 1


@torch.no_grad()
def validate(vae, unet, embeds, scheduler, files, residual_map: bool, timestep: int) -> dict:
    """Mean PSNR / MS-SSIM of the VAE reconstruction and of the full one-step map on whole validation images."""
    rows = {"vae_psnr": [], "vae_ms_ssim": [], "map_psnr": [], "map_ms_ssim": []}
    multiple = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(unet.config.block_out_channels) - 1)
    for path in files:
        image = pil_to_tensor(load_image(path))
        padded, size = pad_to_multiple(image, multiple)
        recon = crop_to_size(decode_latents(vae, encode_image(vae, padded)), size).clamp(0, 1)
        rows["vae_psnr"].append(float(psnr(image, recon)))
        rows["vae_ms_ssim"].append(float(ms_ssim(image, recon)) if computable("ms_ssim", *size) else float("nan"))
        if residual_map:
            out = one_step_map(vae, unet, padded, embeds, timestep, scheduler.alphas_cumprod, "sample", residual=True)
            out = crop_to_size(out, size).clamp(0, 1)
            rows["map_psnr"].append(float(psnr(image, out)))
            rows["map_ms_ssim"].append(float(ms_ssim(image, out)) if computable("ms_ssim", *size) else float("nan"))
    return {k: sum(v) / len(v) for k, v in rows.items() if v}


def train_phase(accelerator, name, model, params, stream, steps, lr, args, compute_loss):
    optimizer = build_optimizer(params, lr, weight_decay=0.0)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=steps
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    model.train()
    bar = tqdm(range(steps), desc=name, disable=not accelerator.is_local_main_process, mininterval=10)
    start, done = time.monotonic(), 0
    for step, clean in enumerate(stream):
        if args.max_minutes is not None and time.monotonic() - start > 60 * args.max_minutes:
            logger.info(f"{name}: time budget spent after {step} steps")
            break
        clean = clean.to(accelerator.device)
        with accelerator.autocast():
            loss, logs = compute_loss(clean, step)
        optimizer_step(accelerator, loss, model, optimizer, lr_scheduler, args.max_grad_norm)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.5f}", **logs)
        accelerator.log({f"{name}/loss": loss.item(), **{f"{name}/{k}": v for k, v in logs.items()}}, step=step)
        done = step + 1
    model.eval()
    return accelerator.unwrap_model(model), done


def main(args):
    accelerator = make_accelerator(args)  # + logging, seed, output_dir/args.json
    output_dir = Path(args.output_dir)
    vae, unet, scheduler, embeds = build_models(args)
    dataset, column = load_image_dataset(train_data_dir=args.train_data_dir, max_samples=args.max_train_samples)
    files = list_images(args.validation_data_dir)[: args.num_validation_images] if args.validation_data_dir else []

    # 1. VAE: near-lossless reconstruction (the mean of the posterior is what the pipeline uses)
    def vae_loss(clean, step):
        encoded = vae.encode(clean * 2 - 1)
        posterior = getattr(encoded, "latent_dist", None)
        latents = encoded.latents if posterior is None else posterior.mode()
        recon = vae.decode(latents).sample * 0.5 + 0.5
        mse = F.mse_loss(recon, clean)
        loss = F.l1_loss(recon, clean) + mse
        if posterior is not None:
            loss = loss + args.kl_weight * posterior.kl().mean()
        return loss, {"psnr": f"{-10 * math.log10(max(mse.item(), 1e-10)):.2f}"}

    vae_done = 0
    if args.vae_steps > 0:
        data, dl = loader(args, dataset, column, args.vae_resolution, args.vae_batch_size, args.seed)
        vae, vae_done = train_phase(
            accelerator, "vae", vae, vae.parameters(), batches(data, dl, args.vae_steps), args.vae_steps,
            args.vae_learning_rate, args, vae_loss,
        )  # fmt: skip
    vae.requires_grad_(False)
    metrics = {"vae_steps": vae_done}
    if files:
        metrics.update(validate(vae, unet, embeds, scheduler, files, residual_map=False, timestep=args.timestep))
        logger.info(f"after the VAE phase: {metrics}")

    # 2. UNet: residual one-step restorer, degraded input -> clean target, VAE frozen
    alphas = scheduler.alphas_cumprod

    def unet_loss(clean, step):
        generator = step_generator(args.seed, 1, step)
        sigma = torch.rand(clean.shape[0], 1, 1, 1, generator=generator) * args.noise_max
        degraded = (clean + sigma * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
        out = one_step_map(vae, unet, degraded, embeds, args.timestep, alphas, "sample", residual=True)
        mse = F.mse_loss(out, clean)
        if args.ssim_weight == 0 or not computable("ms_ssim", *clean.shape[-2:]):  # the metrics' size rule
            return mse, {"mse": f"{mse.item():.6f}"}
        msssim = ms_ssim(clean, out.clamp(0, 1), quantize=False).mean()
        return mse + args.ssim_weight * (1 - msssim), {"mse": f"{mse.item():.6f}", "ms_ssim": f"{msssim.item():.4f}"}

    unet_done = 0
    if args.unet_steps > 0:
        data, dl = loader(args, dataset, column, args.unet_resolution, args.unet_batch_size, args.seed + 1)
        unet, unet_done = train_phase(
            accelerator, "unet", unet, unet.parameters(), batches(data, dl, args.unet_steps), args.unet_steps,
            args.unet_learning_rate, args, unet_loss,
        )  # fmt: skip
    unet.requires_grad_(False)
    metrics["unet_steps"] = unet_done
    if files:
        metrics.update(validate(vae, unet, embeds, scheduler, files, residual_map=True, timestep=args.timestep))
        logger.info(f"after the UNet phase: {metrics}")

    # 3. Save the pipeline folder (prompt embedding saved with it; no text encoder needed)
    if accelerator.is_main_process:
        pipe = RPPreprocessPipeline(vae=vae, unet=unet, scheduler=scheduler, timestep=args.timestep, residual=True)
        pipe._prompt_embeds = embeds
        pipe.save_pretrained(output_dir)
        # An exact autoencoder scores an infinite 8-bit PSNR: write it as a string (JSON has no Infinity)
        metrics = {k: "inf (8-bit identical)" if v == math.inf else v for k, v in metrics.items()}
        (output_dir / "stage1_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    end_run(accelerator)


if __name__ == "__main__":
    main(parse_args())
