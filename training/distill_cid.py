#!/usr/bin/env python
"""Stage 1 of rate-perception pre-processing: distil SD 2.1 into a one-step image-to-image model (SiD + CiD).

Teacher: the frozen SD 2.1 UNet. Student: the one-step map G(x) = Dec(x0(UNet(Enc(x), t*))) (LoRA or full).
Fake score: a trainable copy of the teacher (LoRA or full) fitted with the denoising loss on the student's
outputs. Each step updates the fake score, then the student with SiD's generator loss + lambda_task x (L2 +
lambda_lpips x LPIPS) between G(x) and x, the consistency term (our reading of CiD in Guo et al. 2025,
arXiv:2512.15270). Output: a folder `RPPreprocessPipeline` loads.

    accelerate launch training/distill_cid.py \
      --pretrained_model_name_or_path stabilityai/stable-diffusion-2-1-base \
      --train_data_dir photos/ --resolution 512 --train_batch_size 2 --gradient_checkpointing \
      --mixed_precision bf16 --max_train_steps 20000 --output_dir rp-sd21-onestep
"""

import argparse
import copy
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPTextModel

from rp_diffusers.adapters import rp_lora_config
from rp_diffusers.losses import (
    classifier_free_guidance,
    perceptual_distance,
    task_loss,
)
from rp_diffusers.metrics.psnr import psnr
from rp_diffusers.models.one_step import one_step_map, predict_x0_latents
from rp_diffusers.pipelines import RPPreprocessPipeline
from rp_diffusers.training_utils import (
    PreparedModel,
    add_training_args,
    build_optimizer,
    check_resolution,
    check_training_args,
    end_run,
    end_stopped_run,
    finish_update,
    is_sharded,
    log_images,
    make_accelerator,
    make_lr_schedule,
    make_train_dataloader,
    move_model,
    optimizer_step,
    push_output_folder,
    register_weight_hooks,
    resume,
    scaled_learning_rate,
    step_generator,
    stop_on_signals,
    train_steps,
    training_batches,
)
from rp_diffusers.training_utils.sid import fake_score_loss, sid_timesteps, student_sid_loss
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor, tensor_to_pil

logger = get_logger(__name__, log_level="INFO")

STUDENT, FAKE_SCORE = "student", "fake_score"


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Stage 1: distil SD 2.1 into a one-step image-to-image model (CiD).")
    # model
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Teacher: an SD 2.1-layout model (Hub id or folder); also gives the VAE and text encoder.",
    )
    parser.add_argument(
        "--student_model_name_or_path",
        type=str,
        default=None,
        help="Initial student UNet (e.g. stabilityai/sd-turbo); default: a copy of the teacher.",
    )
    add_training_args(parser, "pretrained")
    parser.add_argument("--prompt", type=str, default="", help="The fixed prompt of the one-step map.")
    parser.add_argument(
        "--timestep",
        type=int,
        default=999,
        help="Fixed t* of the one-step map: 999 (img2img-turbo/OSEDiff) or 625 (SiD-LSG).",
    )
    parser.add_argument("--residual", action="store_true", help="x0 = input latents + UNet estimate (small models).")
    # distillation
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=1.0,
        help="Classifier-free guidance of the teacher between the empty prompt and --prompt.",
    )
    parser.add_argument(
        "--sid_alpha", type=float, default=1.0, help="SiD's alpha (1.0: SiD-LSG on SD; 1.2: SiD on EDM)."
    )
    parser.add_argument("--sid_t_min", type=int, default=20, help="Smallest timestep of the SiD/fake-score noise.")
    parser.add_argument("--sid_t_max", type=int, default=980, help="Largest timestep of the SiD/fake-score noise.")
    parser.add_argument(
        "--sid_timestep_sampling",
        choices=["sample", "batch"],
        default="sample",
        help="SiD's noise levels: one per sample (as SiD) or one per batch (noisier; the earlier default).",
    )
    parser.add_argument("--lambda_task", type=float, default=1.0, help="Weight of the consistency term to the input.")
    parser.add_argument(
        "--lambda_lpips",
        type=float,
        default=1.0,
        help="Weight of LPIPS inside the consistency term (0: L2 only; >0 needs LPIPS weights).",
    )
    parser.add_argument("--lpips_net", type=str, default="vgg", choices=["alex", "vgg"], help="LPIPS backbone.")
    parser.add_argument(
        "--lpips_weights_path",
        type=str,
        default=None,
        help="Converted LPIPS weights (file or folder); default: rp_diffusers.metrics' lookup.",
    )
    parser.add_argument("--student_lora_rank", type=int, default=64, help="LoRA rank of the student.")
    parser.add_argument("--train_full_student", action="store_true", help="Train every student weight, no LoRA.")
    parser.add_argument("--fake_score_lora_rank", type=int, default=64, help="LoRA rank of the fake score network.")
    parser.add_argument("--train_full_fake_score", action="store_true", help="Train the full fake score network.")
    add_training_args(parser, "lora")
    parser.add_argument(
        "--fake_score_learning_rate",
        type=float,
        default=None,
        help="Learning rate of the fake score (default: --learning_rate).",
    )
    # data
    add_training_args(parser, "data", "cropping")
    # optimisation
    add_training_args(
        parser,
        "training",
        "adamw",
        defaults={"train_batch_size": 1, "learning_rate": 1e-5, "adam_beta1": 0.0, "adam_weight_decay": 0.0},
        helps={
            "learning_rate": "Learning rate of the student.",
            "adam_beta1": "Adam beta1 (SiD uses 0).",
            "mixed_precision": "Overrides the accelerate config. Frozen weights are cast to it; trained ones stay fp32.",
        },
    )
    # outputs
    add_training_args(
        parser,
        "outputs",
        defaults={"output_dir": "rp-onestep"},
        helps={"output_dir": "Where the pipeline and checkpoints go."},
    )
    parser.add_argument("--tracker_project_name", type=str, default="rp-distill-cid", help="Tracker project name.")
    add_training_args(parser, "validation", "hub")
    args = parser.parse_args(input_args)

    check_training_args(args)
    if args.sid_t_min < 0 or args.sid_t_max < args.sid_t_min:
        raise ValueError("need 0 <= --sid_t_min <= --sid_t_max")
    return args


