#!/usr/bin/env python
"""Stage 2 of rate-perception pre-processing: a LoRA on the one-step model, trained through a differentiable codec.

For each batch a codec quality q is drawn from --quality_range; x' = G_lora(x); (x_hat, bits) = S(x', q) with the
codec's surrogate; loss = lambda_rate x bpp + lambda_perceptual x P(x, x_hat) + lambda_mse x MSE(x, x_hat)
(Guo et al. 2025, arXiv:2512.15270). Validation runs the REAL codec ("codec alone" vs "rp + codec"). The adapter
is saved as `pytorch_lora_weights.safetensors` at the top of --output_dir, loadable with
`pipe.load_lora_weights(output_dir)`.

    accelerate launch training/finetune_rp.py --pretrained_model_name_or_path stabilityai/sd-turbo \
      --train_data_dir photos/ --codec jpeg --quality_range 10 60 --lambda_rate 0.5 --perceptual_loss dists \
      --resolution 512 --train_batch_size 4 --gradient_checkpointing --mixed_precision bf16 \
      --max_train_steps 5000 --validation_data_dir val/ --output_dir rp-jpeg-0.5
"""

import argparse
import math
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.training_utils import cast_training_params
from tqdm.auto import tqdm

from rp_diffusers.adapters import format_adapter_name, normalize_adapter_name, rp_lora_config, save_rp_adapter
from rp_diffusers.codecs import get_codec
from rp_diffusers.evaluation.results import comparison_report
from rp_diffusers.losses import PERCEPTUAL_LOSSES, RatePerceptionLoss, parse_perceptual, perceptual_distance
from rp_diffusers.models.one_step import one_step_map, one_step_noise
from rp_diffusers.pipelines import RPPreprocessPipeline
from rp_diffusers.surrogates import CodecInTheLoop, get_surrogate
from rp_diffusers.training_utils import (
    PreparedModel,
    add_training_args,
    build_optimizer,
    check_resolution,
    check_training_args,
    codec_validation,
    end_run,
    end_stopped_run,
    finish_update,
    is_sharded,
    load_validation_metric_models,
    log_images,
    make_accelerator,
    make_lr_schedule,
    make_train_dataloader,
    move_model,
    optimizer_step,
    push_output_folder,
    register_weight_hooks,
    render_training_card,
    resume,
    scaled_learning_rate,
    step_generator,
    stop_on_signals,
    train_steps,
    training_batches,
)
from rp_diffusers.utils.files import write_json
from rp_diffusers.utils.image import list_images, load_image

logger = get_logger(__name__, log_level="INFO")


