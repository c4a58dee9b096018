"""Pieces of the training loops: the one-step forward with latents, wrapped models, optimiser, image logging."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class PreparedModel:
    """A model prepared by Accelerate (DDP/FSDP wrapper) that still shows the wrapped module's ``dtype``/``config``.

    ``rp_diffusers.models.one_step`` reads ``unet.dtype`` and ``unet.config``; calls go through the wrapper so that
    gradient synchronisation works.
    """

    def __init__(self, prepared: torch.nn.Module, module: torch.nn.Module):
        self.prepared, self.module = prepared, module

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    @property
    def config(self):
        return self.module.config

    def __call__(self, *args, **kwargs):
        return self.prepared(*args, **kwargs)


def move_model(model: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(device)``, casting only when the dtype changes (diffusers warns on every cast)."""
    if next(model.parameters()).dtype != dtype:
        return model.to(device, dtype=dtype)
    return model.to(device)


def build_optimizer(
    params,
    learning_rate: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    use_8bit_adam: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over ``params`` (bitsandbytes' 8-bit AdamW when asked and installed)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    optimizer_class = torch.optim.AdamW
    if use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from error
        optimizer_class = bnb.optim.AdamW8bit
    return optimizer_class(params, lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=eps)


def log_images(accelerator, images: dict[str, Image.Image], step: int, folder: str | os.PathLike, tag: str) -> None:
    """Save ``images`` as PNGs under ``folder`` and send them to the trackers that take images (TensorBoard, W&B)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / f"{name}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for name, image in images.items():
                tracker.writer.add_image(f"{tag}/{name}", np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(image, caption=name) for name, image in images.items()]}, step=step)


def is_sharded(accelerator) -> bool:
    """True when the trained weights are sharded across processes (FSDP, DeepSpeed ZeRO-3).

    Then every process must take part in gathering them (``accelerator.get_state_dict``) before the main process
    saves, and single-process inference (validation) on the raw module is not possible.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3
