"""Pipelines: rate-perception pre-processing and training-free perceptual decoding, with output dataclasses."""

from .perceptual_decode import PerceptualDecodePipeline, PerceptualDecodePipelineOutput
from .rp_preprocess import RPPreprocessPipeline, RPPreprocessPipelineOutput

__all__ = [
    "PerceptualDecodePipeline",
    "PerceptualDecodePipelineOutput",
    "RPPreprocessPipeline",
    "RPPreprocessPipelineOutput",
]
