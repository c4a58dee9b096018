"""Stage 2 by imitation: train a rate-perception LoRA to reproduce per-image pre-edits (the ceiling), not their loss.

``finetune_rp.py`` follows the straight-through gradient of the rate-perception loss through the codec surrogate;
on a small model that gradient leads the adapter to large colour changes the real codec punishes. Per-image
pre-editing (``benchmarks/preedit_ceiling.py``) takes small steps on each image's own pixels and does reach the
objective's gains. This script computes such edits on random training crops (random quality in the range, the
same objective, the exact DiffJPEG forward), then fits the adapter to map each crop to its edit (MSE), so the
network learns the edits' common part. The adapter folder is the same as ``finetune_rp.py``'s. It is a plain
one-process loop over crops held in memory (the edits are computed once, up front), with no checkpoints: a short
CPU run, not an Accelerate script on ``rp_diffusers.training_utils.runner``.

    python training/distill_preedits.py --pretrained_model_name_or_path BASE --train_data_dir photos/ \
        --perceptual_loss "ssimulacra2+3*vif" --output_dir rp_jpeg_preedit
"""

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rp_diffusers.adapters import rp_lora_config, save_rp_adapter
from rp_diffusers.losses import RatePerceptionLoss, parse_perceptual, perceptual_distance
from rp_diffusers.models.one_step import one_step_map
from rp_diffusers.pipelines import RPPreprocessPipeline
from rp_diffusers.surrogates import get_surrogate
from rp_diffusers.training_utils.preedit import pre_edit
from rp_diffusers.utils.image import list_images, load_image


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="The base pipeline folder.")
    parser.add_argument("--train_data_dir", required=True, help="Training photographs (a folder).")
    parser.add_argument("--output_dir", required=True, help="Adapter folder to write.")
    parser.add_argument("--codec", default="jpeg", choices=["jpeg"], help="Codec (DiffJPEG is exact for jpeg).")
    parser.add_argument("--lambda_rate", type=float, default=1.0, help="Multiplier of the codec's own slope.")
    parser.add_argument("--perceptual_loss", default="ssimulacra2+3*vif", help="The edits' perceptual distance.")
    parser.add_argument("--lambda_mse", type=float, default=1.0, help="Weight of the MSE in the edits' objective.")
    parser.add_argument("--quality_range", type=int, nargs=2, default=[15, 80], help="Qualities drawn per crop.")
    parser.add_argument("--num_crops", type=int, default=200, help="Training crops to edit.")
    parser.add_argument("--resolution", type=int, default=192, help="Crop side.")
    parser.add_argument("--edit_steps", type=int, default=30, help="Adam steps per edit.")
    parser.add_argument("--edit_learning_rate", type=float, default=1e-3, help="Adam step on pixels.")
    parser.add_argument("--max_train_steps", type=int, default=600, help="Adapter steps.")
    parser.add_argument("--train_batch_size", type=int, default=4, help="Crops per adapter step.")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="Adapter learning rate.")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank.")
    parser.add_argument(
        "--lora_target_modules",
        nargs="+",
        default=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out"],
        help="Module-name suffixes to adapt.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of crops, qualities and the adapter.")
    parser.add_argument(
        "--edits_cache",
        default=None,
        help="A .safetensors file of crops and their edits: read if it exists (same settings), else written.",
    )
    args = parser.parse_args(argv)
    parse_perceptual(args.perceptual_loss)  # a clear error for an unknown distance
    if args.num_crops < args.train_batch_size:
        parser.error("--num_crops must be at least --train_batch_size")
    return args


