"""Differentiable codec surrogates: ``get_surrogate("jpeg")`` (DiffJPEG) and learned proxies registered by name."""

import importlib
import importlib.util

from .base import CodecSurrogate, SurrogateOutput, available_surrogates, get_surrogate, register_surrogate
from .in_the_loop import CodecInTheLoop
from .jpeg import DiffJPEG, JPEGAnalysis
from .jpeg_rate import JPEGRateModel, exact_bits

# Learned proxies (rp_diffusers/surrogates/proxy.py) register themselves with @register_surrogate on import.
if importlib.util.find_spec(f"{__name__}.proxy") is not None:
    importlib.import_module(f"{__name__}.proxy")

__all__ = [
    "CodecInTheLoop",
    "CodecSurrogate",
    "DiffJPEG",
    "JPEGAnalysis",
    "JPEGRateModel",
    "SurrogateOutput",
    "available_surrogates",
    "exact_bits",
    "get_surrogate",
    "register_surrogate",
]