def _perceptual_spec(value: str) -> str:
    try:
        parse_perceptual(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Stage 2: train a rate-perception LoRA through a codec surrogate.")
    # model and adapter
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="The one-step model: a folder RPPreprocessPipeline loads (stage 1's output) or stabilityai/sd-turbo.",
    )
    add_training_args(parser, "pretrained")
    parser.add_argument("--timestep", type=int, default=None, help="Override the model's fixed t* (default: its own).")
    parser.add_argument("--prompt", type=str, default=None, help="Override the fixed prompt (needs a text encoder).")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (the paper's range: 4-16).")
    parser.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (default: the rank, scale 1).")
    add_training_args(parser, "lora")
    parser.add_argument(
        "--adapter_name", type=str, default=None, help="Adapter name (default: rp_{codec}_lambda_{lambda_rate})."
    )
    # rate-perception loss
    parser.add_argument("--codec", type=str, default="jpeg", help="Real codec used for validation (and its name).")
    parser.add_argument("--surrogate", type=str, default=None, help="Differentiable surrogate (default: --codec).")
    parser.add_argument(
        "--quality_range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="Codec qualities drawn per batch, inclusive (default: the codec's sweep range).",
    )
    parser.add_argument("--lambda_rate", type=float, default=0.5, help="Weight of the bits per pixel.")
    parser.add_argument(
        "--rate_weighting",
        type=str,
        default="fixed",
        choices=["fixed", "codec_slope"],
        help="fixed: loss has lambda_rate x bpp. codec_slope: lambda_rate x s x bpp, s = the codec's own R-D slope at "
        "the drawn quality on each image (measured through the surrogate), so lambda_rate = 1 is the codec's own "
        "trade-off and gains in the loss are BD-rate gains (see rp_diffusers.losses.RatePerceptionLoss).",
    )
    parser.add_argument(
        "--surrogate_rounding",
        type=str,
        default=None,
        choices=["ste", "soft", "cubic"],
        help="DiffJPEG's rounding in training (default: its own, straight-through); ignored by learned proxies.",
    )
    parser.add_argument(
        "--surrogate_forward",
        type=str,
        default="surrogate",
        choices=["surrogate", "real"],
        help="surrogate: the loss sees the surrogate's decode and size. real: it sees the real codec's (each crop is "
        "encoded and decoded by the real codec on the CPU; the gradient is still the surrogate's; "
        "rp_diffusers.surrogates.CodecInTheLoop). With a learned proxy, the loss then measures the real codec "
        "(benchmarks/proxy_agreement.py). Cost: one real encode + decode per crop and step, three with "
        "--rate_weighting codec_slope, on the CPU (VVC: about 2 s per 256 px crop on one thread), which on a GPU can "
        "take longer than the step itself.",
    )
    parser.add_argument("--slope_delta", type=float, default=5.0, help="codec_slope: quality step of the slope.")
    parser.add_argument("--lambda_perceptual", type=float, default=1.0, help="Weight of the perceptual loss.")
    parser.add_argument("--lambda_mse", type=float, default=0.0, help="Weight of the MSE between x and x_hat.")
    parser.add_argument(
        "--perceptual_loss",
        type=_perceptual_spec,
        default="dists",
        help=f"The perceptual distance P: one of {', '.join(PERCEPTUAL_LOSSES)}, or a weighted sum such as "
        "'ssimulacra2+3*vif'.",
    )
    parser.add_argument("--lpips_net", type=str, default="alex", choices=["alex", "vgg"], help="LPIPS backbone.")
    parser.add_argument(
        "--perceptual_weights_path",
        type=str,
        default=None,
        help="Converted DISTS/LPIPS weights (file or folder); default: rp_diffusers.metrics' lookup.",
    )
    # data
    add_training_args(parser, "data", "cropping")
    # optimisation
    add_training_args(
        parser,
        "training",
        "adamw",
        helps={
            "mixed_precision": "Overrides the accelerate config. Frozen weights are cast to it; LoRA weights stay fp32.",
            "seed": "Seed of everything random (crops, qualities, init).",
        },
    )
    # outputs
    add_training_args(
        parser,
        "outputs",
        defaults={"output_dir": "rp-lora"},
        helps={"output_dir": "Where the adapter and checkpoints go."},
    )
    parser.add_argument("--tracker_project_name", type=str, default="rp-finetune", help="Tracker project name.")
    add_training_args(parser, "validation")
    parser.add_argument(
        "--validation_qualities",
        type=int,
        nargs="+",
        default=None,
        help="Real-codec qualities of validation (default: the middle of --quality_range).",
    )
    add_training_args(parser, "hub", helps={"push_to_hub": "Upload the adapter folder with a model card."})
    args = parser.parse_args(input_args)

    check_training_args(args)
    if args.quality_range is not None and args.quality_range[0] > args.quality_range[1]:
        raise ValueError(f"--quality_range LO HI needs LO <= HI, got {args.quality_range}")
    return args


@torch.no_grad()
def log_validation(pipe, codec, args, accelerator, step, metric_models):
    """Real codec on the validation images: "codec alone" vs "rp + codec"; log means, save images and JSON."""
    files = list_images(args.validation_data_dir)[: args.num_validation_images]
    originals = [load_image(f) for f in files]
    with accelerator.autocast():
        preprocessed = pipe(originals).images
    rows, decoded = codec_validation(originals, preprocessed, codec, args.validation_qualities, metric_models)
    for row in rows:
        prefix = f"validation/q{row['quality']}/{row['variant'].replace(' ', '_').replace('+', 'plus')}"
        accelerator.log({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, float)}, step=step)
    folder = Path(args.output_dir) / "validation" / f"step-{step}"
    log_images(accelerator, {f.stem: image for f, image in zip(files, preprocessed)}, step, folder, "preprocessed")
    for (quality, variant), images in decoded.items():
        tag = f"decoded_q{quality}_{'rp' if variant.startswith('rp') else 'codec'}"
        log_images(accelerator, {f"{f.stem}_{tag}": im for f, im in zip(files, images)}, step, folder, tag)
    meta = {"step": step, "codec": codec.name, "qualities": list(args.validation_qualities)}
    meta["images"] = [f.name for f in files]
    report = comparison_report(
        rows,
        name=f"step-{step}",
        description="validation: codec alone vs rp + codec",
        meta=meta,
        group=("quality", "variant"),
    )
    write_json(folder / "metrics.json", report)  # CompressAI's schema, as compress --json and evaluate write
    logger.info(f"step {step} validation:\n" + "\n".join(str(row) for row in rows))
    return rows


def main(args):
    codec = get_codec(args.codec)
    if args.quality_range is None:
        args.quality_range = [float(min(codec.sweep_qualities)), float(max(codec.sweep_qualities))]
    if args.validation_qualities is None:
        args.validation_qualities = [round(sum(args.quality_range) / 2)]
    adapter_name = normalize_adapter_name(args.adapter_name or format_adapter_name(args.codec, args.lambda_rate))
    accelerator = make_accelerator(args, {**vars(args), "adapter_name": adapter_name})  # + logging, seed, args.json
    if is_sharded(accelerator) and args.validation_data_dir:
        logger.warning("weights are sharded (FSDP / ZeRO-3): validation during training is skipped")
        args.validation_data_dir = None

    # 1. The one-step model (frozen) and a fresh R-P adapter on its attention projections
    pipe = RPPreprocessPipeline.from_pretrained(
        args.pretrained_model_name_or_path, revision=args.revision, variant=args.variant, cache_dir=args.cache_dir
    )
    pipe.set_progress_bar_config(disable=True)
    check_resolution(args.resolution, pipe.pad_multiple)
    if args.timestep is not None:
        pipe.register_to_config(timestep=args.timestep)
    if args.prompt is not None:
        pipe.set_prompt(args.prompt)
    pipe.drop_text_encoder()  # the prompt embedding is cached (and saved with the pipeline)
    vae, unet = pipe.vae, pipe.unet
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    config_kwargs = {"target_modules": tuple(args.lora_target_modules)} if args.lora_target_modules else {}
    lora_config = rp_lora_config(rank=args.rank, alpha=args.lora_alpha, **config_kwargs)
    unet.add_adapter(lora_config, adapter_name=adapter_name)
    pipe.set_adapters([adapter_name])  # only this adapter is active and trainable

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    move_model(vae, accelerator.device, weight_dtype)
    move_model(unet, accelerator.device, weight_dtype)
    cast_training_params(unet, dtype=torch.float32)  # LoRA factors stay fp32
    if args.gradient_checkpointing:  # the VAE decoder is on the gradient path too (its activations are large)
        unet.enable_gradient_checkpointing()
        vae.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    prompt_embeds = pipe.prompt_embeds.to(accelerator.device)
    alphas_cumprod = pipe.scheduler.alphas_cumprod.to(accelerator.device)
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    latent_channels, vae_factor = unet.config.in_channels, pipe.config.vae_scale_factor

    perceptual = None
    if args.lambda_perceptual > 0:
        perceptual = perceptual_distance(args.perceptual_loss, args.lpips_net, args.perceptual_weights_path)
        perceptual = perceptual.to(accelerator.device)
    surrogate = get_surrogate(args.surrogate or args.codec).to(accelerator.device)
    if args.surrogate_rounding is not None and hasattr(surrogate, "rounding"):
        surrogate.rounding = args.surrogate_rounding
    if args.surrogate_forward == "real":
        surrogate = CodecInTheLoop(surrogate, codec=codec)  # the codec validation measures
    loss_fn = RatePerceptionLoss(
        surrogate,
        perceptual,
        args.lambda_rate,
        args.lambda_perceptual,
        args.lambda_mse,
        rate_weighting=args.rate_weighting,
        slope_delta=args.slope_delta,
    )
    metric_models = load_validation_metric_models(accelerator.device) if args.validation_data_dir else {}

    # 2. Checkpoints hold only the LoRA weights (safetensors); accelerate adds optimizer, scheduler, RNG states
    register_weight_hooks(accelerator, lambda model: "lora")

    # 3. Data: random crops at the images' own scale; unreadable images are skipped with a warning
    train_dataset, train_dataloader = make_train_dataloader(args)

    # 4. Optimiser and schedule
    optimizer = build_optimizer(
        unet.parameters(),
        scaled_learning_rate(args.learning_rate, args, accelerator),
        (args.adam_beta1, args.adam_beta2),
        args.adam_weight_decay,
        args.adam_epsilon,
        args.use_8bit_adam,
    )
    train_steps(args, train_dataloader)  # sets max_train_steps from the epochs when unset
    lr_scheduler = make_lr_schedule(args, optimizer, accelerator)
    unet_prepared, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        unet, optimizer, train_dataloader, lr_scheduler
    )
    model = PreparedModel(unet_prepared, unet)  # one_step.py reads .dtype/.config, hidden by DDP/FSDP wrappers
    update_steps_per_epoch = train_steps(args, train_dataloader)  # the prepared (sharded) loader: epochs again
    if accelerator.is_main_process:
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=config)

    # 5. Resume (exact: LoRA weights, optimiser, schedule; draws are keyed by epoch and batch index)
    global_step, first_epoch, skip_batches = resume(accelerator, args, update_steps_per_epoch)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"{len(train_dataset)} images, {args.max_train_steps} steps of {total_batch} images, {adapter_name}")
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    low, high = (int(math.ceil(args.quality_range[0])), int(math.floor(args.quality_range[1])))
    validation = {"rows": [], "step": None}  # the latest validation, for the final one and the model card

    def validate(step):
        validation.update(rows=log_validation(pipe, codec, args, accelerator, step, metric_models), step=step)

    # 6. Training loop
    stopped = False
    with stop_on_signals(accelerator):
        batches = training_batches(
            accelerator,
            args,
            train_dataset,
            train_dataloader,
            first_epoch,
            skip_batches,
            lambda _: unet_prepared.train(),
        )
        for epoch, index, batch in batches:
            generator = step_generator(args.seed, accelerator.process_index, epoch, index)
            image = batch["pixel_values"].to(accelerator.device)
            quality = float(torch.randint(low, high + 1, (1,), generator=generator))  # integer, as real codecs
            noise = None
            if pipe.config.add_noise:
                noise = one_step_noise(image, latent_channels, vae_factor, generator)
            with accelerator.accumulate(unet_prepared), accelerator.autocast():
                preprocessed = one_step_map(
                    vae,
                    model,
                    image,
                    prompt_embeds,
                    pipe.config.timestep,
                    alphas_cumprod,
                    prediction_type,
                    noise=noise,
                    residual=pipe.config.residual,
                )
                terms = loss_fn(image, preprocessed, quality)
                optimizer_step(accelerator, terms.loss, unet_prepared, optimizer, lr_scheduler, args.max_grad_norm)

            if accelerator.sync_gradients:
                global_step += 1
                logs = {
                    "loss": terms.loss.item(),
                    "bpp": terms.bpp.item(),
                    "perceptual": terms.perceptual.item(),
                    "mse": terms.mse.item(),
                    "quality": quality,
                    "lr": lr_scheduler.get_last_lr()[0],
                }
                # logs, checkpoint-{step} (rotated), validation; True on a signal (checkpoint saved, then stop)
                stopped = finish_update(accelerator, args, global_step, logs, progress_bar, validate)
            if stopped or global_step >= args.max_train_steps:
                break

    if stopped:
        end_stopped_run(accelerator, global_step)
        return
    validation_rows, validated_step = validation["rows"], validation["step"]

    # 7. Save the adapter where `pipe.load_lora_weights(output_dir)` finds it; final validation; Hub upload
    accelerator.wait_for_everyone()
    gathered = accelerator.get_state_dict(unet_prepared) if is_sharded(accelerator) else None  # every process
    if accelerator.is_main_process:
        if gathered is not None:  # rebuild the adapted UNet on this process from the gathered weights
            unet = RPPreprocessPipeline.from_pretrained(
                args.pretrained_model_name_or_path,
                revision=args.revision,
                variant=args.variant,
                cache_dir=args.cache_dir,
            ).unet
            unet.add_adapter(lora_config, adapter_name=adapter_name)
            unet.load_state_dict(gathered, strict=False)
        extra = {
            "base_model": args.pretrained_model_name_or_path,
            "quality_range": list(args.quality_range),
            "lambda_perceptual": args.lambda_perceptual,
            "lambda_mse": args.lambda_mse,
            "perceptual_loss": args.perceptual_loss,
            "surrogate": args.surrogate or args.codec,
            "rate_weighting": args.rate_weighting,
            "surrogate_rounding": args.surrogate_rounding,
            "surrogate_forward": args.surrogate_forward,
            "train_steps": global_step,
        }
        save_rp_adapter(unet, args.output_dir, adapter_name, args.codec, args.lambda_rate, args.rank, extra)
        if args.validation_data_dir and validated_step != global_step:
            validation_rows = log_validation(pipe, codec, args, accelerator, global_step, metric_models)
        if args.push_to_hub:
            repo_id = args.hub_model_id or Path(args.output_dir).name
            card = render_training_card(
                repo_id,
                adapters=[{"name": adapter_name, "codec": args.codec, "lam": args.lambda_rate, "rank": args.rank}],
                validation_rows=validation_rows,
                base_model=args.pretrained_model_name_or_path,
                training=f"`training/finetune_rp.py`, {global_step} steps; arguments in `args.json`.",
            )
            card.save(Path(args.output_dir) / "README.md")
            push_output_folder(args, f"Rate-perception adapter {adapter_name}")
    end_run(accelerator)


if __name__ == "__main__":
    main(parse_args())
