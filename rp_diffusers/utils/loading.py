"""The one pipeline loader: a shipped default, a folder or a Hub id, onto a device in a dtype, with errors that say
what to do.

``rp_diffusers.default_model.load_preprocessor`` (``compress``, ``evaluate``, the Space, validation and the
benchmarks) and ``rp_diffusers.pipelines.perceptual_decode.load_pipeline`` (``enhance``, ``calibrate-decode``,
``evaluate --enhance``) are this loader with their pipeline class and shipped folder. Light at import: torch is
imported when a model loads.
"""

from __future__ import annotations

import os
from pathlib import Path

DTYPES = ("float32", "float16", "bfloat16")


class ModelLoadError(OSError, RuntimeError):
    """A model that cannot be loaded (missing offline, not a pipeline folder); the message says how to get it.

    An ``OSError`` as ``from_pretrained``'s own errors are, and a ``RuntimeError`` for the callers that caught the
    perceptual-decoding loader's earlier error type.
    """


def resolve_packaged(
    name_or_path: str | os.PathLike | None, folder: Path, names: tuple[str, ...], what: str, loader: str
) -> str:
    """``None`` or one of ``names`` -> the packaged ``folder``; paths and Hub ids pass through unchanged.

    Raises:
        FileNotFoundError: the packaged model was asked for but this installation does not carry it.
    """
    if name_or_path is None or str(name_or_path) in names:
        if not (Path(folder) / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the {what} is missing from this installation ({folder}); reinstall rp-diffusers, or pass "
                f"--model PATH_OR_HUB_ID (a folder {loader}.from_pretrained loads)"
            )
        return str(folder)
    return str(name_or_path)


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


def load_pretrained(pipeline_class, source: str | os.PathLike, device: str | None = None, dtype: str = "float32"):
    """``pipeline_class.from_pretrained(source)`` in ``dtype``, moved to ``device``.

    Args:
        pipeline_class: a diffusers ``DiffusionPipeline`` subclass.
        source: a local folder or a Hub repo id (already resolved from ``"default"``).
        device: ``None`` picks CUDA where available, else CPU (see :func:`resolve_device`).
        dtype: one of :data:`DTYPES`.

    Raises:
        ValueError: an unknown dtype or an unavailable device (checked before anything loads), or a folder
            ``from_pretrained`` refuses (pickled weights, a component of the wrong class).
        ModelLoadError: the model is missing (no such folder, not on the Hub or offline, not a pipeline folder);
            the message says how to get it offline.
    """
    import torch

    from .hub import dtype_kwargs

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    device = resolve_device(device)
    try:  # dtype= on recent diffusers, torch_dtype= on older ones
        pipe = pipeline_class.from_pretrained(str(source), **dtype_kwargs(getattr(torch, dtype)))
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError) and Path(source).is_dir():
            raise  # a folder from_pretrained refuses (pickled weights, a wrong class): its message says why
        raise ModelLoadError(
            f"cannot load model {str(source)!r} ({error}). Online it downloads from the Hugging Face Hub; offline, "
            f"run `huggingface-cli download {source} --local-dir DIR` on a connected machine and pass --model DIR"
        ) from error
    return pipe.to(device)
