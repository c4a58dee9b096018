"""The scaffold that the Accelerate training scripts share, one function per stage, so each script stays readable
top to bottom like a diffusers example and only its model, loss and loop body are its own.

Used by ``training/distill_cid.py`` (stage 1) and ``training/finetune_rp.py`` (stage 2), in this order
(``training/train_corrdiff.py`` takes the accelerator; its checkpoints are its own, see there):

1. :func:`make_accelerator` - the Accelerator from the shared flags (``add_training_args``), logging, seed, the
   output folder and ``args.json``;
2. :func:`register_weight_hooks` - checkpoints hold only the trained weights (safetensors), one file per model;
3. :func:`make_train_dataloader` - random crops of a folder or a ``datasets`` dataset;
4. :func:`scaled_learning_rate`, :func:`train_steps` and :func:`make_lr_schedule` - the optimiser's schedule;
5. :func:`resume` - exact resumption (weights, optimisers, schedules; draws are keyed by epoch and batch index);
6. :func:`training_batches` - the epochs and batches from where the run stands (resumed runs skip what was done);
   :func:`optimizer_step` for each backward pass; after each update :func:`checkpoint_due`, :func:`validation_due` and :func:`stop_requested` (a signal: a
   checkpoint, then the loop ends).
"""

from __future__ import annotations

import logging
import math
import os
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
    "checkpoint_due",
    "make_accelerator",
    "make_lr_schedule",
    "make_train_dataloader",
    "optimizer_step",
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
        args: parsed flags holding ``add_training_args``'s (``output_dir``, ``logging_dir``, ``mixed_precision``,
            ``report_to``, ``seed``; ``gradient_accumulation_steps`` where the script has it, else 1).
        saved_args: what to write as ``args.json`` (default: ``vars(args)``).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    accelerator = Accelerator(
        gradient_accumulation_steps=getattr(args, "gradient_accumulation_steps", 1),
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=Path(args.output_dir, args.logging_dir)
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
    logger.info(f"resuming from {checkpoint}")
    accelerator.load_state(str(checkpoint))
    global_step = checkpoint_step(checkpoint)
    first_epoch, skip_batches = resume_position(global_step, update_steps_per_epoch, args.gradient_accumulation_steps)
    return global_step, first_epoch, skip_batches


def training_batches(
    accelerator, args, train_dataset, train_dataloader, first_epoch: int, skip_batches: int, on_epoch=None
) -> Iterator[tuple[int, int, dict]]:
    """``(epoch, batch index, batch)`` from the resumed position to the last epoch; the caller stops early.

    ``on_epoch(epoch)`` runs at the start of each epoch (e.g. ``model.train()``).
    """
    for epoch in range(first_epoch, args.num_train_epochs):
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


def optimizer_step(accelerator, loss, model, optimizer, lr_schedule, max_grad_norm: float) -> None:
    """Backward, clip the gradients once they are synchronised, step the optimiser and schedule, zero the grads."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    lr_schedule.step()
    optimizer.zero_grad(set_to_none=True)
