"""Image-quality metrics of rp-diffusers: PSNR, (MS-)SSIM, LPIPS, DISTS, FID/KID on patches, and BD-rate.

Every metric takes NCHW float images in [0, 1] and returns one value per image (shape ``(N,)``). The network
metrics are plain-torch re-implementations checked against the reference packages with identical weights
(``tests/test_metrics.py``); their weights load from safetensors files (see :mod:`rp_diffusers.metrics.weights`).
"""

from .bd import bd_quality, bd_rate
from .compute import AVAILABLE_METRICS, compute_metrics
from .dists import DISTS, dists
from .fid import (
    extract_patches,
    fid_from_features,
    inception_features,
    kid_from_features,
    patch_fid,
    patch_kid,
)
from .inception import FIDInceptionV3
from .lpips import LPIPS, lpips
from .psnr import mse, psnr, quantize_8bit
from .ssim import ms_ssim, ssim
from .weights import (
    ENV_DIR,
    ENV_REPO,
    METRICS_REPO_ID,
    WEIGHT_FILES,
    MetricWeightsUnavailable,
    convert_official_weights,
    resolve_weights_file,
)

__all__ = [
    "AVAILABLE_METRICS",
    "DISTS",
    "ENV_DIR",
    "ENV_REPO",
    "FIDInceptionV3",
    "LPIPS",
    "METRICS_REPO_ID",
    "MetricWeightsUnavailable",
    "WEIGHT_FILES",
    "bd_quality",
    "bd_rate",
    "compute_metrics",
    "convert_official_weights",
    "dists",
    "extract_patches",
    "fid_from_features",
    "inception_features",
    "kid_from_features",
    "lpips",
    "ms_ssim",
    "mse",
    "patch_fid",
    "patch_kid",
    "psnr",
    "quantize_8bit",
    "resolve_weights_file",
    "ssim",
]