def random_crops(paths, count: int, size: int, rng: random.Random) -> list[torch.Tensor]:
    crops = []
    while len(crops) < count:
        image = load_image(rng.choice(paths))
        if min(image.size) < size:
            continue
        left, top = rng.randint(0, image.width - size), rng.randint(0, image.height - size)
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
        crops.append(torch.from_numpy(array).permute(2, 0, 1))
    return crops


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    paths = list_images([args.train_data_dir])
    if not paths:
        raise SystemExit(f"no images in {args.train_data_dir}")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    # 1. Per-image pre-edits of random crops at random qualities (the targets)
    loss_fn = RatePerceptionLoss(
        get_surrogate(args.codec),
        perceptual_distance(args.perceptual_loss),
        lambda_rate=args.lambda_rate,
        lambda_perceptual=1.0,
        lambda_mse=args.lambda_mse,
        rate_weighting="codec_slope",
    )
    cache = Path(args.edits_cache) if args.edits_cache else None
    if cache is not None and cache.is_file():
        from safetensors.torch import load_file

        stored = load_file(str(cache))
        inputs, targets, gains = stored["crops"], stored["edits"], stored["gains"].tolist()
        print(f"read {len(inputs)} crops and their edits from {cache}")
    else:
        crops = random_crops(paths, args.num_crops, args.resolution, rng)
        targets, gains = [], []
        for crop in tqdm(crops, desc="pre-editing crops"):
            quality = rng.randint(*args.quality_range)
            edited, trace = pre_edit(loss_fn, crop[None], quality, args.edit_steps, args.edit_learning_rate)
            targets.append(edited[0])
            gains.append(trace[0] - trace[-1])
        inputs, targets = torch.stack(crops), torch.stack(targets)
        if cache is not None:
            from safetensors.torch import save_file

            cache.parent.mkdir(parents=True, exist_ok=True)
            save_file({"crops": inputs, "edits": targets, "gains": torch.tensor(gains)}, str(cache))

    # 2. Fit the adapter: G(crop) -> its edit
    pipe = RPPreprocessPipeline.from_pretrained(args.pretrained_model_name_or_path)
    pipe.drop_text_encoder()
    vae, unet = pipe.vae.requires_grad_(False), pipe.unet.requires_grad_(False)
    name = f"rp_{args.codec}_lambda_{args.lambda_rate:g}".replace(".", "p")
    unet.add_adapter(rp_lora_config(rank=args.rank, target_modules=tuple(args.lora_target_modules)), adapter_name=name)
    with torch.no_grad():  # where the base model (adapter off) stands against the edits
        base_out = torch.cat(
            [
                one_step_map(vae, unet, inputs[i : i + 8], pipe.prompt_embeds, pipe.config.timestep,
                             pipe.scheduler.alphas_cumprod, pipe.scheduler.config.get("prediction_type", "epsilon"),
                             residual=pipe.config.residual)
                for i in range(0, len(inputs), 8)
            ]
        )  # fmt: skip
        base_mse = float(torch.nn.functional.mse_loss(base_out, targets))
    pipe.set_adapters([name])
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0)
    embeds, alphas = pipe.prompt_embeds, pipe.scheduler.alphas_cumprod
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    losses = []
    bar = tqdm(range(args.max_train_steps), desc="adapter")
    for _ in bar:
        index = torch.randint(0, len(inputs), (args.train_batch_size,))
        x, y = inputs[index], targets[index]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        out = one_step_map(
            vae, unet, x, embeds, pipe.config.timestep, alphas, prediction, residual=pipe.config.residual
        )
        loss = torch.nn.functional.mse_loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss))
        bar.set_postfix(mse=f"{np.mean(losses[-50:]):.2e}")
    with torch.no_grad():
        identity = float(torch.nn.functional.mse_loss(inputs, targets))
    extra = {
        "training": "training/distill_preedits.py (imitation of per-image pre-edits)",
        "perceptual_loss": args.perceptual_loss,
        "lambda_perceptual": 1.0,
        "lambda_mse": args.lambda_mse,
        "rate_weighting": "codec_slope",
        "surrogate": args.codec,
        "quality_range": list(args.quality_range),
        "num_crops": args.num_crops,
        "edit_steps": args.edit_steps,
        "max_train_steps": args.max_train_steps,
        "fit_mse_last_50": float(np.mean(losses[-50:])),
        "identity_mse_to_edits": identity,
        "base_model_mse_to_edits": base_mse,
        "mean_objective_gain_of_edits": float(np.mean(gains)),
    }
    save_rp_adapter(unet, output, name, args.codec, args.lambda_rate, args.rank, extra)
    (output / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    print(json.dumps({k: v for k, v in extra.items() if isinstance(v, float)}, indent=2))
    print(f"saved {output}")
    return 0 if math.isfinite(losses[-1]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