def load_unet(path, args):
    return UNet2DConditionModel.from_pretrained(path, subfolder="unet", revision=args.revision, variant=args.variant)


def add_lora_or_train_full(unet, full: bool, rank: int, name: str, target_modules) -> None:
    unet.requires_grad_(full)
    if not full:
        kwargs = {"target_modules": tuple(target_modules)} if target_modules else {}
        unet.add_adapter(rp_lora_config(rank=rank, **kwargs), adapter_name=name)
        unet.set_adapters([name])


def teacher_x0(teacher, latents, timestep, embeds, uncond_embeds, guidance_scale, alphas_cumprod, prediction, noise):
    cond = predict_x0_latents(teacher, latents, timestep, embeds, alphas_cumprod, prediction, noise)
    if guidance_scale == 1.0 or uncond_embeds is None:
        return cond
    uncond = predict_x0_latents(teacher, latents, timestep, uncond_embeds, alphas_cumprod, prediction, noise)
    return classifier_free_guidance(uncond, cond, guidance_scale)


@torch.no_grad()
def log_validation(pipe, args, accelerator, step):
    """Run the student pipeline on the validation images; log PSNR to the input and save the outputs."""
    files = list_images(args.validation_data_dir)[: args.num_validation_images]
    originals = [load_image(f) for f in files]
    outputs = pipe(originals, output_type="pt").images
    outputs = outputs if isinstance(outputs, list) else list(outputs)
    values = [float(psnr(pil_to_tensor(o), out[None].clamp(0, 1))[0]) for o, out in zip(originals, outputs)]
    metrics = {"validation/psnr_to_input": sum(values) / len(values)}
    accelerator.log(metrics, step=step)
    images = {f.stem: tensor_to_pil(out)[0] for f, out in zip(files, outputs)}
    log_images(accelerator, images, step, Path(args.output_dir) / "validation" / f"step-{step}", "validation")
    logger.info(f"step {step}: {metrics}")
    return metrics


