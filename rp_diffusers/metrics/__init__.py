"""Image-quality metrics of rp-diffusers: PSNR, (MS-)SSIM, SSIMULACRA2, Butteraugli, VMAF/VMAF-NEG, LPIPS, DISTS,
FID/KID on patches, and BD-rate.

Every metric takes NCHW float images in [0, 1] and returns one value per image (shape ``(N,)``). SSIMULACRA2 is
our differentiable torch implementation, checked against the independent NumPy port; Butteraugli and VMAF run
their reference programs (libjxl's ``butteraugli_main``, libvmaf in ffmpeg). The network metrics are plain-torch
re-implementations checked against the reference packages with identical weights (``tests/test_metrics.py``);
their weights load from safetensors files (see :mod:`rp_diffusers.metrics.weights`).
"""

from pathlib import Path

from .bd import bd_quality, bd_rate
from .compute import (
    AVAILABLE_METRICS,
    MS_SSIM_MIN_SIDE,
    WEIGHT_FREE_PERCEPTUAL,
    computable,
    compute_metrics,
    default_metrics,
    installed_perceptual_metrics,
)
from .dists import DISTS, dists
from .external import (
    MetricToolError,
    MetricToolUnavailable,
    butteraugli_available,
    butteraugli_max,
    butteraugli_pnorm,
    butteraugli_scores,
    vmaf,
    vmaf_available,
    vmaf_neg,
    vmaf_scores,
)
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
from .ssimulacra2 import ssimulacra2
from .weights import (
    ENV_DIR,
    WEIGHT_FILES,
    MetricWeightsUnavailable,
    convert_official_weights,
    download_official_weights,
    metric_weights_cache_dir,
    resolve_weights_file,
)

EVALUATE_MODULE = Path(__file__).with_name("rp_image_quality.py")  # evaluate.load(str(EVALUATE_MODULE))

__all__ = [
    "EVALUATE_MODULE",
    "AVAILABLE_METRICS",
    "MS_SSIM_MIN_SIDE",
    "MetricToolError",
    "MetricToolUnavailable",
    "WEIGHT_FREE_PERCEPTUAL",
    "butteraugli_available",
    "butteraugli_max",
    "butteraugli_pnorm",
    "butteraugli_scores",
    "computable",
    "default_metrics",
    "installed_perceptual_metrics",
    "ssimulacra2",
    "vmaf",
    "vmaf_available",
    "vmaf_neg",
    "vmaf_scores",
    "DISTS",
    "ENV_DIR",
    "FIDInceptionV3",
    "LPIPS",
    "MetricWeightsUnavailable",
    "WEIGHT_FILES",
    "bd_quality",
    "bd_rate",
    "compute_metrics",
    "convert_official_weights",
    "download_official_weights",
    "dists",
    "extract_patches",
    "fid_from_features",
    "inception_features",
    "kid_from_features",
    "lpips",
    "metric_weights_cache_dir",
    "ms_ssim",
    "mse",
    "patch_fid",
    "patch_kid",
    "psnr",
    "quantize_8bit",
    "resolve_weights_file",
    "ssim",
]
