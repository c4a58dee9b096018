"""Checkpoints of the training scripts: trained weights only (safetensors), rotation, resume, signals, args.json."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import torch


def save_args(args: dict, output_dir: str | os.PathLike, name: str = "args.json") -> Path:
    """Write the run's arguments as JSON (paths as strings) to ``output_dir/name``; returns the path."""
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    cleaned = {key: (str(value) if isinstance(value, os.PathLike) else value) for key, value in args.items()}
    cleaned.pop("hub_token", None)  # never write a secret next to the weights
    path.write_text(json.dumps(cleaned, indent=2, sort_keys=True, default=str) + "\n")
    return path


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters with ``requires_grad`` (LoRA factors, or everything when fully trained), detached, contiguous."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_trainable_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Store only the trainable parameters of ``model`` as safetensors (the checkpoint hooks use this)."""
    from safetensors.torch import save_file

    save_file({k: v.cpu() for k, v in trainable_state_dict(model).items()}, str(path))


def load_trainable_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load what :func:`save_trainable_weights` wrote; every trainable parameter must be in the file."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = sorted(name for name, p in params.items() if p.requires_grad and name not in state)
    unexpected = sorted(name for name in state if name not in params)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "resume with the same --rank / LoRA / full-training flags the run was started with"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].dtype))


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-{step}`` folders of ``output_dir`` sorted by step."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Before saving a new checkpoint, delete the oldest so at most ``total_limit`` remain after it; returns them."""
    if total_limit is None:
        return []
    existing = checkpoint_folders(output_dir)
    excess = existing[: max(0, len(existing) - total_limit + 1)]
    for folder in excess:
        shutil.rmtree(folder)
    return excess


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """``"latest"`` -> the newest ``checkpoint-{step}`` in ``output_dir`` (``None`` if none); a path -> itself."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        folders = checkpoint_folders(output_dir)
        return folders[-1] if folders else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {resume_from_checkpoint} not found; pass 'latest' or a checkpoint folder")
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step a ``checkpoint-{step}`` folder was saved at."""
    match = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint-{{step}} folder")
    return int(match.group(1))


def resume_position(
    global_step: int, update_steps_per_epoch: int, gradient_accumulation_steps: int
) -> tuple[int, int]:
    """Where a run resumed at ``global_step`` continues: ``(epoch, batches of that epoch to skip)``."""
    epoch = global_step // update_steps_per_epoch
    return epoch, (global_step - epoch * update_steps_per_epoch) * gradient_accumulation_steps


def save_training_state(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None) -> Path:
    """Save Accelerate's full state to ``output_dir/checkpoint-{step}`` after rotating old checkpoints.

    The one checkpoint writer of the training scripts (``runner.finish_update`` and ``runner.stop_requested`` call
    it; ``runner.resume`` reads it back): the models (through the hooks of ``runner.register_weight_hooks`` where a
    script registers them, else Accelerate's ``model.safetensors``), optimisers, schedules, gradient scaler and RNG
    states. Runs on the main process, and on every process under DeepSpeed (which writes its own shards).
    """
    from accelerate.utils import DistributedType

    folder = Path(output_dir) / f"checkpoint-{step}"
    if accelerator.is_main_process or accelerator.distributed_type == DistributedType.DEEPSPEED:
        rotate_checkpoints(output_dir, total_limit)
        accelerator.save_state(str(folder))
    return folder


def epoch_loader(accelerator, dataset, dataloader, epoch: int, first_epoch: int, skip_batches: int):
    """Start ``epoch``: set it on the dataset and the dataloader (new crops, new order) and return
    ``(loader, first_index)``; the first epoch of a resumed run skips the batches it had already consumed.

    A dataset whose items do not change with the epoch (no ``set_epoch``) is left as it is."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    dataloader.set_epoch(epoch)
    if epoch == first_epoch and skip_batches > 0:
        return accelerator.skip_first_batches(dataloader, skip_batches), skip_batches
    return dataloader, 0


@contextlib.contextmanager
def stop_on_signals(accelerator, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)):
    """While active, SIGTERM / SIGUSR1 (cluster preemption, ``kill``) ask the loop to checkpoint and stop.

    The handler only sets Accelerate's trigger; the loop calls ``accelerator.check_trigger()`` after each
    optimisation step (a collective, so every process stops at the same step), saves ``checkpoint-{step}`` and
    returns. Handlers are restored on exit. Outside the main thread (where Python cannot install handlers) this is a
    no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum, frame):
        accelerator.set_trigger()

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
