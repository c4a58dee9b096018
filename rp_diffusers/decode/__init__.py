"""Training-free perceptual decoding (arXiv:2506.16102): VE-sigma denoisers, reverse solvers, sigma calibration."""

from .calibration import DEFAULT_TABLE_PATH, CalibrationError, SigmaTable, search_sigma
from .denoisers import ConsistencyDenoiser, Denoiser, EDMDenoiser, VPDenoiser, make_denoiser
from .solvers import (
    DPSGuidance,
    karras_sigmas,
    sample_consistency,
    sample_dpmpp_2m,
    sample_euler_maruyama,
)

__all__ = [
    "DEFAULT_TABLE_PATH",
    "CalibrationError",
    "ConsistencyDenoiser",
    "DPSGuidance",
    "Denoiser",
    "EDMDenoiser",
    "SigmaTable",
    "VPDenoiser",
    "karras_sigmas",
    "make_denoiser",
    "sample_consistency",
    "sample_dpmpp_2m",
    "sample_euler_maruyama",
    "search_sigma",
]
