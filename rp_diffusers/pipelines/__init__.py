"""Pipelines: rate-perception pre-processing (seed 000) and perceptual decoding (seed 002), with output dataclasses."""

from .perceptual_decode import PerceptualDecodePipeline, PerceptualDecodePipelineOutput
from .rp_preprocess import RPPreprocessPipeline, RPPreprocessPipelineOutput

__all__ = [
    "PerceptualDecodePipeline",
    "PerceptualDecodePipelineOutput",
    "RPPreprocessPipeline",
    "RPPreprocessPipelineOutput",
]
