"""The compact model shipped inside the package: what ``--model default`` and the Space use offline."""

from __future__ import annotations

import os

from .utils.assets import ASSETS_DIR
from .utils.loading import DTYPES, ModelLoadError, load_pretrained, resolve_device, resolve_packaged

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DEFAULT_NAMES",
    "DTYPES",
    "ModelLoadError",
    "has_default_model",
    "load_preprocessor",
    "resolve_device",
    "resolve_model",
]

DEFAULT_MODEL_DIR = ASSETS_DIR / "default_model"
DEFAULT_NAMES = ("default", "rp-compact")
LOADER = "RPPreprocessPipeline"


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Map ``None``/``"default"`` to the shipped compact model's folder; pass paths and Hub ids through.

    Raises:
        FileNotFoundError: ``"default"`` was asked for but this installation carries no compact model.
    """
    return resolve_packaged(name_or_path, DEFAULT_MODEL_DIR, DEFAULT_NAMES, "compact default model", LOADER)


def has_default_model() -> bool:
    """Whether the compact default model ships with this installation."""
    return (DEFAULT_MODEL_DIR / "model_index.json").is_file()


def load_preprocessor(model: str | os.PathLike | None, device: str | None = None, dtype: str = "float32"):
    """Load the :class:`~rp_diffusers.RPPreprocessPipeline` that ``--model`` names, on ``device`` in ``dtype``.

    The loader of ``compress``, ``evaluate``, the Space, adapter validation and the benchmarks: ``"default"`` is
    the compact model shipped with the package, anything else a folder or Hub id
    (:func:`rp_diffusers.utils.loading.load_pretrained`, shared with the perceptual-decoding loader).

    Args:
        model: ``"default"``/``None``, a folder, or a Hub id.
        device: ``None`` picks CUDA where available, else CPU (see :func:`resolve_device`).
        dtype: one of :data:`DTYPES`.

    Raises:
        FileNotFoundError: ``"default"`` but the installation carries no compact model.
        ModelLoadError: the model cannot be loaded (an ``OSError``); the message says how to get it offline.
    """
    from .pipelines import RPPreprocessPipeline

    # "default" -> the compact model shipped in rp_diffusers/assets/default_model
    return load_pretrained(RPPreprocessPipeline, resolve_model(model), device, dtype)
