"""Per-image metrics for evaluation: one call, several metrics, unavailable networks skipped with a warning."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from .dists import DISTS
from .dists import _pretrained as _pretrained_dists
from .lpips import LPIPS
from .lpips import _pretrained as _pretrained_lpips
from .psnr import check_image_pair, psnr
from .ssim import ms_ssim, ssim
from .weights import MetricWeightsUnavailable

PIXEL_METRICS = {"psnr": psnr, "ms_ssim": ms_ssim, "ssim": ssim}
NETWORK_METRICS = {"lpips": "lpips_alex", "lpips_alex": "lpips_alex", "lpips_vgg": "lpips_vgg", "dists": "dists"}
AVAILABLE_METRICS = (*PIXEL_METRICS, *NETWORK_METRICS)


def _network(metric: str, models: dict[str, torch.nn.Module], repo_id: str | None, device) -> torch.nn.Module:
    if metric in models:
        return models[metric]
    name = NETWORK_METRICS[metric]
    if name in models:
        return models[name]
    if name == "dists":
        return _pretrained_dists(repo_id, str(device))
    return _pretrained_lpips(name.removeprefix("lpips_"), repo_id, str(device))


@torch.no_grad()
def compute_metrics(
    reference: torch.Tensor,
    distorted: torch.Tensor,
    metrics: Iterable[str] = ("psnr", "ms_ssim", "lpips", "dists"),
    *,
    models: dict[str, LPIPS | DISTS] | None = None,
    repo_id: str | None = None,
) -> dict[str, list[float]]:
    """Compute several per-image metrics between two batches.

    Args:
        reference (`torch.Tensor` of shape `(N, 3, H, W)`): original images in [0, 1].
        distorted (`torch.Tensor` of shape `(N, 3, H, W)`): decoded images in [0, 1].
        metrics (iterable of `str`): any of :data:`AVAILABLE_METRICS`. ``"lpips"`` is LPIPS-Alex. PSNR, SSIM
            and MS-SSIM quantise to 8 bits first (see :func:`~rp_diffusers.metrics.psnr`).
        models (`dict`, *optional*): ready networks by metric name (``"lpips"``, ``"lpips_vgg"``, ``"dists"``),
            e.g. built from explicit weights; others load the pretrained weights (cached).
        repo_id (`str`, *optional*): Hub repo holding the converted weights.

    Returns:
        `dict[str, list[float]]`: one value per image for each metric computed. A network metric whose
        weights are unavailable is left out, with a ``UserWarning`` saying what to download.

    Raises:
        ValueError: for an unknown metric name or mismatched images (and MS-SSIM on images under 161 px).

    Example:
        >>> x = torch.rand(2, 3, 192, 192)
        >>> compute_metrics(x, x, metrics=("psnr", "ms_ssim"))
        {'psnr': [inf, inf], 'ms_ssim': [1.0, 1.0]}
    """
    metrics = list(metrics)
    unknown = [metric for metric in metrics if metric not in AVAILABLE_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(AVAILABLE_METRICS)}")
    check_image_pair(reference, distorted, channels=3, name="compute_metrics")
    models = dict(models or {})
    results: dict[str, list[float]] = {}
    for metric in metrics:
        if metric in PIXEL_METRICS:
            values = PIXEL_METRICS[metric](reference, distorted)
        else:
            try:
                network = _network(metric, models, repo_id, reference.device)
            except MetricWeightsUnavailable as error:
                warnings.warn(f"skipping {metric}: {error}", UserWarning, stacklevel=2)
                continue
            values = network(reference, distorted)
        results[metric] = [float(value) for value in values]
    return results
