"""The compact model shipped inside the package: what ``--model default`` and the Space use offline."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"
DEFAULT_NAMES = ("default", "rp-compact")


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Map ``None``/``"default"`` to the shipped compact model's folder; pass paths and Hub ids through.

    Raises:
        FileNotFoundError: ``"default"`` was asked for but this installation carries no compact model.
    """
    if name_or_path is None or str(name_or_path) in DEFAULT_NAMES:
        if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the compact default model is missing from this installation ({DEFAULT_MODEL_DIR}); reinstall "
                "rp-diffusers, or pass --model PATH_OR_HUB_ID (a folder RPPreprocessPipeline.from_pretrained loads)"
            )
        return str(DEFAULT_MODEL_DIR)
    return str(name_or_path)


def has_default_model() -> bool:
    """Whether the compact default model ships with this installation."""
    return (DEFAULT_MODEL_DIR / "model_index.json").is_file()
