"""CorrDiff: a learned image codec whose diffusion decoder is corrected by a privileged end-to-end decoder.

Method: Y. Ma, W. Yang and J. Liu, "Correcting Diffusion-Based Perceptual Image Compression with Privileged
End-to-End Decoder", ICML 2024, arXiv:2404.04916. The encoder sees the original image, so it can choose how to
mix the diffusion decoder's score estimate with the end-to-end decoder's and send that choice as a few side bits.

Example:
    >>> from rp_diffusers import CorrDiffCodec
    >>> codec = CorrDiffCodec.from_pretrained("path/to/corrdiff")     # or get_codec("corrdiff", model=...)  # doctest: +SKIP
    >>> data = codec.compress("photo.png", quality=2)                 # bytes of a .crdf file  # doctest: +SKIP
    >>> image = codec.decompress(data)                                # PIL image of the original size  # doctest: +SKIP
"""

from .bitstream import BitstreamError
from .codec import CorrDiffCodec, CorrDiffEncoding
from .loading import load_model, save_model
from .models import CorrDiffConfig, CorrDiffModel

__all__ = [
    "BitstreamError",
    "CorrDiffCodec",
    "CorrDiffConfig",
    "CorrDiffEncoding",
    "CorrDiffModel",
    "load_model",
    "save_model",
]
