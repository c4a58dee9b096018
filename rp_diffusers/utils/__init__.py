"""Shared helpers: image I/O, padding and tiling, Hub and model-card helpers."""

from .image import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageLoadError,
    list_images,
    load_image,
    numpy_to_pil,
    pil_to_tensor,
    register_image_plugins,
    tensor_to_pil,
    to_pil_list,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageLoadError",
    "list_images",
    "load_image",
    "numpy_to_pil",
    "pil_to_tensor",
    "register_image_plugins",
    "tensor_to_pil",
    "to_pil_list",
]
