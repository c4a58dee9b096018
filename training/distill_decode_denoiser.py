#!/usr/bin/env python
"""Stage 1 on a real teacher: distil the shipped pixel-space denoiser into a one-step image-to-image student.

The teacher is perceptual decoding's EDM denoiser (``rp_diffusers/assets/decode_model``, trained by
``train_decode_denoiser.py``). The student ``G(y, sigma) = D_student(y + sigma n, sigma)`` takes a photograph
noised to ``sigma`` (drawn per sample, log-uniform in ``--input_sigma_min..--input_sigma_max``, the noise levels
perceptual decoding uses) and returns an image in ONE call; before training it is a copy of the teacher, i.e. the
posterior mean (a blurred image). Each step runs stage 1's own update (``rp_diffusers.training_utils.sid``, as
``distill_cid.py``): the fake score (a copy of the teacher) fits the student's outputs, then the student follows
SiD's generator loss plus CiD's consistency term ``lambda_task x MSE(G, y)``. SiD's noise levels are
``sigma_t`` on a log grid from ``--sid_sigma_min`` to ``--sid_sigma_max`` (variance-preserving
``alphas_cumprod = 1 / (1 + sigma_t^2)``, so the same step function serves both scripts).

The output folder holds ``student/`` and ``fake_score/`` (UNet2DModel, safetensors) and ``distill_log.json``.
``benchmarks/decode_one_step.py`` compares the student's one call with the teacher's multi-step sample from the
same noised input.

    python training/distill_decode_denoiser.py --train_data_dir ../shared/data/train-clean --resolution 64 \\
        --train_batch_size 16 --max_train_steps 1500 --output_dir decode-one-step
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from diffusers import EDMEulerScheduler, UNet2DModel
from tqdm.auto import tqdm

from rp_diffusers.adapters import rp_lora_config
from rp_diffusers.losses import task_loss
from rp_diffusers.pipelines.perceptual_decode import DEFAULT_DECODE_MODEL_DIR
from rp_diffusers.training_utils import (
    add_training_args,
    build_optimizer,
    end_run,
    end_stopped_run,
    finish_update,
    make_accelerator,
    make_lr_schedule,
    make_train_dataloader,
    optimizer_step,
    resume,
    step_generator,
    stop_on_signals,
    train_steps,
    training_batches,
)
from rp_diffusers.training_utils.sid import fake_score_loss, sid_timesteps, student_sid_loss
from rp_diffusers.utils.files import write_json


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--teacher", default=str(DEFAULT_DECODE_MODEL_DIR), help="A PerceptualDecodePipeline folder (EDM)."
    )
    parser.add_argument("--input_sigma_min", type=float, default=0.03, help="Smallest noise level of the inputs.")
    parser.add_argument("--input_sigma_max", type=float, default=0.3, help="Largest noise level of the inputs.")
    parser.add_argument("--sid_sigma_min", type=float, default=0.02, help="Smallest SiD/fake-score noise level.")
    parser.add_argument("--sid_sigma_max", type=float, default=5.0, help="Largest SiD/fake-score noise level.")
    parser.add_argument("--sid_alpha", type=float, default=1.2, help="SiD's alpha (1.2 for EDM models, as SiD).")
    parser.add_argument(
        "--sid_timestep_sampling", choices=["sample", "batch"], default="sample", help="as distill_cid.py"
    )
    parser.add_argument("--lambda_task", type=float, default=1.0, help="Weight of MSE(G(y), y) on [0, 1] images.")
    parser.add_argument("--fake_score_learning_rate", type=float, default=None, help="default: --learning_rate")
    parser.add_argument(
        "--lora_rank",
        type=int,
        default=0,
        help="0: train every weight of the student and the fake score (SiD); r > 0: train only a rank-r LoRA on "
        "every convolution and linear layer of both (distill_cid.py's default); the saved student is fused",
    )
    parser.add_argument("--max_minutes", type=float, default=None, help="Stop (and save) after this wall time.")
    parser.add_argument("--log_steps", type=int, default=50, help="Log the losses every N steps.")
    add_training_args(parser, "data", "cropping", defaults={"resolution": 64, "random_flip": True})
    add_training_args(
        parser,
        "training",
        "adamw",
        defaults={
            "train_batch_size": 16,
            "learning_rate": 2e-5,
            "adam_beta1": 0.0,
            "adam_weight_decay": 0.0,
        },
    )
    add_training_args(parser, "outputs", defaults={"output_dir": "decode-one-step", "report_to": "none"})
    args = parser.parse_args(input_args)
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("pass --dataset_name or --train_data_dir")
    if "kodak" in str(args.train_data_dir or "").lower():
        raise ValueError("Kodak is the test set: never train on it")
    if not 0 < args.input_sigma_min <= args.input_sigma_max:
        raise ValueError("need 0 < --input_sigma_min <= --input_sigma_max")
    if not 0 < args.sid_sigma_min < args.sid_sigma_max:
        raise ValueError("need 0 < --sid_sigma_min < --sid_sigma_max")
    if args.lora_rank < 0:
        raise ValueError(f"--lora_rank must be >= 0 (0 = full training), got {args.lora_rank}")
    if args.gradient_accumulation_steps != 1:
        raise ValueError("--gradient_accumulation_steps must be 1: each batch makes one update of both networks")
    return args


def lora_target_modules(unet: UNet2DModel) -> list[str]:
    """Every convolution and linear layer of ``unet``, by full name (the pixel model has no attention)."""
    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    return [name for name, module in unet.named_modules() if isinstance(module, kinds)]


def make_trainable(unet: UNet2DModel, lora_rank: int):
    """Full training (``lora_rank == 0``, as SiD), or peft's zero-initialised rank-r LoRA on every conv/linear layer.

    ``UNet2DModel`` has no diffusers adapter mixin, so the LoRA case is a ``peft.PeftModel`` around it;
    ``merge_and_unload()`` gives back a plain ``UNet2DModel`` with the LoRA folded in.
    """
    if not lora_rank:
        return unet.requires_grad_(True)
    from peft import get_peft_model

    return get_peft_model(unet, rp_lora_config(rank=lora_rank, target_modules=lora_target_modules(unet)))


def edm_x0(unet: UNet2DModel, scheduler: EDMEulerScheduler, x_sigma: torch.Tensor, sigma: torch.Tensor):
    """EDM x0 estimate at per-sample ``sigma`` (N, 1, 1, 1) with the scheduler's preconditioning ([-1, 1] pixels)."""
    model_input = scheduler.precondition_inputs(x_sigma, sigma)
    output = unet(model_input, scheduler.precondition_noise(sigma).reshape(-1), return_dict=False)[0]
    return scheduler.precondition_outputs(x_sigma, output, sigma)


