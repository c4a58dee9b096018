"""What every differentiable codec surrogate shares: the output dataclass, input checks and the name registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class SurrogateOutput:
    """Output of a codec surrogate.

    Args:
        reconstruction: (N, 3, H, W) in [0, 1], the input's dtype and device: what the real decoder would return.
        bits: (N,) float32, the estimated size in bits of the whole real file (headers included).
    """

    reconstruction: torch.Tensor
    bits: torch.Tensor


class CodecSurrogate(nn.Module):
    """Base class: ``surrogate(image, quality) -> SurrogateOutput``, differentiable in ``image``.

    Subclasses set ``codec_name`` (the name of the real codec in ``rp_diffusers.codecs``) and ``quality_range``
    (inclusive, on that codec's own quality scale), and implement ``forward``.
    """

    codec_name: str = ""
    quality_range: tuple[float, float] = (0.0, 100.0)

    def check_inputs(self, image: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
        """Validate ``image`` (N, 3, H, W) floating and ``quality`` (scalar or (N,)); return quality as (N,) float32.

        Raises:
            ValueError: wrong shapes, non-float images, non-finite or out-of-range qualities.
        """
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"{self.codec_name} surrogate expects an image tensor (N, 3, H, W) in [0, 1], got {shape}"
            )
        if not image.is_floating_point():
            raise ValueError(f"images are float tensors in [0, 1]; got dtype {image.dtype} (divide uint8 by 255)")
        if image.shape[0] == 0 or image.shape[2] == 0 or image.shape[3] == 0:
            raise ValueError(f"empty image batch of shape {tuple(image.shape)}")
        n = image.shape[0]
        if isinstance(quality, torch.Tensor):
            q = quality.to(device=image.device, dtype=torch.float32)
            if q.ndim == 0:
                q = q.expand(n)
            if q.shape != (n,):
                raise ValueError(f"quality must be a scalar or a tensor of shape ({n},), got {tuple(quality.shape)}")
        elif isinstance(quality, (int, float)) and not isinstance(quality, bool):
            q = torch.full((n,), float(quality), device=image.device)
        else:
            raise ValueError(f"quality must be a number or a tensor, got {type(quality).__name__}")
        low, high = self.quality_range
        values = q.detach()
        if not bool(torch.isfinite(values).all()) or bool((values < low).any()) or bool((values > high).any()):
            bad = values[~torch.isfinite(values) | (values < low) | (values > high)][0].item()
            raise ValueError(f"{self.codec_name} quality must lie in [{low:g}, {high:g}], got {bad:g}")
        return q


_REGISTRY: dict[str, Callable[..., CodecSurrogate]] = {}


def register_surrogate(name: str) -> Callable[[Callable[..., CodecSurrogate]], Callable[..., CodecSurrogate]]:
    """Decorator registering a surrogate class (or a factory returning one) under ``name``.

    Example:
        >>> @register_surrogate("my-codec")
        ... class MyCodecProxy(CodecSurrogate):
        ...     codec_name, quality_range = "my-codec", (0.0, 100.0)
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"surrogate names are non-empty lower-case strings, got {name!r}")

    def decorator(factory: Callable[..., CodecSurrogate]) -> Callable[..., CodecSurrogate]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a surrogate named {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_surrogates() -> list[str]:
    """Sorted names accepted by :func:`get_surrogate`."""
    return sorted(_REGISTRY)


def get_surrogate(name: str, **kwargs) -> CodecSurrogate:
    """Build the surrogate registered under ``name`` (``"jpeg"``: DiffJPEG; learned proxies by codec name).

    Args:
        name: registry name, see :func:`available_surrogates`.
        **kwargs: passed to the surrogate's constructor (e.g. ``rounding="soft"`` for DiffJPEG).

    Example:
        >>> surrogate = get_surrogate("jpeg")
        >>> out = surrogate(torch.rand(1, 3, 17, 33), quality=50)
        >>> out.reconstruction.shape, out.bits.shape
        (torch.Size([1, 3, 17, 33]), torch.Size([1]))
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown surrogate {name!r}; available: {', '.join(available_surrogates()) or 'none'}")
    return _REGISTRY[key](**kwargs)
