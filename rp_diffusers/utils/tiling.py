"""Padding and tiling: reflect-pad to a model's multiple and crop back; tiled processing with smooth blending.

Images are never resized to fit a model: bpp is measured on the original pixels, so the pipeline pads with
reflection to the model's multiple, runs, and crops back. Large images run in overlapping tiles whose outputs are
blended with raised-cosine weights that form an exact partition of unity, so memory stays bounded by the tile
size and no seams appear where tiles meet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Smallest (H', W') >= (height, width) with both divisible by ``multiple``."""
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple}")
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


def pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the bottom and right of ``image`` so H and W become multiples of ``multiple``.

    Reflection is repeated when the padding is larger than the image (tiny inputs); a side of one pixel is
    replicated, the only extension it has.

    Args:
        image: (N, C, H, W) tensor, any float dtype.
        multiple: the size both H and W must divide by (e.g. 64 for SD 2.1: VAE factor 8 x UNet factor 8).

    Returns:
        ``(padded, (H, W))``: the padded (N, C, H', W') tensor and the original size for :func:`crop_to_size`.

    Example:
        >>> padded, size = pad_to_multiple(torch.rand(1, 3, 30, 50), 16)
        >>> tuple(padded.shape), size
        ((1, 3, 32, 64), (30, 50))
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    target_h, target_w = padded_size(height, width, multiple)
    padded = image
    while padded.shape[-2] < target_h or padded.shape[-1] < target_w:
        cur_h, cur_w = padded.shape[-2:]
        # torch's reflect mode needs pad < size; pad as much as allowed and repeat.
        pad_h = min(target_h - cur_h, max(cur_h - 1, 0))
        pad_w = min(target_w - cur_w, max(cur_w - 1, 0))
        if pad_h == 0 and pad_w == 0:
            padded = F.pad(padded, (0, target_w - cur_w, 0, target_h - cur_h), mode="replicate")
            break
        padded = F.pad(padded, (0, pad_w, 0, pad_h), mode="reflect")
    return padded, (height, width)


def crop_to_size(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: keep the top-left ``size`` = (H, W) of a (N, C, H', W') tensor."""
    height, width = size
    return image[..., :height, :width]


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared pixels.

    Starts are multiples of ``align`` (so tiles sit on the model's downsampling grid); the last tile ends exactly at
    ``length``. ``length`` and ``tile`` must be multiples of ``align``.
    """
    if tile >= length:
        return [0]
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile size ({tile})")
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(length: int, device, dtype) -> torch.Tensor:
    """Raised-cosine ramp rising over ``length`` samples, strictly positive (never divides by zero)."""
    position = (torch.arange(length, device=device, dtype=torch.float64) + 0.5) / length
    return (0.5 - 0.5 * torch.cos(math.pi * position)).to(dtype)


def blend_weights_1d(starts: list[int], tile: int, device=None, dtype=torch.float32) -> list[torch.Tensor]:
    """One weight vector per tile: 1 inside, raised-cosine ramps over the spans shared with its neighbours.

    Ramps sit only on sides that touch another tile, so the image border keeps full weight. Weights are positive
    everywhere; the caller divides by their sum, which makes the blend a partition of unity.
    """
    weights = []
    for index, start in enumerate(starts):
        weight = torch.ones(tile, device=device, dtype=dtype)
        if index > 0:
            shared = starts[index - 1] + tile - start
            if shared > 0:
                weight[:shared] = _ramp(shared, device, dtype)
        if index < len(starts) - 1:
            shared = start + tile - starts[index + 1]
            if shared > 0:
                weight[tile - shared :] = torch.minimum(weight[tile - shared :], _ramp(shared, device, dtype).flip(0))
        weights.append(weight)
    return weights


def _batched(items: list, size: int) -> Iterable[list]:
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile_size: int,
    overlap: int,
    align: int = 1,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Apply a size-preserving ``fn`` to overlapping tiles of ``image`` and blend the results without seams.

    Args:
        fn: maps a (B, C, h, w) batch of tiles to (B, C_out, h, w); it must preserve the spatial size.
        image: (N, C, H, W); H and W multiples of ``align`` (pad first with :func:`pad_to_multiple`).
        tile_size: tile side in pixels (clamped to the image; rounded down to a multiple of ``align``).
        overlap: minimum pixels shared by neighbouring tiles; the blend ramps over the shared span.
        align: tile starts and sizes are multiples of this (the model's total downsampling factor).
        batch_size: how many tiles ``fn`` receives at once.
        progress: called with the number of tiles finished after each batch (e.g. a tqdm bar's ``update``).
        output_dtype: dtype of the accumulated result (float32 keeps the blend exact).

    Returns:
        (N, C_out, H, W) tensor; with a pointwise ``fn`` it equals ``fn(image)`` up to rounding.

    Example:
        >>> out = tiled_apply(lambda t: t * 2, torch.rand(1, 3, 96, 160), tile_size=64, overlap=16, align=8)
        >>> tuple(out.shape)
        (1, 3, 96, 160)
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    if height % align or width % align:
        raise ValueError(f"image size {height}x{width} is not a multiple of {align}; call pad_to_multiple first")
    if tile_size < align:
        raise ValueError(f"tile_size ({tile_size}) must be at least the alignment ({align})")
    tile = tile_size // align * align
    tile_h, tile_w = min(tile, height), min(tile, width)
    starts_y = tile_starts(height, tile_h, overlap, align)
    starts_x = tile_starts(width, tile_w, overlap, align)
    weights_y = blend_weights_1d(starts_y, tile_h, image.device, output_dtype)
    weights_x = blend_weights_1d(starts_x, tile_w, image.device, output_dtype)
    jobs = [(n, iy, ix) for n in range(image.shape[0]) for iy in range(len(starts_y)) for ix in range(len(starts_x))]

    # The weights are separable, so their sum over tiles is the outer product of the 1-D sums.
    total_y = torch.zeros(height, device=image.device, dtype=output_dtype)
    total_x = torch.zeros(width, device=image.device, dtype=output_dtype)
    for start, weight in zip(starts_y, weights_y):
        total_y[start : start + tile_h] += weight
    for start, weight in zip(starts_x, weights_x):
        total_x[start : start + tile_w] += weight
    output = None
    for group in _batched(jobs, batch_size):
        tiles = torch.stack(
            [
                image[n, :, starts_y[iy] : starts_y[iy] + tile_h, starts_x[ix] : starts_x[ix] + tile_w]
                for n, iy, ix in group
            ]
        )
        result = fn(tiles).to(output_dtype)
        if output is None:
            output = torch.zeros(
                image.shape[0], result.shape[1], height, width, device=image.device, dtype=output_dtype
            )
        for (n, iy, ix), tile_out in zip(group, result):
            y, x = starts_y[iy], starts_x[ix]
            weight = weights_y[iy][:, None] * weights_x[ix][None, :]
            output[n, :, y : y + tile_h, x : x + tile_w] += tile_out * weight
        if progress is not None:
            progress(len(group))
    return output / (total_y[:, None] * total_x[None, :])