def one_step(student, scheduler, clean: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The student's one call on ``clean`` noised to ``sigma``: ``G = D_student(clean + sigma noise, sigma)``."""
    return edm_x0(student, scheduler, clean + sigma * noise, sigma)


def main(args):
    accelerator = make_accelerator(args)
    device = accelerator.device
    teacher = UNet2DModel.from_pretrained(args.teacher, subfolder="unet").float()
    scheduler = EDMEulerScheduler.from_pretrained(args.teacher, subfolder="scheduler")
    student, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)  # SiD: both start as the teacher
    teacher.requires_grad_(False)
    student, fake = make_trainable(student, args.lora_rank), make_trainable(fake, args.lora_rank)
    for model in (teacher, student, fake):
        model.to(device)
    multiple = 2 ** (len(teacher.config.block_out_channels) - 1)
    if args.resolution % multiple:
        raise ValueError(f"--resolution must be a multiple of {multiple} for this model")

    # SiD's noise levels as a variance-preserving schedule: sigma_t on a log grid, alphas_cumprod = 1 / (1 + s^2)
    sid_sigmas = torch.logspace(math.log10(args.sid_sigma_min), math.log10(args.sid_sigma_max), 1000).to(device)
    alphas_cumprod = 1.0 / (1.0 + sid_sigmas.square())

    def x0_fn(model):  # (x, t, noise) -> x0: VE noising x + sigma_t noise, as VP's z_t / sqrt(a_t)
        def x0(x, t, noise):
            sigma = sid_sigmas[t].view(-1, 1, 1, 1)
            return edm_x0(model, scheduler, x + sigma * noise, sigma)

        return x0

    train_dataset, train_dataloader = make_train_dataloader(args)
    lr_f = args.fake_score_learning_rate or args.learning_rate
    betas = (args.adam_beta1, args.adam_beta2)
    student_parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer_g = build_optimizer(
        student_parameters, args.learning_rate, betas, args.adam_weight_decay, args.adam_epsilon, False
    )
    fake_trainable = [p for p in fake.parameters() if p.requires_grad]
    optimizer_f = build_optimizer(fake_trainable, lr_f, betas, args.adam_weight_decay, args.adam_epsilon, False)
    train_steps(args, train_dataloader)
    schedule_g, schedule_f = (make_lr_schedule(args, o, accelerator) for o in (optimizer_g, optimizer_f))
    student, fake, optimizer_g, optimizer_f, train_dataloader, schedule_g, schedule_f = accelerator.prepare(
        student, fake, optimizer_g, optimizer_f, train_dataloader, schedule_g, schedule_f
    )
    update_steps_per_epoch = train_steps(args, train_dataloader)
    fake_parameters = [p for p in fake.parameters() if p.requires_grad]
    log = {"args": {k: v for k, v in vars(args).items() if k != "hub_token"}, "loss": []}
    log["trainable_parameters"] = {"student": sum(p.numel() for p in student_parameters)}
    log["args"]["teacher"] = Path(args.teacher).name
    log["args"]["train_data_dir"] = Path(args.train_data_dir).name if args.train_data_dir else None
    log["args"]["output_dir"] = Path(args.output_dir).name

    # Resume (student, fake score, both optimisers and schedules, RNG states; each batch's draws are keyed by it)
    global_step, first_epoch, skip_batches = resume(accelerator, args, update_steps_per_epoch)
    log["resumed_from_step"] = global_step or None  # this log holds the losses from there on

    start, stopped = time.perf_counter(), False
    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="distil", disable=not accelerator.is_local_main_process
    )
    log_sigma = (math.log(args.input_sigma_min), math.log(args.input_sigma_max))
    batches = training_batches(accelerator, args, train_dataset, train_dataloader, first_epoch, skip_batches)
    with stop_on_signals(accelerator):
        for epoch, index, batch in batches:
            generator = step_generator(args.seed, accelerator.process_index, epoch, index)
            clean = batch["pixel_values"].to(device) * 2 - 1  # the model's [-1, 1] pixels
            count = clean.shape[0]
            sigma_in = torch.empty(count).uniform_(*log_sigma, generator=generator).exp().view(-1, 1, 1, 1).to(device)
            noise_in, noise_fake, noise_gen = torch.randn((3, *clean.shape), generator=generator).to(device)
            x_g = one_step(student, scheduler, clean, sigma_in, noise_in)
            t_fake, t_gen = sid_timesteps(count, 0, 999, args.sid_timestep_sampling == "sample", generator, device)
            loss_fake = fake_score_loss(x0_fn(fake), x_g, t_fake, noise_fake, alphas_cumprod, "epsilon")
            optimizer_step(accelerator, loss_fake, fake, optimizer_f, schedule_f, args.max_grad_norm)
            loss_sid = student_sid_loss(
                x0_fn(teacher), x0_fn(fake), fake_parameters, x_g, t_gen, noise_gen, args.sid_alpha
            )
            loss_task = task_loss(x_g * 0.5 + 0.5, clean * 0.5 + 0.5)
            loss_g = loss_sid + args.lambda_task * loss_task
            optimizer_step(accelerator, loss_g, student, optimizer_g, schedule_g, args.max_grad_norm)

            global_step += 1
            losses = {"loss_sid": loss_sid.item(), "loss_task": loss_task.item(), "loss_fake": loss_fake.item()}
            # trackers and progress bar, checkpoint-{step} (rotated); True on a signal (checkpoint saved, then stop)
            stopped = finish_update(accelerator, args, global_step, losses, progress)
            if global_step % args.log_steps == 0 or global_step == 1:
                entry = {"step": global_step, **losses, "minutes": (time.perf_counter() - start) / 60}
                log["loss"].append(entry)
                progress.set_postfix(sid=f"{entry['loss_sid']:.4f}", task=f"{entry['loss_task']:.4f}")
            out_of_time = args.max_minutes is not None and time.perf_counter() - start > 60 * args.max_minutes
            if stopped or global_step >= args.max_train_steps or out_of_time:
                break

    if stopped:
        end_stopped_run(accelerator, global_step)
        return
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        for name, model in (("student", student), ("fake_score", fake)):
            model = accelerator.unwrap_model(model)
            if args.lora_rank:  # the LoRA folded into the weights: a plain UNet2DModel, as the teacher
                model = model.merge_and_unload()
            model.save_pretrained(output_dir / name, safe_serialization=True)
        scheduler.save_pretrained(output_dir / "scheduler")
        log.update(steps=global_step, minutes=(time.perf_counter() - start) / 60)
        write_json(output_dir / "distill_log.json", log)
        print(json.dumps({"steps": global_step, "minutes": round(log["minutes"], 2)}))
    end_run(accelerator)


if __name__ == "__main__":
    main(parse_args())
