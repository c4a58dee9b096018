"""Pipelines: rate-perception pre-processing (seed 000) and perceptual decoding (seed 002), with output dataclasses."""

from .rp_preprocess import RPPreprocessPipeline, RPPreprocessPipelineOutput

__all__ = ["RPPreprocessPipeline", "RPPreprocessPipelineOutput"]

try:  # written separately; tolerated only while the module itself is absent
    from .perceptual_decode import PerceptualDecodePipeline  # noqa: F401

    __all__ += ["PerceptualDecodePipeline"]
except ModuleNotFoundError as _error:  # pragma: no cover - depends on the other module being present
    if _error.name != f"{__name__}.perceptual_decode":
        raise
