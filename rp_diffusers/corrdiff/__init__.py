"""CorrDiff (seed 001): a learned image codec whose diffusion decoder is corrected by a privileged e2e decoder.

Example:
    >>> from rp_diffusers import CorrDiffCodec
    >>> codec = CorrDiffCodec.from_pretrained("path/to/corrdiff")     # or get_codec("corrdiff", model=...)
    >>> data = codec.compress("photo.png", quality=2)                 # bytes of a .crdf file
    >>> image = codec.decompress(data)                                # PIL image of the original size
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