def main(args):
    accelerator = make_accelerator(args)  # + logging, seed, output_dir/args.json
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(
            "stage 1 trains two networks (student and fake score); accelerate's DeepSpeed integration prepares one "
            "model per engine. Use DDP (training/configs/multi_gpu.yaml) or FSDP (training/configs/fsdp.yaml)"
        )
    if is_sharded(accelerator) and args.validation_data_dir:
        logger.warning("weights are sharded (FSDP): validation during training is skipped")
        args.validation_data_dir = None

    # 1. Models: frozen VAE + teacher, trainable student and fake score (LoRA by default)
    source = args.pretrained_model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", revision=args.revision)
    text_encoder = CLIPTextModel.from_pretrained(
        source, subfolder="text_encoder", revision=args.revision, variant=args.variant
    )
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", revision=args.revision, variant=args.variant)
    teacher = load_unet(source, args)
    teacher_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", revision=args.revision)
    student_source = args.student_model_name_or_path or source
    student_unet = load_unet(student_source, args) if args.student_model_name_or_path else copy.deepcopy(teacher)
    scheduler = DDPMScheduler.from_pretrained(student_source, subfolder="scheduler", revision=args.revision)
    fake_unet = copy.deepcopy(teacher)
    for frozen in (vae, teacher, text_encoder):
        frozen.requires_grad_(False)
    add_lora_or_train_full(
        student_unet, args.train_full_student, args.student_lora_rank, STUDENT, args.lora_target_modules
    )
    add_lora_or_train_full(
        fake_unet, args.train_full_fake_score, args.fake_score_lora_rank, FAKE_SCORE, args.lora_target_modules
    )

    # The student pipeline is what gets validated and saved; it encodes the prompt once, then drops the encoder.
    pipe = RPPreprocessPipeline(
        vae=vae,
        unet=student_unet,
        scheduler=scheduler,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        timestep=args.timestep,
        prompt=args.prompt,
        residual=args.residual,
    )
    pipe.set_progress_bar_config(disable=True)
    check_resolution(args.resolution, pipe.pad_multiple)
    prompt_embeds = pipe.prompt_embeds
    uncond_embeds = pipe.encode_prompt("") if args.guidance_scale != 1.0 and args.prompt else None
    pipe.drop_text_encoder()
    del text_encoder

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for model, full in (
        (vae, False),
        (teacher, False),
        (student_unet, args.train_full_student),
        (fake_unet, args.train_full_fake_score),
    ):
        move_model(model, accelerator.device, torch.float32 if full else weight_dtype)
    cast_training_params([student_unet, fake_unet], dtype=torch.float32)  # trained weights stay fp32
    if args.gradient_checkpointing:
        for model in (student_unet, teacher, fake_unet, vae):  # the generator loss backpropagates through all
            model.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    alphas_cumprod = scheduler.alphas_cumprod.to(accelerator.device)
    teacher_alphas = teacher_scheduler.alphas_cumprod.to(accelerator.device)
    student_prediction = scheduler.config.prediction_type
    teacher_prediction = teacher_scheduler.config.prediction_type
    lpips_fn = None
    if args.lambda_lpips > 0:
        lpips_fn = perceptual_distance("lpips", args.lpips_net, args.lpips_weights_path).to(accelerator.device)

    # 2. Checkpoints hold only the trained weights (safetensors); accelerate adds optimizer, scheduler, RNG states
    register_weight_hooks(accelerator, lambda model: STUDENT if model is student_unet else FAKE_SCORE)

    # 3. Data: random crops at the images' own scale; unreadable images are skipped with a warning
    train_dataset, train_dataloader = make_train_dataloader(args)

    # 4. Optimisers and schedules (one per trained network, as SiD)
    lr_g = scaled_learning_rate(args.learning_rate, args, accelerator)
    lr_f = scaled_learning_rate(args.fake_score_learning_rate or args.learning_rate, args, accelerator)
    betas = (args.adam_beta1, args.adam_beta2)
    optimizer_g = build_optimizer(
        student_unet.parameters(), lr_g, betas, args.adam_weight_decay, args.adam_epsilon, args.use_8bit_adam
    )
    optimizer_f = build_optimizer(
        fake_unet.parameters(), lr_f, betas, args.adam_weight_decay, args.adam_epsilon, args.use_8bit_adam
    )
    train_steps(args, train_dataloader)  # sets max_train_steps from the epochs when unset
    schedules = [make_lr_schedule(args, optimizer, accelerator) for optimizer in (optimizer_g, optimizer_f)]
    student, fake_score, optimizer_g, optimizer_f, train_dataloader, lr_g, lr_f = accelerator.prepare(
        student_unet, fake_unet, optimizer_g, optimizer_f, train_dataloader, *schedules
    )
    # one_step.py reads `.dtype`/`.config`, which DDP/FSDP wrappers hide: call the wrapper, read the module
    student_model, fake_model = PreparedModel(student, student_unet), PreparedModel(fake_score, fake_unet)
    update_steps_per_epoch = train_steps(args, train_dataloader)  # the prepared (sharded) loader: epochs again
    if accelerator.is_main_process:
        accelerator.init_trackers(
            args.tracker_project_name,
            config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
        )

    # 5. Resume (exact: trained weights, optimisers, schedules; draws are keyed by epoch and batch index)
    global_step, first_epoch, skip_batches = resume(accelerator, args, update_steps_per_epoch)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"{len(train_dataset)} images, {args.max_train_steps} steps of {total_batch} images")
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    fake_trainable = [p for p in fake_unet.parameters() if p.requires_grad]

    def fake_x0(model):  # the fake score as SiD's x0 function (x, t, noise) -> x0
        return lambda x, t, noise: predict_x0_latents(
            model, x, t, prompt_embeds, teacher_alphas, teacher_prediction, noise
        )

    def real_x0(x, t, noise):  # the frozen teacher, with guidance if asked
        return teacher_x0(
            teacher, x, t, prompt_embeds, uncond_embeds, args.guidance_scale, teacher_alphas, teacher_prediction, noise
        )

    def validate(step):
        log_validation(pipe, args, accelerator, step)

    # 6. Training loop: fake-score update, then student update (SiD's alternation)
    stopped = False
    with stop_on_signals(accelerator):

        def train_mode(_epoch):
            student.train()
            fake_score.train()

        batches = training_batches(
            accelerator, args, train_dataset, train_dataloader, first_epoch, skip_batches, train_mode
        )
        for epoch, index, batch in batches:
            generator = step_generator(args.seed, accelerator.process_index, epoch, index)
            image = batch["pixel_values"].to(accelerator.device)
            with accelerator.accumulate(student, fake_score), accelerator.autocast():
                x_g, image_g = one_step_map(
                    vae,
                    student_model,
                    image,
                    prompt_embeds,
                    args.timestep,
                    alphas_cumprod,
                    student_prediction,
                    residual=args.residual,
                    return_latents=True,
                )
                t_fake, t_gen = sid_timesteps(
                    x_g.shape[0],
                    args.sid_t_min,
                    args.sid_t_max,
                    args.sid_timestep_sampling == "sample",
                    generator,
                    x_g.device,
                )
                noise_fake, noise_gen = torch.randn((2, *x_g.shape), generator=generator).to(x_g.device)

                # 6a. fake score: ordinary denoising loss on the student's (detached) outputs
                loss_fake = fake_score_loss(
                    fake_x0(fake_model), x_g, t_fake, noise_fake, teacher_alphas, teacher_prediction
                )
                optimizer_step(accelerator, loss_fake, fake_score, optimizer_f, lr_f, args.max_grad_norm)

                # 6b. student: SiD generator loss through the teacher and the (frozen) fake score
                loss_sid = student_sid_loss(
                    real_x0, fake_x0(fake_unet), fake_trainable, x_g, t_gen, noise_gen, args.sid_alpha
                )
                loss_task = task_loss(image_g, image, lpips_fn, args.lambda_lpips)
                loss_g = loss_sid + args.lambda_task * loss_task
                optimizer_step(accelerator, loss_g, student, optimizer_g, lr_g, args.max_grad_norm)

            if accelerator.sync_gradients:
                global_step += 1
                logs = {
                    "loss_sid": loss_sid.item(),
                    "loss_task": loss_task.item(),
                    "loss_fake": loss_fake.item(),
                    "lr": lr_g.get_last_lr()[0],
                }
                # logs, checkpoint-{step} (rotated), validation; True on a signal (checkpoint saved, then stop)
                stopped = finish_update(accelerator, args, global_step, logs, progress_bar, validate)
            if stopped or global_step >= args.max_train_steps:
                break

    if stopped:
        end_stopped_run(accelerator, global_step)
        return

    # 7. Save the one-step pipeline: student LoRA fused into the UNet, then unloaded
    accelerator.wait_for_everyone()
    gathered = accelerator.get_state_dict(student) if is_sharded(accelerator) else None  # every process
    if accelerator.is_main_process:
        if gathered is not None:  # rebuild the student on this process from the gathered weights
            rebuilt = load_unet(student_source, args)
            add_lora_or_train_full(
                rebuilt, args.train_full_student, args.student_lora_rank, STUDENT, args.lora_target_modules
            )
            rebuilt.load_state_dict(gathered, strict=False)
            pipe.register_modules(unet=rebuilt)
        pipe.unet.to(torch.float32)  # fuse in fp32, not in the frozen weights' training dtype
        pipe.vae.to(torch.float32)
        if not args.train_full_student:
            pipe.fuse_lora(components=["unet"])
            pipe.unload_lora_weights()
        pipe.save_pretrained(args.output_dir)
        if args.validation_data_dir:
            log_validation(pipe, args, accelerator, global_step)
        if args.push_to_hub:
            push_output_folder(args, "One-step model (stage 1)")
    end_run(accelerator)


if __name__ == "__main__":
    main(parse_args())
