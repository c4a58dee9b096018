"""The scaffold that the Accelerate training scripts share, one function per stage, so each script stays readable
top to bottom like a diffusers example and only its model, loss and loop body are its own.

Every training script with a ``checkpoint-{step}`` folder goes through here: ``training/distill_cid.py`` (stage 1),
``training/finetune_rp.py`` (stage 2), ``training/train_corrdiff.py`` and ``training/train_surrogate.py``;
``training/train_compact_base.py`` takes the accelerator and the optimiser step (it writes no checkpoints). In order:

1. :func:`make_accelerator` - the Accelerator from the shared flags (``add_training_args``), logging, seed, the
   output folder and ``args.json``;
2. :func:`register_weight_hooks` - checkpoints hold only the trained weights (safetensors), one file per model
   (scripts that train whole networks skip it: Accelerate then writes each one as ``model.safetensors``);
3. :func:`make_train_dataloader` - random crops of a folder or a ``datasets`` dataset;
4. :func:`scaled_learning_rate`, :func:`train_steps` and :func:`make_lr_schedule` - the optimiser's schedule;
5. :func:`resume` - exact resumption (weights, optimisers, schedules, RNG states; draws are keyed by epoch and
   batch index);
6. :func:`training_batches` - the epochs and batches from where the run stands (resumed runs skip what was done);
   :func:`optimizer_step` for each backward pass; :func:`finish_update` after each update: trackers and progress
   bar, ``checkpoint-{step}`` every ``--checkpointing_steps`` (:func:`save_training_state`, which rotates to
   ``--checkpoints_total_limit``), validation every ``--validation_steps``, and whether a signal asked the run to
   stop (a checkpoint, then the loop ends and :func:`end_stopped_run` closes the run without the final save).

The checkpoint itself (one implementation: ``checkpoints.save_training_state``, read back by :func:`resume`) is
Accelerate's state in ``output_dir/checkpoint-{step}``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .checkpoints import (
    checkpoint_step,
    epoch_loader,
    load_trainable_weights,
    resolve_resume_checkpoint,
    resume_position,
    save_args,
    save_trainable_weights,
    save_training_state,
)
from .data import RandomCropImageDataset, collate_images, load_image_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "check_resolution",
    "check_training_args",
    "checkpoint_due",
    "end_run",
    "end_stopped_run",
    "finish_update",
    "make_accelerator",
    "make_lr_schedule",
    "make_train_dataloader",
    "optimizer_step",
    "push_output_folder",
    "register_weight_hooks",
    "resume",
    "scaled_learning_rate",
    "stop_requested",
    "train_steps",
    "training_batches",
    "validation_due",
]


def make_accelerator(args, saved_args: dict | None = None):
    """The run's ``Accelerator`` from the shared flags; logging, seed, ``output_dir`` and its ``args.json``.

    Args:
        args: parsed flags holding ``output_dir``, ``mixed_precision`` and ``seed``; ``logging_dir`` (default
            ``logs``), ``report_to`` (default: no tracker) and ``gradient_accumulation_steps`` (default 1) where the
            script has them (``add_training_args``' "outputs" and "adamw" groups).
        saved_args: what to write as ``args.json`` (default: ``vars(args)``).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    report_to = getattr(args, "report_to", None)
    accelerator = Accelerator(
        gradient_accumulation_steps=getattr(args, "gradient_accumulation_steps", 1),
        mixed_precision=args.mixed_precision,
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=Path(args.output_dir, getattr(args, "logging_dir", "logs"))
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info("%s", accelerator.state)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        save_args(vars(args) if saved_args is None else saved_args, args.output_dir)
    return accelerator


def register_weight_hooks(accelerator, file_name: Callable[[torch.nn.Module], str]) -> None:
    """Checkpoints hold only each model's trainable weights, as ``file_name(model) + ".safetensors"``.

    Accelerate adds the optimisers, schedules and RNG states. Under FSDP / DeepSpeed the weights are sharded and
    Accelerate saves them itself, so the hooks step aside.
    """
    from accelerate.utils import DistributedType

    sharded = (DistributedType.DEEPSPEED, DistributedType.FSDP)

    def save_model_hook(models, weights, output_dir):
        if accelerator.distributed_type in sharded:
            return
        for model in models:
            model = accelerator.unwrap_model(model)
            save_trainable_weights(model, Path(output_dir) / f"{file_name(model)}.safetensors")
        weights.clear()

    def load_model_hook(models, input_dir):
        if accelerator.distributed_type in sharded:
            return
        while models:
            model = accelerator.unwrap_model(models.pop())
            load_trainable_weights(model, Path(input_dir) / f"{file_name(model)}.safetensors")

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def make_train_dataloader(args) -> tuple[RandomCropImageDataset, torch.utils.data.DataLoader]:
    """Random crops at the images' own scale (unreadable images are skipped with a warning) and their loader."""
    dataset, image_column = load_image_dataset(
        args.dataset_name,
        args.train_data_dir,
        args.image_column,
        args.dataset_config_name,
        args.cache_dir,
        max_samples=args.max_train_samples,
    )
    train_dataset = RandomCropImageDataset(
        dataset, image_column, args.resolution, args.seed, args.center_crop, args.random_flip, args.resize_shorter_side
    )
    loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=collate_images,
        num_workers=args.dataloader_num_workers,
    )
    return train_dataset, loader


def scaled_learning_rate(learning_rate: float, args, accelerator) -> float:
    """``learning_rate`` times the total batch when ``--scale_lr`` is set (diffusers' convention)."""
    if not args.scale_lr:
        return learning_rate
    return learning_rate * args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes


def train_steps(args, train_dataloader) -> int:
    """Updates per epoch; sets ``args.max_train_steps`` from the epochs when it is unset, else the epochs from it."""
    update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * update_steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / update_steps_per_epoch)
    return update_steps_per_epoch


