"""The compact model shipped inside the package: what ``--model default`` and the Space use offline."""

from __future__ import annotations

import os

from .utils.assets import ASSETS_DIR

DEFAULT_MODEL_DIR = ASSETS_DIR / "default_model"
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


DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str | None = None) -> str:
    """``None`` -> ``"cuda"`` where available, else ``"cpu"``; a named device is checked, with a clear error.

    Raises:
        ValueError: the device does not exist on this machine (e.g. ``cuda`` without a CUDA build or GPU).
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r} ({error}); use e.g. cpu, cuda, cuda:1 or mps") from error
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if not available.get(kind, True):
        raise ValueError(
            f"device {device!r} is not available on this machine (no {kind.upper()}): use cpu or leave it unset"
        )
    return device


def load_preprocessor(model: str | os.PathLike | None, device: str | None = None, dtype: str = "float32"):
    """Load the :class:`~rp_diffusers.RPPreprocessPipeline` that ``--model`` names, on ``device`` in ``dtype``.

    The one loader of the command line (``compress``, ``evaluate``): ``"default"`` is the compact model shipped
    with the package, anything else a folder or Hub id, with an error that says what to do when it cannot load.

    Args:
        model: ``"default"``/``None``, a folder, or a Hub id.
        device: ``None`` picks CUDA where available, else CPU (see :func:`resolve_device`).
        dtype: one of :data:`DTYPES`.
    """
    import torch

    from .pipelines import RPPreprocessPipeline
    from .utils.hub import dtype_kwargs

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    device = resolve_device(device)
    model = resolve_model(model)  # "default" -> the compact model shipped in rp_diffusers/assets/default_model
    try:
        pipe = RPPreprocessPipeline.from_pretrained(model, **dtype_kwargs(getattr(torch, dtype)))
    except OSError as error:
        raise OSError(
            f"cannot load model {model!r} ({error}). Online it downloads from the Hugging Face Hub; offline, run "
            f"`huggingface-cli download {model} --local-dir DIR` on a connected machine and pass --model DIR"
        ) from error
    return pipe.to(device)
