"""Image I/O: every way an image enters rp-diffusers becomes an 8-bit RGB PIL image here, and only here.

Conversions (documented for users):
- EXIF orientation is applied (the pixels are rotated as a viewer shows them).
- Palette (P), grayscale (L, I;16, I, F), CMYK and YCbCr become RGB; grayscale is replicated to 3 channels.
- Alpha (RGBA, LA, PA) is composited onto white: codecs here are RGB-only and the papers evaluate RGB.
- 16-bit and float inputs are scaled to 8 bits with rounding (uint16 / 257; float in [0, 1] * 255).
- Images over ``max_pixels`` (default 64 megapixels) are refused before decoding (decompression bombs).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000

# The file suffixes every lister of the package takes for images: what Pillow opens here, with the HEIF and
# JPEG XL plugins registered below (AVIF is native in Pillow >= 11).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
    | {".heic", ".heif", ".avif", ".jxl"}
)

ImageInput = "str | os.PathLike | bytes | Image.Image | np.ndarray | torch.Tensor"


class ImageLoadError(ValueError):
    """An input could not be turned into an RGB image; the message says why and what to do."""


@functools.cache
def register_image_plugins() -> None:
    """Teach Pillow HEIF/HEIC and JPEG XL when their plugins are installed (they are dependencies); AVIF is native.

    The one place the package registers Pillow plugins: called once when this module is imported, so every loader
    and codec of the package (and ``PIL.Image.open`` in the user's code) reads those formats. Calling it again
    does nothing.
    """
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:  # pragma: no cover - optional at import time
        pass
    try:
        import pillow_jxl  # noqa: F401 (importing it registers the plugin)
    except ImportError:  # pragma: no cover
        pass


register_image_plugins()


def list_images(paths: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand folders and files into a list of image paths; a folder gives its images sorted by name.

    Args:
        paths: one folder or file, or a sequence of them. Files are kept as given whatever their suffix; folders
            contribute the files whose suffix (any case) is in ``IMAGE_SUFFIXES``.
        recursive: also list the images of sub-folders (sorted by path).

    Returns:
        ``list[pathlib.Path]``, never empty.

    Raises:
        FileNotFoundError: a path does not exist, or no image was found.

    Example:
        >>> import tempfile
        >>> from rp_diffusers.utils import list_images
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 4)).save(folder / "b.PNG")
        >>> _ = (folder / "notes.txt").write_text("not an image")
        >>> [p.name for p in list_images(folder)]
        ['b.PNG']
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            found.extend(sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}; pass an existing folder or file")
    if not found:
        where = "under" if recursive else "in"
        raise FileNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) {where} {', '.join(map(str, paths))}; "
            "pass a folder holding such files"
        )
    return found


def _flatten_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    array = np.asarray(image)
    if image.mode == "F":
        array = np.clip(array, 0.0, 1.0) * 255.0 if array.max() <= 1.0 else np.clip(array, 0, 255)
    else:
        # I;16 / I modes: 16-bit values (PNG stores 16-bit grayscale as I;16 or I).
        array = array.astype(np.float64) / 257.0
    gray = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB following the rules in the module docstring."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        return _flatten_alpha(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_bit_depth_to_rgb(image)
    return image.convert("RGB")


def numpy_to_pil(array: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> RGB PIL image.

    uint8 is taken as is, uint16 is scaled by 1/257, floats must lie in [0, 1].
    """
    if not isinstance(array, np.ndarray):
        raise ImageLoadError(f"expected a numpy array, got {type(array).__name__}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError(f"empty image of shape {array.shape}")
    if array.dtype == np.uint8:
        data = array
    elif array.dtype == np.uint16:
        data = np.clip(np.round(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        _check_unit_range(array, "array")
        data = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    elif array.dtype == np.bool_:
        data = array.astype(np.uint8) * 255
    else:
        raise ImageLoadError(f"unsupported array dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if data.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(data), "L").convert("RGB")
    if data.shape[-1] == 4:
        return _flatten_alpha(Image.fromarray(np.ascontiguousarray(data), "RGBA"))
    return Image.fromarray(np.ascontiguousarray(data), "RGB")


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_pixel_limit():
    """Pillow's own bomb check off while a file is opened, then restored: ours (``max_pixels``) replaces it.

    Pillow refuses images over ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels; twice that raises) whatever the
    caller asked, so ``max_pixels=None`` or a larger limit could not open such a file. Both checks read the size
    in the header at open, before any pixel is decoded; ours runs right after, with its own message.
    """
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(image, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open anything image-like as an 8-bit RGB PIL image.

    Args:
        image: a path, ``bytes`` of an encoded file, a PIL image, a numpy array (H, W[, C]) or a tensor
            (3, H, W) / (1, 3, H, W): float in [0, 1] (NaN, infinities and values outside are refused, as for
            arrays) or uint8 in [0, 255].
        max_pixels: refuse images with more pixels than this (``None``: no limit).

    Returns:
        ``PIL.Image.Image`` in mode ``"RGB"``, EXIF orientation applied.

    Raises:
        ImageLoadError: missing, truncated, corrupt or oversized files, and unsupported types.

    Example:
        >>> from rp_diffusers.utils import load_image
        >>> load_image(np.zeros((4, 6), dtype=np.uint8)).size
        (6, 4)
    """
    if isinstance(image, torch.Tensor):
        return _input_tensor_to_pil(image, max_pixels)[0]
    if isinstance(image, np.ndarray):
        pil = numpy_to_pil(image)
        _check_pixels(pil.size, max_pixels, "array")
        return pil
    if isinstance(image, Image.Image):
        _check_pixels(image.size, max_pixels, "image")
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        source, name = io.BytesIO(bytes(image)), "<bytes>"
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageLoadError(f"no such image file: {path}")
        source, name = path, str(path)
    else:
        raise ImageLoadError(
            f"cannot read an image from {type(image).__name__}; pass a path, bytes, PIL image, array or tensor"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _pillow_pixel_limit():
                opened = Image.open(source)
            _check_pixels(opened.size, max_pixels, name)
            opened.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"{name}: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"{name} is not an image Pillow can read (corrupt or unsupported format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name} is truncated or corrupt: {error}") from error
    return _to_rgb(ImageOps.exif_transpose(opened))


def _check_unit_range(values: np.ndarray | torch.Tensor, kind: str) -> None:
    """Refuse float image values that are not finite or lie outside [0, 1] (arrays and tensors alike)."""
    finite = np.isfinite(values).all() if isinstance(values, np.ndarray) else bool(torch.isfinite(values).all())
    if not finite:
        raise ImageLoadError(f"the image {kind} holds NaN or infinite values; pass finite values in [0, 1]")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise ImageLoadError(
            f"float image {kind}s must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]: divide 0-255 values by "
            "255, map [-1, 1] values with (x + 1) / 2, or clamp slightly out-of-range values to [0, 1]"
        )


def _input_tensor_to_pil(images: torch.Tensor, max_pixels: int | None) -> list[Image.Image]:
    """An input tensor (3, H, W) / (N, 3, H, W), float in [0, 1] or uint8 -> RGB PIL images, checked first.

    Unlike :func:`tensor_to_pil` (which clips model outputs), input values are checked, as for numpy arrays: a NaN
    or a value outside [0, 1] is a mistake upstream that clipping would hide.
    """
    if images.ndim not in (3, 4) or images.shape[-3] not in (1, 3):
        raise ImageLoadError(f"expected a (3, H, W) or (N, 3, H, W) tensor, got shape {tuple(images.shape)}")
    _check_pixels((images.shape[-1], images.shape[-2]), max_pixels, "tensor")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.dtype == torch.bool:
        images = images.float()
    elif images.is_floating_point():
        _check_unit_range(images.detach(), "tensor")
    else:
        raise ImageLoadError(
            f"unsupported tensor dtype {images.dtype}; use a float tensor in [0, 1] or a uint8 tensor in [0, 255]"
        )
    return tensor_to_pil(images)


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageLoadError(f"{name} has an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f}; pass max_pixels=None (or a larger value) if you trust the file"
        )


def pil_to_tensor(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """PIL image(s) of one size -> float tensor (N, 3, H, W) in [0, 1]."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    arrays = [np.asarray(_to_rgb(image), dtype=np.float32) / 255.0 for image in images]
    if len({array.shape for array in arrays}) != 1:
        raise ValueError("pil_to_tensor needs images of one size; process mixed sizes one by one")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float tensor (N, 3, H, W) or (3, H, W) in [0, 1] -> list of RGB PIL images (rounded, clipped)."""
    if not isinstance(images, torch.Tensor):
        raise ImageLoadError(f"expected a tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ImageLoadError(f"expected a (N, 3, H, W) tensor in [0, 1], got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    array = (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in array]


def to_pil_list(images, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    """One image or a list of images of any supported kind (sizes may differ) -> list of RGB PIL images.

    Tensors and arrays are checked as in :func:`load_image`: float values must be finite and lie in [0, 1].
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return _input_tensor_to_pil(images, max_pixels)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [load_image(a, max_pixels) for a in images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageLoadError("got an empty list of images")
        return [load_image(image, max_pixels) for image in images]
    return [load_image(images, max_pixels)]