def make_lr_schedule(args, optimizer, accelerator):
    """diffusers' ``get_scheduler`` with the warm-up and length in process-steps, as the diffusers examples."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )


def resume(accelerator, args, update_steps_per_epoch: int) -> tuple[int, int, int]:
    """Load ``--resume_from_checkpoint`` (a folder or ``latest``) if any: ``(global_step, first_epoch, skip)``."""
    checkpoint = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and checkpoint is None:
        logger.info("no checkpoint to resume from; starting a new run")
    if checkpoint is None:
        return 0, 0, 0
    if (Path(checkpoint) / "trainer_state.json").is_file():  # train_corrdiff.py's checkpoints before the runner
        raise ValueError(
            f"{checkpoint} is a checkpoint of an older train_corrdiff.py (trainer_state.json), which this version "
            "cannot resume: start the run again, or continue from its weights with --pretrained_model_name_or_path"
        )
    logger.info(f"resuming from {checkpoint}")
    accelerator.load_state(str(checkpoint))
    global_step = checkpoint_step(checkpoint)
    accumulation = getattr(args, "gradient_accumulation_steps", 1)
    first_epoch, skip_batches = resume_position(global_step, update_steps_per_epoch, accumulation)
    return global_step, first_epoch, skip_batches


def training_batches(
    accelerator,
    args,
    train_dataset,
    train_dataloader,
    first_epoch: int,
    skip_batches: int,
    on_epoch=None,
    num_epochs: int | None = None,
) -> Iterator[tuple[int, int, dict]]:
    """``(epoch, batch index, batch)`` from the resumed position to the last epoch; the caller stops early.

    ``on_epoch(epoch)`` runs at the start of each epoch (e.g. ``model.train()``). The run has ``num_epochs`` epochs
    (default: ``args.num_train_epochs``, which :func:`train_steps` sets).
    """
    for epoch in range(first_epoch, args.num_train_epochs if num_epochs is None else num_epochs):
        if on_epoch is not None:
            on_epoch(epoch)
        loader, offset = epoch_loader(accelerator, train_dataset, train_dataloader, epoch, first_epoch, skip_batches)
        for index, batch in enumerate(loader, start=offset):
            yield epoch, index, batch


def checkpoint_due(args, global_step: int) -> bool:
    """Whether this update ends a ``--checkpointing_steps`` period."""
    return global_step % args.checkpointing_steps == 0


def validation_due(accelerator, args, global_step: int) -> bool:
    """Whether to validate now: ``--validation_data_dir`` set, a ``--validation_steps`` period ends, main process."""
    return bool(args.validation_data_dir) and global_step % args.validation_steps == 0 and accelerator.is_main_process


def stop_requested(accelerator, args, global_step: int) -> bool:
    """``SIGTERM`` / ``SIGUSR1`` reached any process (see ``stop_on_signals``): checkpoint now and stop."""
    if not accelerator.check_trigger():
        return False
    if not checkpoint_due(args, global_step):  # a periodic checkpoint of this step exists already
        save_training_state(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
    return True


def finish_update(accelerator, args, global_step: int, logs=None, progress_bar=None, validate=None) -> bool:
    """The tail of every optimiser update: the loop stops when this returns True (a signal; the checkpoint is saved).

    ``logs`` go to the trackers and the progress bar (which advances one step); ``checkpoint-{global_step}`` is saved
    when a ``--checkpointing_steps`` period ends (:func:`save_training_state` rotates to
    ``--checkpoints_total_limit``); ``validate(global_step)`` runs when :func:`validation_due`; then
    :func:`stop_requested`.
    """
    if progress_bar is not None:
        progress_bar.update(1)
    if logs:
        accelerator.log(logs, step=global_step)
        if progress_bar is not None:
            progress_bar.set_postfix(**logs)
    if checkpoint_due(args, global_step):
        save_training_state(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
    if validate is not None and validation_due(accelerator, args, global_step):
        validate(global_step)
    return stop_requested(accelerator, args, global_step)


def end_run(accelerator) -> None:
    """The last call of every training script: trackers finish, the process group is destroyed (Accelerate's
    ``end_training``), then, in a distributed run, a short pause without the GIL.

    The pause is for Gloo: its worker threads free the last collectives' tensors after those complete, and that
    takes the GIL. A script that returned at once could drop its DDP model (whose reducer holds the process group)
    while a worker waits for the GIL, and the process group's destructor, which joins those workers with the GIL
    held, would then wait for ever (torch issue 56297; seen here as a process that never exits).
    """
    distributed = accelerator.num_processes > 1 or torch.distributed.is_initialized()
    accelerator.end_training()
    if distributed:
        time.sleep(0.5)


def end_stopped_run(accelerator, global_step: int) -> None:
    """Close a run that a signal stopped at ``global_step`` (its checkpoint is saved; the final model is not)."""
    logger.info(f"stopped by a signal at step {global_step}; continue with --resume_from_checkpoint latest")
    end_run(accelerator)


def optimizer_step(accelerator, loss, model, optimizer, lr_schedule, max_grad_norm: float) -> None:
    """Backward, clip the gradients once they are synchronised, step the optimiser and schedule, zero the grads.

    ``lr_schedule`` may be ``None`` (a script that sets the learning rate itself); ``max_grad_norm <= 0`` does not
    clip.
    """
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if lr_schedule is not None:
        lr_schedule.step()
    optimizer.zero_grad(set_to_none=True)


def check_training_args(args) -> None:
    """The checks every script that reads ``add_training_args``' "data" group makes after parsing.

    ``LOCAL_RANK`` from a launcher overrides ``--local_rank``; the run needs ``--dataset_name`` or
    ``--train_data_dir``.
    """
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("pass --dataset_name or --train_data_dir")


def check_resolution(resolution: int, multiple: int) -> None:
    """``ValueError`` unless the training crops' side is a multiple of what the model pads to."""
    if resolution % multiple:
        raise ValueError(f"--resolution must be a multiple of {multiple} for this model, got {resolution}")


def push_output_folder(args, commit_message: str) -> str:
    """Upload ``args.output_dir`` (without checkpoints and logs) to ``--hub_model_id`` (default: the folder's name).

    Returns the repository id. Needs the "hub" flags of :func:`add_training_args`.
    """
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(args.hub_model_id or Path(args.output_dir).name, exist_ok=True, token=args.hub_token).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=args.output_dir,
        token=args.hub_token,
        commit_message=commit_message,
        ignore_patterns=["checkpoint-*", "logs/*"],
    )
    return repo_id
