"""A tiny RANDOM ``RPPreprocessPipeline`` saved to a folder: tests, the Space's offline fallback, development."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RANDOM_MARKER", "build_tiny_random_model"]

RANDOM_MARKER = "RANDOM_WEIGHTS.txt"  # written next to the tiny random model so any page showing it says so


def build_tiny_random_model(path: str | os.PathLike, seed: int = 0, adapters=(("jpeg", 0.5),)) -> Path:
    """Save a tiny RANDOM ``RPPreprocessPipeline`` (with random R-P adapters) to ``path``, for tests and dev.

    Args:
        path: folder to write (``RPPreprocessPipeline.from_pretrained(path)`` loads it).
        seed: seed of the weights.
        adapters: ``(codec, lambda)`` operating points to add as random rank-4 LoRA adapters.

    Returns:
        The folder as a ``Path``.
    """
    import torch

    from ..adapters import format_adapter_name, rp_lora_config
    from ..utils.testing import tiny_sd_components
    from .rp_preprocess import RPPreprocessPipeline

    pipe = RPPreprocessPipeline(**tiny_sd_components(seed))
    for index, (codec, lam) in enumerate(adapters):
        torch.manual_seed(seed + 100 + index)
        pipe.load_lora_weights(
            _random_lora(pipe.unet, rp_lora_config(rank=4, init_lora_weights=False)),
            adapter_name=format_adapter_name(codec, lam),
        )
    pipe.save_pretrained(path)
    (Path(path) / RANDOM_MARKER).write_text(
        "Random weights from rp_diffusers.pipelines.testing.build_tiny_random_model.\n"
    )
    return Path(path)


def _random_lora(unet, config) -> dict:
    """A random LoRA state dict in diffusers' format for ``unet`` (built on a throwaway peft copy)."""
    import copy

    from peft.utils import get_peft_model_state_dict

    scratch = copy.deepcopy(unet)
    scratch.add_adapter(config, adapter_name="scratch")
    layers = get_peft_model_state_dict(scratch, adapter_name="scratch")
    return {f"unet.{key}": value.detach().clone() for key, value in layers.items()}
