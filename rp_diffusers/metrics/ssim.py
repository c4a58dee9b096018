"""SSIM and the 5-scale MS-SSIM of Wang et al. (2003), computed exactly as `pytorch_msssim` (and CompressAI) do.

Details that change the numbers, all as in `pytorch_msssim`:
- Gaussian window of 11 taps, sigma 1.5, applied separably (rows, then columns) without padding ("valid").
- Constants ``C1 = (0.01 * data_range)**2``, ``C2 = (0.03 * data_range)**2``.
- Per scale and per channel: the mean of the contrast-structure map ``cs`` (clamped at 0 by ReLU); at the
  coarsest scale the mean SSIM map (also clamped at 0). Between scales: 2x2 average pooling that pads odd
  sizes with one zero on each side and counts the padding in the average.
- ``MS-SSIM = prod_j cs_j ** w_j * ssim_5 ** w_5`` per channel with weights
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), then the mean over the RGB channels.
- Images must be at least 161 pixels on each side (four halvings must leave room for the 11-tap window);
  smaller images raise a ``ValueError`` (use :func:`ssim`, or larger crops). Nothing is padded or resized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .psnr import check_image_pair, quantize_8bit

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on ``size // 2``, float32 (as `pytorch_msssim`)."""
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def _blur(image: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    channels = image.shape[1]
    rows = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    return F.conv2d(F.conv2d(image, rows, groups=channels), cols, groups=channels)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, data_range: float, window: torch.Tensor):
    """Per-channel mean SSIM and mean contrast-structure term, both of shape (N, C)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    mu_x2, mu_y2, mu_xy = mu_x.square(), mu_y.square(), mu_x * mu_y
    sigma_x2 = _blur(x * x, window) - mu_x2
    sigma_y2 = _blur(y * y, window) - mu_y2
    sigma_xy = _blur(x * y, window) - mu_xy
    cs_map = (2 * sigma_xy + c2) / (sigma_x2 + sigma_y2 + c2)
    ssim_map = (2 * mu_xy + c1) / (mu_x2 + mu_y2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _prepare(x, y, data_range, quantize, name):
    check_image_pair(x, y, name=name)
    if quantize:
        x, y = quantize_8bit(x, data_range), quantize_8bit(y, data_range)
    return x, y, gaussian_window().to(device=x.device, dtype=x.dtype)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, *, quantize: bool = True) -> torch.Tensor:
    """Per-image single-scale SSIM (Gaussian window 11, sigma 1.5), averaged over channels.

    Args:
        x, y (`torch.Tensor` of shape `(N, C, H, W)`): reference and distorted images in ``[0, data_range]``,
            at least 11 pixels on each side.
        data_range (`float`): the value of white.
        quantize (`bool`): quantise both to 8 bits first (default). Pass ``False`` for a differentiable loss.

    Returns:
        `torch.Tensor` of shape `(N,)` in ``[-1, 1]``, 1 for identical images.
    """
    x, y, window = _prepare(x, y, data_range, quantize, "ssim")
    if min(x.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"ssim: images must be at least {WINDOW_SIZE} pixels on each side, got {tuple(x.shape[-2:])}")
    return _ssim_and_cs(x, y, data_range, window)[0].mean(dim=1)


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    *,
    quantize: bool = True,
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
) -> torch.Tensor:
    """Per-image MS-SSIM, identical to ``pytorch_msssim.ms_ssim(x, y, data_range, size_average=False)``.

    Args:
        x (`torch.Tensor` of shape `(N, C, H, W)`): reference images in ``[0, data_range]``, at least 161
            pixels on each side.
        y (`torch.Tensor` of shape `(N, C, H, W)`): distorted images, same shape.
        data_range (`float`): the value of white (1.0 for [0, 1] images).
        quantize (`bool`): quantise both to 8 bits first (default, as CompressAI evaluates decoded files).
            Pass ``False`` to use MS-SSIM as a differentiable loss.
        weights (`tuple[float, ...]`): per-scale exponents; their number sets the number of scales.

    Returns:
        `torch.Tensor` of shape `(N,)` in ``[0, 1]``, 1 for identical images. Papers often report
        ``-10 * log10(1 - ms_ssim)`` in dB.

    Raises:
        ValueError: if an image side is smaller than ``(11 - 1) * 2**(scales - 1) + 1`` (161 for 5 scales).

    Example:
        >>> x = torch.rand(1, 3, 192, 192)
        >>> float(ms_ssim(x, x)[0])
        1.0
    """
    x, y, window = _prepare(x, y, data_range, quantize, "ms_ssim")
    levels = len(weights)
    min_side = (WINDOW_SIZE - 1) * 2 ** (levels - 1) + 1
    if min(x.shape[-2:]) < min_side:
        raise ValueError(
            f"ms_ssim: images must be at least {min_side} pixels on each side for {levels} scales, got "
            f"{tuple(x.shape[-2:])}. Use `ssim` for small images or evaluate on larger crops "
            "(nothing is padded or resized, so that results stay comparable with pytorch_msssim/CompressAI)."
        )
    contrast = []
    for level in range(levels):
        ssim_per_channel, cs = _ssim_and_cs(x, y, data_range, window)
        if level < levels - 1:
            contrast.append(torch.relu(cs))
            padding = [size % 2 for size in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    values = torch.stack([*contrast, torch.relu(ssim_per_channel)], dim=0)  # (levels, N, C)
    exponents = torch.tensor(weights, dtype=values.dtype, device=values.device).view(-1, 1, 1)
    return torch.prod(values**exponents, dim=0).mean(dim=1)
