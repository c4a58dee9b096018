"""Command-line flags shared by the training scripts: one declaration per flag, grouped, defaults per script.

The scripts in ``training/`` keep diffusers' flat argparse style (``parse_args(input_args=None)``); the flags that
mean the same thing in several of them (data, optimisation, checkpoints, validation, Hub) are declared once here
so that their names, types, choices and help cannot drift apart. A script adds the groups it needs and passes its
own defaults where they differ (a distillation wants another learning rate than a LoRA fine-tune).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

# flag name -> ``add_argument`` keywords; an entry without "default" has no sensible common value: every script
# gives its own (``defaults``) or makes it required (``required``)
TRAINING_ARGS: dict[str, dict[str, Any]] = {
    # pretrained
    "revision": {"type": str, "default": None, "help": "Revision of the pretrained model(s) on the Hub."},
    "variant": {"type": str, "default": None, "help": "Weights variant, e.g. fp16."},
    # lora
    "lora_target_modules": {
        "type": str,
        "nargs": "+",
        "default": None,
        "help": "LoRA target module names (default: to_q to_k to_v to_out.0 of every attention block).",
    },
    # data
    "dataset_name": {"type": str, "default": None, "help": "A Hub image dataset, e.g. user/photos."},
    "dataset_config_name": {"type": str, "default": None, "help": "The dataset's config, if any."},
    "train_data_dir": {"type": str, "default": None, "help": "A folder of images (datasets' imagefolder)."},
    "image_column": {"type": str, "default": None, "help": "Image column (default: the first Image one)."},
    "cache_dir": {"type": str, "default": None, "help": "Where datasets and models are cached."},
    "max_train_samples": {"type": int, "default": None, "help": "Use only the first N images."},
    "resolution": {"type": int, "default": 512, "help": "Square crop size in pixels (multiple of 64)."},
    "random_flip": {"action": "store_true", "help": "Random horizontal flips."},
    "dataloader_num_workers": {"type": int, "default": 0, "help": "Data loading worker processes."},
    # cropping
    "center_crop": {"action": "store_true", "help": "Center crops instead of random crops."},
    "resize_shorter_side": {
        "type": int,
        "default": None,
        "help": "Resize the shorter side to this before cropping (default: keep the content scale).",
    },
    # training
    "train_batch_size": {"type": int, "default": 4, "help": "Batch size per device."},
    "max_train_steps": {"type": int, "default": None, "help": "Total optimisation steps."},
    "learning_rate": {"type": float, "default": 1e-4, "help": "Learning rate after the warm-up."},
    "lr_warmup_steps": {"type": int, "default": 0, "help": "Warm-up steps of the learning-rate schedule."},
    "max_grad_norm": {"type": float, "default": 1.0, "help": "Gradient clipping norm."},
    "mixed_precision": {
        "type": str,
        "default": None,
        "choices": ["no", "fp16", "bf16"],
        "help": "Mixed precision; overrides the accelerate config.",
    },
    "seed": {"type": int, "default": 0, "help": "Seed of everything random (init, crops, noise)."},
    # adamw: the rest of diffusers' training-example optimisation flags
    "num_train_epochs": {"type": int, "default": 1, "help": "Epochs (ignored when max_train_steps is set)."},
    "gradient_accumulation_steps": {"type": int, "default": 1, "help": "Batches per update."},
    "gradient_checkpointing": {"action": "store_true", "help": "Trade compute for activation memory."},
    "scale_lr": {"action": "store_true", "help": "Scale learning rates by GPUs x batch x accumulation."},
    "lr_scheduler": {
        "type": str,
        "default": "constant",
        "help": '"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup".',
    },
    "adam_beta1": {"type": float, "default": 0.9, "help": "Adam beta1."},
    "adam_beta2": {"type": float, "default": 0.999, "help": "Adam beta2."},
    "adam_weight_decay": {"type": float, "default": 1e-2, "help": "Weight decay."},
    "adam_epsilon": {"type": float, "default": 1e-8, "help": "Adam epsilon."},
    "use_8bit_adam": {"action": "store_true", "help": "bitsandbytes' 8-bit AdamW."},
    "allow_tf32": {"action": "store_true", "help": "Allow TF32 matmuls on Ampere+ GPUs."},
    # outputs
    "output_dir": {"type": str, "help": "Where the model and checkpoints go."},
    "logging_dir": {"type": str, "default": "logs", "help": "Tracker (TensorBoard) folder inside output_dir."},
    "report_to": {"type": str, "default": "tensorboard", "help": 'Trackers: "tensorboard", "wandb", "all" or "none".'},
    "checkpointing_steps": {"type": int, "default": 500, "help": "Save a checkpoint-{step} every N steps."},
    "checkpoints_total_limit": {"type": int, "default": None, "help": "Keep at most N checkpoints."},
    "resume_from_checkpoint": {"type": str, "default": None, "help": '"latest" or a checkpoint folder.'},
    # validation
    "validation_data_dir": {"type": str, "default": None, "help": "Folder of validation images."},
    "validation_steps": {"type": int, "default": 500, "help": "Validate every N steps."},
    "num_validation_images": {"type": int, "default": 4, "help": "Validation images used (first N)."},
    # hub
    "push_to_hub": {"action": "store_true", "help": "Upload the output folder to the Hub."},
    "hub_model_id": {"type": str, "default": None, "help": "Hub repository (default: output_dir's name)."},
    "hub_token": {"type": str, "default": None, "help": "Hub token (default: the logged-in one)."},
}

TRAINING_ARG_GROUPS: dict[str, tuple[str, ...]] = {
    "pretrained": ("revision", "variant"),
    "lora": ("lora_target_modules",),
    "data": (
        "dataset_name",
        "dataset_config_name",
        "train_data_dir",
        "image_column",
        "cache_dir",
        "max_train_samples",
        "resolution",
        "random_flip",
        "dataloader_num_workers",
    ),
    "cropping": ("center_crop", "resize_shorter_side"),
    "training": (
        "train_batch_size",
        "max_train_steps",
        "learning_rate",
        "lr_warmup_steps",
        "max_grad_norm",
        "mixed_precision",
        "seed",
    ),
    "adamw": (
        "num_train_epochs",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "scale_lr",
        "lr_scheduler",
        "adam_beta1",
        "adam_beta2",
        "adam_weight_decay",
        "adam_epsilon",
        "use_8bit_adam",
        "allow_tf32",
    ),
    "outputs": (
        "output_dir",
        "logging_dir",
        "report_to",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
    ),
    "validation": ("validation_data_dir", "validation_steps", "num_validation_images"),
    "hub": ("push_to_hub", "hub_model_id", "hub_token"),
}


def add_training_args(
    parser: argparse.ArgumentParser,
    *groups: str,
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
    required: Iterable[str] = (),
) -> list[str]:
    r"""
    Add the shared flags of one or more groups (see `TRAINING_ARG_GROUPS`) to a training script's parser.

    Args:
        parser (`argparse.ArgumentParser`):
            The script's parser (or one of its argument groups); flags are added in the order of `groups`.
        *groups (`str`):
            Group names: `"pretrained"` (`--revision`, `--variant`), `"lora"` (`--lora_target_modules`), `"data"`
            (dataset, folder, crop size, flips, workers), `"cropping"` (`--center_crop`, `--resize_shorter_side`),
            `"training"` (batch, steps, learning rate, warm-up, clipping, precision, seed), `"adamw"` (epochs,
            accumulation, checkpointing, schedule, AdamW, TF32), `"outputs"` (output and log folders, trackers,
            checkpoints, resume), `"validation"`, `"hub"`.
        defaults (`Mapping[str, Any]`, *optional*):
            Per-script defaults of flags in these groups, e.g. `{"learning_rate": 1e-5}`. `--output_dir` has no
            common default: give one here or name it in `required`.
        helps (`Mapping[str, str]`, *optional*):
            Per-script help texts where the script gives a flag a more specific meaning.
        required (`Iterable[str]`, *optional*):
            Flags of these groups that the script makes required (they get no default).

    Returns:
        `list[str]`: the flag names added, e.g. `["revision", "variant"]`.

    Raises:
        `ValueError`: an unknown group, a `defaults`/`helps`/`required` name outside the chosen groups, a flag both
        required and given a default, or a flag left without a default.

    Example:

    ```py
    >>> import argparse
    >>> from rp_diffusers.training_utils import add_training_args
    >>> parser = argparse.ArgumentParser()
    >>> add_training_args(parser, "pretrained", "training", defaults={"learning_rate": 1e-5})[:3]
    ['revision', 'variant', 'train_batch_size']
    >>> parser.parse_args([]).learning_rate
    1e-05

    ```
    """
    unknown = [group for group in groups if group not in TRAINING_ARG_GROUPS]
    if unknown:
        raise ValueError(f"unknown flag group(s) {unknown}: choose from {sorted(TRAINING_ARG_GROUPS)}")
    names = [name for group in groups for name in TRAINING_ARG_GROUPS[group]]
    defaults, helps, required = dict(defaults or {}), dict(helps or {}), set(required)
    for label, keys in (("defaults", defaults), ("helps", helps), ("required", required)):
        stray = sorted(set(keys) - set(names))
        if stray:
            raise ValueError(f"{label} names {stray}, which are not in the groups {list(groups)}: add those groups")
    if required & set(defaults):
        raise ValueError(f"{sorted(required & set(defaults))} are both required and given defaults: choose one")
    for name in names:
        kwargs = dict(TRAINING_ARGS[name], **({"help": helps[name]} if name in helps else {}))
        if name in required:
            kwargs.pop("default", None)
            kwargs["required"] = True
        elif name in defaults:
            kwargs["default"] = defaults[name]
        elif "default" not in kwargs and kwargs.get("action") is None:
            raise ValueError(f"--{name} has no common default: pass defaults={{'{name}': ...}} or required=['{name}']")
        parser.add_argument(f"--{name}", **kwargs)
    return names
