"""rp-diffusers: make standard image codecs look better at the same bitrate with pre-trained diffusion models."""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Codecs that live above rp_diffusers.codecs: registry name -> the module whose import registers it. The registry
# imports the module on the first get_codec(name), so `import rp_diffusers.codecs` loads none of them.
CODEC_PLUGINS = {"corrdiff": "rp_diffusers.corrdiff"}

# Heavy modules (diffusers, transformers) load on first use, so `import rp_diffusers.codecs` stays light.
_LAZY = {
    "RPPreprocessPipeline": "rp_diffusers.pipelines",
    "RPPreprocessPipelineOutput": "rp_diffusers.pipelines",
    "PerceptualDecodePipeline": "rp_diffusers.pipelines",
    "CorrDiffCodec": "rp_diffusers.corrdiff",
    "get_codec": "rp_diffusers.codecs",
    "available_codecs": "rp_diffusers.codecs",
    "get_surrogate": "rp_diffusers.surrogates",
    "bd_rate": "rp_diffusers.metrics",
    "load_image": "rp_diffusers.utils",
}

if TYPE_CHECKING:  # pragma: no cover
    from .codecs import available_codecs, get_codec  # noqa: F401
    from .corrdiff import CorrDiffCodec  # noqa: F401
    from .metrics import bd_rate  # noqa: F401
    from .pipelines import PerceptualDecodePipeline, RPPreprocessPipeline, RPPreprocessPipelineOutput  # noqa: F401
    from .surrogates import get_surrogate  # noqa: F401
    from .utils import load_image  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rp_diffusers' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
