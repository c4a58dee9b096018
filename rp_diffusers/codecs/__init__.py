"""Real standard codecs behind one interface (``Codec``), and a registry to look them up by name.

Example:
    >>> from rp_diffusers.codecs import get_codec
    >>> from rp_diffusers.evaluation import EXAMPLES_DIR
    >>> result = get_codec("jpeg").run(EXAMPLES_DIR / "chalet.png", quality=50)  # an ordinary .jpg in result.data
    >>> round(result.bpp, 2), result.reconstruction.size
    (1.59, (512, 384))

Quality is an integer in each codec's ``quality_range`` where higher is better for every codec; codecs driven
by a quantisation parameter map it (``hevc``: qp = 51 - quality, ``vvc``: qp = 63 - quality).
"""

from .base import Codec, CodecError, CodecResult, UnknownCodecError
from .ffmpeg_codecs import FFmpegCodec, HEVCCodec, VVCCodec
from .pillow_codecs import AVIFCodec, HEICCodec, JPEGCodec, JXLCodec, PillowCodec, WebPCodec
from .registry import (
    all_codecs,
    available_codecs,
    card_example,
    encoded_bits,
    get_codec,
    register_codec,
    unregister_codec,
)

__all__ = [
    "AVIFCodec",
    "Codec",
    "CodecError",
    "CodecResult",
    "FFmpegCodec",
    "HEICCodec",
    "HEVCCodec",
    "JPEGCodec",
    "JXLCodec",
    "PillowCodec",
    "UnknownCodecError",
    "VVCCodec",
    "WebPCodec",
    "all_codecs",
    "available_codecs",
    "card_example",
    "encoded_bits",
    "get_codec",
    "register_codec",
    "unregister_codec",
]
