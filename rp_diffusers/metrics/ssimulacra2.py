"""SSIMULACRA2 in batched, differentiable PyTorch: the perceptual metric of the JPEG XL and AVIF communities.

SSIMULACRA2 (Jon Sneyers, Cloudinary, 2022; libjxl ``tools/ssimulacra2.cc``) compares two sRGB images in the
XYB colour space of JPEG XL at six scales. At each scale and for each of the three XYB planes it pools three
error maps with a 1-norm and a 4-norm: the SSIM error ``1 - (1 - (mu1 - mu2)^2) * (2 sigma12 + C2) /
(sigma1^2 + sigma2^2 + C2)`` (the luminance term is a difference, not a ratio, because XYB is perceptually
uniform), "artifacts" (edges the distorted image has and the original lacks: ringing, blocking) and "detail
loss" (blurring). The 108 pooled values are weighted (weights fitted on CID22 and other subjective data) and
mapped to a score: 100 is lossless, 90 visually lossless, 70 high quality, 50 medium, 30 low, and below 0
very strong distortion. It is a quality: higher is better.

This implementation follows the independent NumPy port on PyPI (``ssimulacra2``, BSD-3) step for step, which
the tests use as the oracle: a truncated Gaussian of sigma 1.5 (11 taps) instead of libjxl's recursive one,
zero padding across the width and symmetric padding across the height, and 2x2 box downsampling in linear RGB
with partial blocks averaged over the pixels they hold. Every step is a tensor operation, so the score has a
gradient with respect to the distorted image (for training); it runs on any device, in float32 or float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .psnr import check_image_pair, quantize_8bit

NUM_SCALES = 6
_C2 = 0.0009
_SIGMA = 1.5
_RADIUS = 5  # scipy.ndimage.gaussian_filter with truncate=3.33: int(3.33 * 1.5 + 0.5)
_OPSIN = (
    (0.30, 1.0 - 0.078 - 0.30, 0.078),
    (0.23, 1.0 - 0.078 - 0.23, 0.078),
    (0.24342268924547819, 0.20476744424496821, 1.0 - 0.24342268924547819 - 0.20476744424496821),
)
_OPSIN_BIAS = 0.0037930732552754493
# Weights of libjxl's ssimulacra2.cc, ordered (plane, scale, norm, [ssim, artifact, detail loss]).
_WEIGHTS = (
    0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0, 0.0, 0.0004371155730107379, 0.0,
    1.1041726426657346, 0.00066284834129271, 0.00015231632783718752, 0.0, 0.0016406437456599754, 0.0,
    1.8422455520539298, 11.441172603757666, 0.0, 0.0007989109436015163, 0.000176816438078653, 0.0,
    1.8787594979546387, 10.94906990605142, 0.0, 0.0007289346991508072, 0.9677937080626833, 0.0,
    0.00014003424285435884, 0.9981766977854967, 0.00031949755934435053, 0.0004550992113792063, 0.0, 0.0,
    0.0013648766163243398, 0.0, 0.0, 0.0, 0.0, 0.0, 7.466890328078848, 0.0, 17.445833984131262,
    0.0006235601634041466, 0.0, 0.0, 6.683678146179332, 0.00037724407979611296, 1.027889937768264,
    225.20515300849274, 0.0, 0.0, 19.213238186143016, 0.0011401524586618361, 0.001237755635509985,
    176.39317598450694, 0.0, 0.0, 24.43300999870476, 0.28520802612117757, 0.0004485436923833408, 0.0, 0.0, 0.0,
    34.77906344483772, 44.835625328877896, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0008680556573291698, 0.0,
    0.0, 0.0, 0.0, 0.0, 0.0005313191874358747, 0.0, 0.00016533814161379112, 0.0, 0.0, 0.0, 0.0, 0.0,
    0.0004179171803251336, 0.0017290828234722833, 0.0, 0.0020827005846636437, 0.0, 0.0, 8.826982764996862,
    23.19243343998926, 0.0, 95.1080498811086, 0.9863978034400682, 0.9834382792465353, 0.0012286405048278493,
    171.2667255897307, 0.9807858872435379, 0.0, 0.0, 0.0, 0.0005130064588990679, 0.0, 0.00010854057858411537,
)  # fmt: skip


def srgb_to_linear(image: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer curve inverted: ``image`` in [0, 1] -> linear light in [0, 1]."""
    return torch.where(image <= 0.04045, image / 12.92, ((image.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_xyb(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB ``(N, 3, H, W)`` -> the positive XYB planes SSIMULACRA2 compares (JPEG XL's opsin model)."""
    matrix = torch.tensor(_OPSIN, dtype=linear.dtype, device=linear.device)
    mixed = torch.einsum("ij,njhw->nihw", matrix, linear) + _OPSIN_BIAS
    # The cube root of a value >= the bias (0.0038) for non-negative light: no infinite gradient at zero.
    mixed = mixed.clamp(min=_OPSIN_BIAS * 1e-3) ** (1.0 / 3.0) - _OPSIN_BIAS ** (1.0 / 3.0)
    x = 0.5 * (mixed[:, 0] - mixed[:, 1])
    y = 0.5 * (mixed[:, 0] + mixed[:, 1])
    # MakePositiveXYB: scale X, offset Y, and B relative to Y.
    return torch.stack([x * 14.0 + 0.42, y + 0.01, mixed[:, 2] - y + 0.55], dim=1)


def _gaussian_taps() -> list[float]:
    offsets = torch.arange(-_RADIUS, _RADIUS + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / _SIGMA) ** 2)
    return (taps / taps.sum()).tolist()


_TAPS = _gaussian_taps()


def _blur(planes: torch.Tensor, taps: list[float] = _TAPS) -> torch.Tensor:
    """Separable Gaussian of every plane of ``(N, C, H, W)``: zeros past the left/right edges, the image
    mirrored (edge pixel repeated) past the top/bottom ones, as the reference port does.

    A sum of 11 shifted slices: for one-channel maps this is about 4x faster on a CPU than ``conv2d``, and
    gives the same values."""
    h, w = planes.shape[-2:]
    padded = F.pad(planes, (_RADIUS, _RADIUS, 0, 0))
    across = padded[..., 0:w] * taps[0]
    for k in range(1, 2 * _RADIUS + 1):
        across.add_(padded[..., k : k + w], alpha=taps[k])
    # Symmetric padding (d c b a | a b c d | d c b a), repeated for images shorter than the radius.
    index = torch.arange(-_RADIUS, h + _RADIUS, device=planes.device) % (2 * h)
    index = torch.where(index >= h, 2 * h - 1 - index, index)
    padded = across.index_select(-2, index)
    out = padded[..., 0:h, :] * taps[0]
    for k in range(1, 2 * _RADIUS + 1):
        out.add_(padded[..., k : k + h, :], alpha=taps[k])
    return out


def _downsample(linear: torch.Tensor) -> torch.Tensor:
    """2x2 box average; a last odd row or column is averaged over the pixels it has."""
    return F.avg_pool2d(linear, 2, stride=2, ceil_mode=True, count_include_pad=False)


def _root4(values: torch.Tensor) -> torch.Tensor:
    """``values ** 0.25`` with a zero (not infinite) gradient where ``values`` is 0 (identical images)."""
    positive = values > 0
    return torch.where(positive, torch.where(positive, values, torch.ones_like(values)) ** 0.25, 0.0)


def _pooled(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-norm and 4-norm over the pixels of each plane: ``(N, 3, H, W)`` -> two ``(N, 3)``."""
    flat = maps.flatten(2)
    return flat.mean(dim=2), _root4(flat.square().square().mean(dim=2))


def _scale_features(ref_xyb: torch.Tensor, dist_xyb: torch.Tensor) -> torch.Tensor:
    """The 18 pooled values of one scale as ``(N, 3 planes, 2 norms, 3 maps)``."""
    n = ref_xyb.shape[0]
    stacked = torch.cat([ref_xyb * ref_xyb, dist_xyb * dist_xyb, ref_xyb * dist_xyb, ref_xyb, dist_xyb])
    sigma11, sigma22, sigma12, mu1, mu2 = _blur(stacked).split(n)
    num_m = 1.0 - (mu1 - mu2).square()
    num_s = 2.0 * (sigma12 - mu1 * mu2) + _C2
    denom_s = (sigma11 - mu1 * mu1) + (sigma22 - mu2 * mu2) + _C2
    ssim_error = (1.0 - num_m * num_s / denom_s).clamp(min=0.0)
    edge_ratio = (1.0 + (dist_xyb - mu2).abs()) / (1.0 + (ref_xyb - mu1).abs()) - 1.0
    artifact, detail_loss = edge_ratio.clamp(min=0.0), (-edge_ratio).clamp(min=0.0)
    pooled = [_pooled(m) for m in (ssim_error, artifact, detail_loss)]  # 3 maps x (1-norm, 4-norm), each (N, 3)
    return torch.stack([torch.stack([p[norm] for p in pooled], dim=-1) for norm in (0, 1)], dim=2)


def _score(features: torch.Tensor) -> torch.Tensor:
    """Weighted sum of ``(N, 3, S, 2, 3)`` pooled values -> the SSIMULACRA2 score per image."""
    n = features.shape[0]
    # libjxl walks the weights in (plane, scale, norm, map) order over the scales it computed; with fewer than
    # six (images under 128 px on a side) the later weights are simply not reached, as there.
    values = features.abs().reshape(n, -1)
    weights = torch.tensor(_WEIGHTS, dtype=values.dtype, device=values.device)[: values.shape[1]]
    total = (values * weights).sum(dim=1) * 0.9562382616834844
    total = 2.326765642916932 * total - 0.020884521182843837 * total**2 + 6.248496625763138e-05 * total**3
    positive = ~(total <= 0)  # NaN (a broken decode) stays NaN instead of scoring a perfect 100
    safe = torch.where(positive, total, torch.ones_like(total))
    return torch.where(positive, 100.0 - 10.0 * safe**0.6276336467831387, torch.full_like(total, 100.0))


def ssimulacra2(
    reference: torch.Tensor,
    distorted: torch.Tensor,
    *,
    quantize: bool = True,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-image SSIMULACRA2 score of ``distorted`` against ``reference``.

    Args:
        reference (`torch.Tensor` of shape `(N, 3, H, W)`): sRGB images in [0, 1]; H and W at least 8.
        distorted (`torch.Tensor` of shape `(N, 3, H, W)`): sRGB images in [0, 1].
        quantize (`bool`): round both to 8 bits first (default, as for decoded files; no gradient then). Pass
            ``False`` to measure floating-point images and get a gradient, e.g. as a training loss.
        dtype (`torch.dtype`, *optional*): the precision of the computation (default float32, or the inputs'
            dtype if that is float64). On photographs float32 is within 0.01 points of float64 and 3-4x faster.

    Returns:
        `torch.Tensor` of shape `(N,)` in the computation's dtype: 100 for identical images, lower is worse,
        may be negative.

    Raises:
        ValueError: for images that are not two NCHW RGB batches of the same shape, or under 8x8 pixels.

    Example:
        >>> x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        >>> float(ssimulacra2(x, x)[0])
        100.0
        >>> bool(ssimulacra2(x, (x + 0.05).clamp(0, 1))[0] < 100)
        True
    """
    check_image_pair(reference, distorted, channels=3, name="ssimulacra2")
    if min(reference.shape[-2:]) < 8:
        raise ValueError(f"ssimulacra2: images must be at least 8x8 pixels, got {tuple(reference.shape[-2:])}")
    if dtype is None:
        dtype = torch.float64 if reference.dtype == torch.float64 else torch.float32
    if quantize:
        reference, distorted = quantize_8bit(reference), quantize_8bit(distorted)
    ref_linear = srgb_to_linear(reference.to(dtype).clamp(0.0, 1.0))
    dist_linear = srgb_to_linear(distorted.to(dtype).clamp(0.0, 1.0))
    scales = []
    for scale in range(NUM_SCALES):
        if scale:
            ref_linear, dist_linear = _downsample(ref_linear), _downsample(dist_linear)
        if min(ref_linear.shape[-2:]) < 8:
            break
        scales.append(_scale_features(linear_to_xyb(ref_linear), linear_to_xyb(dist_linear)))
    return _score(torch.stack(scales, dim=2))
