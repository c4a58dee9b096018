"""Differentiable VIF (visual information fidelity, pixel domain), the information-fidelity feature of VMAF.

Sheikh and Bovik, "Image information and visual quality", IEEE TIP 2006, in the multi-scale pixel-domain form
that libvmaf computes (``vif_scale0..3``): on the luma plane (BT.709, 16-235, mirrored borders), at four scales with Gaussian windows of
17, 9, 5 and 3 taps (sigma = taps / 5), each scale between the reference x and the distorted y is

    sum log2(1 + g^2 sigma_x^2 / (sigma_v^2 + sigma_n^2)) / sum log2(1 + sigma_x^2 / sigma_n^2),

with g = sigma_xy / sigma_x^2, sigma_v^2 = sigma_y^2 - g sigma_xy and sigma_n^2 = 2 (windows whose reference
variance is under sigma_n^2 count ``1 - sigma_y^2 / 127.5^2`` out of 1, as in libvmaf). ``enhancement_gain_limit``
caps g as VMAF-NEG does (1.0: a distortion cannot score above the reference by "enhancing" it). VMAF itself is a
learned combination of these, a detail-loss feature and motion; this module gives the part that a loss can use
so that removing fine detail costs what VMAF-NEG says it costs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["vif", "vif_per_scale"]

_TAPS = (17, 9, 5, 3)
_SIGMA_N2 = 2.0
_SIGMA_MAX_INV = 4.0 / 255.0**2
_EPS = 1e-10


def _window(taps: int, device, dtype) -> torch.Tensor:
    sigma = taps / 5.0
    x = torch.arange(taps, device=device, dtype=dtype) - (taps - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable filter with mirrored borders (same size out), as libvmaf's."""
    taps = window.numel()
    half = taps // 2
    x = F.conv2d(F.pad(x, (half, half, 0, 0), mode="reflect"), window.view(1, 1, 1, taps))
    return F.conv2d(F.pad(x, (0, 0, half, half), mode="reflect"), window.view(1, 1, taps, 1))


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] -> (N, 1, H, W) BT.709 limited-range luma, 16-235 (what the package's VMAF
    measurement feeds libvmaf: ``rp_diffusers.metrics.external``)."""
    weights = torch.tensor([0.2126, 0.7152, 0.0722], device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return 16.0 + 219.0 * (rgb * weights).sum(1, keepdim=True)


def vif_per_scale(
    reference: torch.Tensor, distorted: torch.Tensor, enhancement_gain_limit: float | None = 1.0
) -> torch.Tensor:
    """VIF of ``distorted`` against ``reference`` at each of the four scales: (N, 4), 1 for identical images.

    Args:
        reference, distorted: (N, 3, H, W) sRGB in [0, 1] (differentiable; no quantisation here), H and W of
            at least 24 pixels (the coarsest scale needs its 3-tap window).
        enhancement_gain_limit: cap on the local gain g (VMAF-NEG uses 1.0; plain VMAF 100, which ``None``, no cap,
            matches on photographs); the libvmaf comparison in the tests is uncapped.
    """
    if reference.shape != distorted.shape or reference.ndim != 4 or reference.shape[1] != 3:
        raise ValueError(
            f"vif needs two (N, 3, H, W) batches of one shape, got {tuple(reference.shape)} and "
            f"{tuple(distorted.shape)}"
        )
    if min(reference.shape[-2:]) < 24:
        raise ValueError(f"vif needs images of at least 24x24 pixels, got {tuple(reference.shape[-2:])}")
    x, y = _luma(reference.float()), _luma(distorted.float())
    scores = []
    for scale, taps in enumerate(_TAPS):
        window = _window(taps, x.device, x.dtype)
        if scale:  # low-pass with this scale's window, then decimate by 2 (as libvmaf)
            x, y = _filter(x, window)[..., ::2, ::2], _filter(y, window)[..., ::2, ::2]
        mu_x, mu_y = _filter(x, window), _filter(y, window)
        sigma_x2 = (_filter(x * x, window) - mu_x**2).clamp_min(0)
        sigma_y2 = (_filter(y * y, window) - mu_y**2).clamp_min(0)
        sigma_xy = _filter(x * y, window) - mu_x * mu_y
        g = sigma_xy / (sigma_x2 + _EPS)
        sv2 = sigma_y2 - g * sigma_xy
        negative = g < 0  # libvmaf: a negative gain carries no information; the distortion is all noise
        sv2 = torch.where(negative, sigma_y2, sv2).clamp_min(_EPS)
        g = g.clamp_min(0)
        if enhancement_gain_limit is not None:
            g = g.clamp(max=enhancement_gain_limit)
        # flat reference windows (variance under the noise's) count 1 - sigma_y^2 / sigma_max^2 out of 1, as libvmaf
        flat = sigma_x2 < _SIGMA_N2
        numerator = (
            torch.where(flat, 1 - sigma_y2 * _SIGMA_MAX_INV, torch.log2(1 + g**2 * sigma_x2 / (sv2 + _SIGMA_N2)))
            .flatten(1)
            .sum(1)
        )
        denominator = torch.where(flat, torch.ones_like(sigma_x2), torch.log2(1 + sigma_x2 / _SIGMA_N2))
        denominator = denominator.flatten(1).sum(1)
        scores.append(numerator / denominator.clamp_min(_EPS))
    return torch.stack(scores, dim=1)


def vif(reference: torch.Tensor, distorted: torch.Tensor, enhancement_gain_limit: float | None = 1.0) -> torch.Tensor:
    """Mean VIF over the four scales, (N,); see :func:`vif_per_scale`.

    Example:
        >>> x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> round(float(vif(x, x)[0]), 4)
        1.0
        >>> bool(vif(x, torch.nn.functional.avg_pool2d(x, 3, 1, 1))[0] < 0.9)  # blur loses information
        True
    """
    return vif_per_scale(reference, distorted, enhancement_gain_limit).mean(1)
