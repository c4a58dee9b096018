"""Per-image metrics for evaluation: one call, every metric by name, the ones that cannot run here left out.

The metrics, in four kinds:

- pixel metrics, pure torch: ``psnr``, ``ssim``, ``ms_ssim`` and ``ssimulacra2``;
- reference tools run as programs, weight-free: ``butteraugli`` (max distance) and ``butteraugli_3norm`` from
  libjxl's ``butteraugli_main``, ``vmaf`` and ``vmaf_neg`` from libvmaf in the static ffmpeg of imageio-ffmpeg;
- networks with downloaded weights: ``lpips`` (LPIPS-Alex), ``lpips_vgg``, ``dists``.

One rule for every caller (the evaluation sweep, ``compress``, the Space and training validation): a metric that
cannot be computed for an image's size (MS-SSIM under 161 pixels a side, SSIMULACRA2 and Butteraugli under 8, VMAF under 17) is
left out of the result without a warning; a tool or network that is missing here is left out with one
``UserWarning`` saying how to install it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from .dists import DISTS, pretrained_dists
from .external import (
    BUTTERAUGLI_MIN_SIDE,
    VMAF_MIN_SIDE,
    MetricToolUnavailable,
    butteraugli_available,
    butteraugli_scores,
    vmaf_available,
    vmaf_scores,
)
from .lpips import LPIPS, pretrained_lpips
from .psnr import check_image_pair, psnr
from .ssim import ms_ssim, ssim
from .ssimulacra2 import ssimulacra2
from .weights import MetricWeightsUnavailable

MS_SSIM_MIN_SIDE = 161  # five scales of an 11-tap window: (11 - 1) * 2**4 + 1
PIXEL_METRICS = {"psnr": psnr, "ms_ssim": ms_ssim, "ssim": ssim, "ssimulacra2": ssimulacra2}
# Tool metrics: name -> (the function computing a family of scores in one run, the key of this one).
TOOL_METRICS = {
    "butteraugli": (butteraugli_scores, "butteraugli"),
    "butteraugli_3norm": (butteraugli_scores, "butteraugli_3norm"),
    "vmaf": (vmaf_scores, "vmaf"),
    "vmaf_neg": (vmaf_scores, "vmaf_neg"),
}
NETWORK_METRICS = {"lpips": "lpips_alex", "lpips_alex": "lpips_alex", "lpips_vgg": "lpips_vgg", "dists": "dists"}
AVAILABLE_METRICS = (*PIXEL_METRICS, *TOOL_METRICS, *NETWORK_METRICS)
MIN_SIDE = {
    "ms_ssim": MS_SSIM_MIN_SIDE,
    "ssim": 11,
    "ssimulacra2": 8,
    "butteraugli": BUTTERAUGLI_MIN_SIDE,
    "butteraugli_3norm": BUTTERAUGLI_MIN_SIDE,
    "vmaf": VMAF_MIN_SIDE,
    "vmaf_neg": VMAF_MIN_SIDE,
}
WEIGHT_FREE_PERCEPTUAL = ("ssimulacra2", "butteraugli", "butteraugli_3norm", "vmaf", "vmaf_neg")


def installed_perceptual_metrics() -> list[str]:
    """The weight-free perceptual metrics this machine can compute (SSIMULACRA2 always; the tools if found)."""
    found = ["ssimulacra2"]
    if butteraugli_available():
        found += ["butteraugli", "butteraugli_3norm"]
    if vmaf_available():
        found += ["vmaf", "vmaf_neg"]
    return found


def default_metrics() -> tuple[str, ...]:
    """What ``rp-diffusers evaluate`` measures by default: PSNR, MS-SSIM, every installed weight-free perceptual
    metric, then LPIPS and DISTS (these two are dropped with a warning where their weights cannot be had)."""
    return ("psnr", "ms_ssim", *installed_perceptual_metrics(), "lpips", "dists")


def computable(metric: str, height: int, width: int) -> bool:
    """Whether ``metric`` is defined for images of ``height`` x ``width`` pixels (the size rule above)."""
    return min(height, width) >= MIN_SIDE.get(metric, 1)


def _network(metric: str, models: dict[str, torch.nn.Module], repo_id: str | None, device) -> torch.nn.Module:
    if metric in models:
        return models[metric]
    name = NETWORK_METRICS[metric]
    if name in models:
        return models[name]
    if name == "dists":
        return pretrained_dists(repo_id, str(device))
    return pretrained_lpips(name.removeprefix("lpips_"), repo_id, str(device))


@torch.no_grad()
def compute_metrics(
    reference: torch.Tensor,
    distorted: torch.Tensor,
    metrics: Iterable[str] = ("psnr", "ms_ssim", "ssimulacra2", "lpips", "dists"),
    *,
    models: dict[str, LPIPS | DISTS] | None = None,
    repo_id: str | None = None,
) -> dict[str, list[float]]:
    """Compute several per-image metrics between two batches.

    Args:
        reference (`torch.Tensor` of shape `(N, 3, H, W)`): original images in [0, 1].
        distorted (`torch.Tensor` of shape `(N, 3, H, W)`): decoded images in [0, 1].
        metrics (iterable of `str`): any of :data:`AVAILABLE_METRICS`. ``"lpips"`` is LPIPS-Alex. Every metric
            sees the images quantised to 8 bits, as files store them.
        models (`dict`, *optional*): ready networks by metric name (``"lpips"``, ``"lpips_vgg"``, ``"dists"``),
            e.g. built from explicit weights; others load the pretrained weights (cached).
        repo_id (`str`, *optional*): a Hub repo of your own holding the converted network weights.

    Returns:
        `dict[str, list[float]]`: one value per image for each metric computed, in the order asked. Left out: a
        metric undefined at this image size (see :func:`computable`), silently; a tool or network that is not
        available here, with a ``UserWarning`` saying how to get it.

    Raises:
        ValueError: for an unknown metric name or mismatched images.

    Example:
        >>> x = torch.rand(2, 3, 192, 192)
        >>> compute_metrics(x, x, metrics=("psnr", "ms_ssim", "ssimulacra2"))
        {'psnr': [inf, inf], 'ms_ssim': [1.0, 1.0], 'ssimulacra2': [100.0, 100.0]}
        >>> compute_metrics(x[..., :96, :96], x[..., :96, :96], metrics=("psnr", "ms_ssim"))  # MS-SSIM needs 161
        {'psnr': [inf, inf]}
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = [metric for metric in metrics if metric not in AVAILABLE_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(AVAILABLE_METRICS)}")
    check_image_pair(reference, distorted, channels=3, name="compute_metrics")
    height, width = reference.shape[-2:]
    models = dict(models or {})
    tool_runs: dict = {}  # one run of a tool gives several scores (max and 3-norm; VMAF and VMAF-NEG)
    results: dict[str, list[float]] = {}
    for metric in metrics:
        if not computable(metric, height, width):
            continue
        try:
            if metric in PIXEL_METRICS:
                values = PIXEL_METRICS[metric](reference, distorted)
            elif metric in TOOL_METRICS:
                function, key = TOOL_METRICS[metric]
                if function not in tool_runs:
                    try:
                        tool_runs[function] = function(reference, distorted)
                    except MetricToolUnavailable as error:
                        tool_runs[function] = error
                        raise
                if isinstance(tool_runs[function], Exception):
                    continue  # warned once for the tool
                values = tool_runs[function][key]
            else:
                values = _network(metric, models, repo_id, reference.device)(reference, distorted)
        except (MetricWeightsUnavailable, MetricToolUnavailable) as error:
            warnings.warn(f"skipping {metric}: {error}", UserWarning, stacklevel=2)
            continue
        results[metric] = [float(value) for value in values]
    return results
