"""The codec interface: one small base class, the result dataclass and the codec errors.

Quality convention (every codec): an integer in the codec's inclusive ``quality_range`` where HIGHER means
BETTER (more bits, less distortion). Codecs driven by a quantisation parameter map it (``qp = hi - quality``)
and say so in their docstring.
"""

from __future__ import annotations

import math
import numbers
import operator
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from ..utils.image import load_image


def _check_size(size, codec: str) -> tuple[int, int]:
    """``(width, height)`` of two positive integers, or a ``ValueError`` that says what was wrong."""
    try:
        width, height = (operator.index(value) for value in size)
    except (TypeError, ValueError):
        raise ValueError(f"{codec}: size must be (width, height) as two integers, got {size!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"{codec}: size must be positive (width, height), got {size!r}")
    return width, height


def _as_rgb(image) -> Image.Image:
    """Any input -> 8-bit RGB; in-memory images of any size are accepted, files keep the decompression-bomb limit."""
    in_memory = isinstance(image, Image.Image) or type(image).__module__.split(".")[0] in ("numpy", "torch")
    return load_image(image, max_pixels=None) if in_memory else load_image(image)


class CodecError(RuntimeError):
    """A codec failed to encode or decode (corrupt data, missing tool, timeout); the message says why."""


class UnknownCodecError(KeyError, ValueError):
    """No codec is registered under the requested name; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


@dataclass
class CodecResult:
    """What one encode + decode of an image gives.

    Attributes:
        codec: registered codec name, e.g. ``"jpeg"``.
        quality: the integer quality used (higher = better).
        data: the bitstream, the bytes of a standard file (``extension``) an ordinary decoder reads.
        bpp: bits per pixel of the ORIGINAL (unpadded) image: ``8 * len(data) / (width * height)``.
        reconstruction: decoded RGB PIL image, same size as the input.
        encode_seconds: wall-clock seconds of the encoder call (including colour conversion and padding).
        decode_seconds: wall-clock seconds of the decoder call.
        settings: the exact settings given to the library or tool (JSON-serialisable).
        extension: file extension of ``data``, e.g. ``".jpg"``.
    """

    codec: str
    quality: int
    data: bytes = field(repr=False)
    bpp: float
    reconstruction: Image.Image = field(repr=False)
    encode_seconds: float
    decode_seconds: float
    settings: dict[str, Any]
    extension: str


class Codec:
    """Base class of the real codecs: subclasses set the class attributes and implement ``_encode``/``_decode``.

    Class attributes:
        name: registry name (set by ``register_codec``).
        extension: file extension of the bitstream, e.g. ``".jpg"``.
        quality_range: inclusive ``(lo, hi)`` integer qualities; higher = better.
        default_quality: the library's own default quality (for hevc/vvc: bpgenc's / vvenc's default QP), a
            mid-to-high rate of about 0.5-1.5 bpp on natural photographs.
        sweep_qualities: six ascending qualities for rate-distortion sweeps, chosen on the validation set
            (Set14) to span about 0.1-1.5 bpp; BD-rate sweeps use them unless told otherwise.
        default_settings: every setting a user may override through ``get_codec(name, **settings)``.

    Example:
        >>> import numpy as np
        >>> from rp_diffusers.codecs import get_codec
        >>> result = get_codec("jpeg").run(np.zeros((16, 16, 3), dtype=np.uint8), quality=50)
        >>> result.reconstruction.size, result.bpp == 8 * len(result.data) / 256
        ((16, 16), True)
    """

    name: ClassVar[str] = ""
    extension: ClassVar[str] = ""
    quality_range: ClassVar[tuple[int, int]] = (0, 100)
    default_quality: ClassVar[int] = 50
    sweep_qualities: ClassVar[tuple[int, ...]] = ()
    default_settings: ClassVar[dict[str, Any]] = {}

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(self.default_settings))
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} for codec {self.name!r}; allowed: {sorted(self.default_settings)}"
            )
        self.settings = {**self.default_settings, **settings}
        self._check_settings()

    # --- hooks for subclasses -------------------------------------------------------------------------------

    @classmethod
    def availability_error(cls) -> str | None:
        """``None`` when the library/tool works on this machine, else a message saying what to install."""
        return None

    def _check_settings(self) -> None:
        """Raise ``ValueError`` for invalid values in ``self.settings``."""

    def encoder_settings(self, quality: int) -> dict[str, Any]:
        """The exact settings passed to the library or tool at ``quality`` (recorded in ``CodecResult``)."""
        raise NotImplementedError

    def _encode(self, image: Image.Image, quality: int) -> bytes:
        raise NotImplementedError

    def _decode(self, data: bytes) -> Image.Image:
        raise NotImplementedError

    @property
    def description(self) -> str:
        """Human-readable description: library versions and settings (chroma subsampling, preset, bit depth)."""
        return self.name

    # --- public API ------------------------------------------------------------------------------------------

    def check_quality(self, quality: int | None) -> int:
        """Return ``quality`` (or ``default_quality`` for ``None``) as an int, or raise ``ValueError``."""
        if quality is None:
            return self.default_quality
        lo, hi = self.quality_range
        if (
            isinstance(quality, bool)
            or not isinstance(quality, numbers.Real)
            or not math.isfinite(quality)
            or int(quality) != quality
        ):
            raise ValueError(f"{self.name} quality must be an integer in [{lo}, {hi}], got {quality!r}")
        if not lo <= int(quality) <= hi:
            raise ValueError(f"{self.name} quality must lie in [{lo}, {hi}] (higher = better), got {quality}")
        return int(quality)

    def encode(self, image, quality: int | None = None) -> bytes:
        """Encode an image to the bytes of a standard file.

        Args:
            image: anything ``rp_diffusers.utils.load_image`` reads (PIL, uint8/uint16/float array, tensor in
                [0, 1], path, encoded bytes); converted to 8-bit RGB there (files over 64 megapixels are
                refused as possible decompression bombs: open them yourself and pass the PIL image).
            quality: integer in ``quality_range`` (higher = better); ``None`` uses ``default_quality``.

        Returns:
            ``bytes`` of a ``self.extension`` file.
        """
        quality = self.check_quality(quality)
        return self._encode(_as_rgb(image), quality)

    def decode(self, data: bytes, size: tuple[int, int] | None = None) -> Image.Image:
        """Decode a bitstream produced by ``encode``.

        Args:
            data: bytes of a ``self.extension`` file.
            size: optional ``(width, height)`` to crop the top-left corner to (raw HEVC/VVC streams of odd-sized
                or tiny images hold a padded picture, see ``FFmpegCodec``); ``None`` keeps the decoded size.

        Returns:
            RGB PIL image.

        Raises:
            CodecError: empty, truncated or corrupt data (the decoder's message is included).
            ValueError: ``size`` is not two positive integers.

        Note:
            JPEG, WebP, AVIF, HEIC and raw HEVC/VVC carry no checksum over their coded data: bytes changed inside
            it usually decode to a damaged picture without any error (only broken syntax or a truncation is
            caught). Check a digest of the file where that matters; CorrDiff's own format carries a CRC-32 and
            refuses such files.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise CodecError(f"{self.name}: nothing to decode (got {type(data).__name__} of length 0 or not bytes)")
        if size is not None:
            size = _check_size(size, self.name)
        image = self._decode(bytes(data))
        if size is not None and size != image.size:
            width, height = size
            if width > image.width or height > image.height:
                raise CodecError(f"{self.name}: decoded {image.size} is smaller than the requested size {size}")
            image = image.crop((0, 0, width, height))
        return image

    def run(self, image, quality: int | None = None) -> CodecResult:
        """Encode then decode ``image`` and measure rate and time.

        Args:
            image: any input ``load_image`` reads (converted to 8-bit RGB).
            quality: integer in ``quality_range``, higher = better; ``None`` uses ``default_quality``.

        Returns:
            ``CodecResult`` whose ``bpp`` counts every byte of ``data`` over the original pixels.
        """
        quality = self.check_quality(quality)
        image = _as_rgb(image)
        start = time.perf_counter()
        data = self._encode(image, quality)
        encode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        reconstruction = self.decode(data, size=image.size)
        decode_seconds = time.perf_counter() - start
        return CodecResult(
            codec=self.name,
            quality=quality,
            data=data,
            bpp=8.0 * len(data) / (image.width * image.height),
            reconstruction=reconstruction,
            encode_seconds=encode_seconds,
            decode_seconds=decode_seconds,
            settings=self.encoder_settings(quality),
            extension=self.extension,
        )

    def find_quality(self, image, target_bpp: float) -> CodecResult:
        """Find the highest quality whose rate does not exceed ``target_bpp``, by bisection.

        Assumes the rate grows with quality (true of every codec here up to rare one-step wiggles, where the
        bisection may return a quality one or two steps below the true highest fit). Costs about
        ``log2(hi - lo + 1) + 1`` encodes.

        Args:
            image: any input ``load_image`` reads.
            target_bpp: the rate budget in bits per pixel of the original image (> 0).

        Returns:
            ``CodecResult`` at the highest integer quality with ``bpp <= target_bpp``; when even the lowest
            quality exceeds the budget, the result at the lowest quality (check ``result.bpp``).
        """
        if (
            isinstance(target_bpp, bool)
            or not isinstance(target_bpp, numbers.Real)
            or not math.isfinite(target_bpp)
            or not target_bpp > 0
        ):
            raise ValueError(f"target_bpp must be a positive, finite number of bits per pixel, got {target_bpp!r}")
        image = _as_rgb(image)
        cache: dict[int, CodecResult] = {}

        def at(quality: int) -> CodecResult:
            if quality not in cache:
                cache[quality] = self.run(image, quality)
            return cache[quality]

        lo, hi = self.quality_range
        if at(lo).bpp > target_bpp:
            return at(lo)
        # Invariant: bpp(lo) <= target; the answer lies in [lo, hi].
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if at(mid).bpp <= target_bpp:
                lo = mid
            else:
                hi = mid - 1
        return at(lo)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"
