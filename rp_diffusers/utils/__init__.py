"""Shared helpers: image I/O, padding and tiling, Hub and model-card helpers."""

from .image import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    load_image,
    numpy_to_pil,
    pil_to_tensor,
    tensor_to_pil,
    to_pil_list,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "load_image",
    "numpy_to_pil",
    "pil_to_tensor",
    "tensor_to_pil",
    "to_pil_list",
]
