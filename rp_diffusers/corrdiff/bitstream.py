"""The CorrDiff file format: a 53-byte little-endian header, then the z, y and side-information streams.

Layout (``struct`` format ``HEADER_FORMAT``), every field counted in the file's bpp:

====================  =====  ==========================================================================
field                 bytes  meaning
====================  =====  ==========================================================================
magic                 4      ``b"CRDF"``
version               1      ``VERSION`` (this reader also reads version 1; it refuses others)
flags                 1      bit 0: diffusion side information present (else decode with x_e2e alone)
model_hash            8      ``CorrDiffModel.decoder_id(diffusion)``: 4 bytes name the integer tables and the
                             end-to-end decoder, 4 the diffusion decoder (zero without diffusion); version 1
                             held ``CorrDiffModel.table_hash()``, which names the tables only
quality               1      index into the model's gains
height, width         2 + 2  size of the original image in pixels
pad_h, pad_w          1 + 1  reflect padding at the bottom / right (to multiples of 64)
y_h, y_w, z_h, z_w    4 x 2  spatial shapes of the latents
seed                  4      seed of the diffusion noise (CPU ``torch.Generator``)
num_steps             1      DDIM steps of the correction trajectory
block_size            2      side of the correction blocks, pixels
codebook_size         1      number of correction weights (checked against the model)
z_len, y_len, side    3 x 4  byte lengths of the three range-coded streams (32-bit words, little-endian)
crc32                 4      CRC-32 of the header (with this field zeroed) and the payload
====================  =====  ==========================================================================
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import astuple, dataclass, replace

import numpy as np

MAGIC = b"CRDF"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 (rp-diffusers 0.1.0): the same layout, model_hash = table_hash()
HEADER_FORMAT = "<4sBB8sBHHBBHHHHIBHBIIII"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)


MAX_NUM_STEPS = 64  # DDIM steps a file may ask the decoder for (decode time grows with them)
MAX_BLOCK_SIZE = 1024  # side of a correction block in pixels (blocks may exceed a small image)
MAX_PIXELS = 64_000_000  # as rp_diffusers.utils.image's decompression-bomb limit
PAD_MULTIPLE = 64  # images are reflect-padded to multiples of this


class BitstreamError(ValueError):
    """A CorrDiff file is not readable (wrong format, truncated, corrupt or from another model)."""


@dataclass(frozen=True)
class Header:
    """Parsed CorrDiff header (see the module docstring for the fields)."""

    magic: bytes
    version: int
    flags: int
    model_hash: bytes
    quality: int
    height: int
    width: int
    pad_h: int
    pad_w: int
    y_h: int
    y_w: int
    z_h: int
    z_w: int
    seed: int
    num_steps: int
    block_size: int
    codebook_size: int
    z_len: int
    y_len: int
    side_len: int
    crc32: int = 0

    @property
    def has_diffusion(self) -> bool:
        return bool(self.flags & 1)


def words_to_bytes(words: np.ndarray) -> bytes:
    """constriction's uint32 words -> little-endian bytes (the same on every machine)."""
    return np.asarray(words, dtype="<u4").tobytes()


def bytes_to_words(data: bytes) -> np.ndarray:
    """Inverse of :func:`words_to_bytes`; returns native uint32 words for constriction."""
    if len(data) % 4:
        raise BitstreamError(f"a range-coded stream holds whole 32-bit words, got {len(data)} bytes (corrupt file)")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def pack(header: Header, streams: tuple[bytes, bytes, bytes]) -> bytes:
    """Header + the z, y and side streams -> the file's bytes (lengths and CRC filled in here)."""
    z, y, side = streams
    header = replace(header, magic=MAGIC, version=VERSION, z_len=len(z), y_len=len(y), side_len=len(side), crc32=0)
    try:
        raw = struct.pack(HEADER_FORMAT, *astuple(header))
    except struct.error as error:
        raise ValueError(f"a header field is out of range for the CorrDiff format ({error}): {header}") from error
    payload = z + y + side
    crc = zlib.crc32(raw + payload)
    return struct.pack(HEADER_FORMAT, *astuple(replace(header, crc32=crc))) + payload


def unpack(data: bytes) -> tuple[Header, tuple[bytes, bytes, bytes]]:
    """Parse and check a CorrDiff file.

    Returns:
        ``(header, (z_stream, y_stream, side_stream))``.

    Raises:
        BitstreamError: bad magic or version, truncated or oversized file, CRC mismatch, inconsistent shapes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected the bytes of a CorrDiff file, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise BitstreamError(f"truncated CorrDiff file: {len(data)} bytes, the header alone needs {HEADER_SIZE}")
    header = Header(*struct.unpack(HEADER_FORMAT, data[:HEADER_SIZE]))
    if header.magic != MAGIC:
        raise BitstreamError(f"not a CorrDiff file (magic {header.magic!r}, expected {MAGIC!r})")
    if header.version not in READABLE_VERSIONS:
        raise BitstreamError(
            f"CorrDiff format version {header.version} is not supported by this reader (versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); "
            "decode it with the rp-diffusers release that wrote it"
        )
    expected = HEADER_SIZE + header.z_len + header.y_len + header.side_len
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise BitstreamError(f"CorrDiff file {kind}: the header announces {expected} bytes, got {len(data)}")
    zeroed = struct.pack(HEADER_FORMAT, *astuple(replace(header, crc32=0)))
    if zlib.crc32(zeroed + data[HEADER_SIZE:]) != header.crc32:
        raise BitstreamError("corrupt CorrDiff file: CRC-32 mismatch (the bytes were altered after encoding)")
    # limits before any work: a crafted header with a valid CRC must not crash or run for long
    if not (1 <= header.height and 1 <= header.width and header.height * header.width <= MAX_PIXELS):
        raise BitstreamError(
            f"CorrDiff header announces a {header.height}x{header.width} image: sizes must be >= 1 and at most "
            f"{MAX_PIXELS / 1e6:.0f} megapixels"
        )
    if header.pad_h >= PAD_MULTIPLE or header.pad_w >= PAD_MULTIPLE:
        raise BitstreamError(f"inconsistent CorrDiff header: padding {header.pad_h}x{header.pad_w} >= {PAD_MULTIPLE}")
    if header.has_diffusion:
        if not 1 <= header.num_steps <= MAX_NUM_STEPS:
            raise BitstreamError(
                f"CorrDiff header asks for {header.num_steps} diffusion steps; this reader decodes 1 to "
                f"{MAX_NUM_STEPS} (a file asking for more is refused, not run)"
            )
        if not 1 <= header.block_size <= MAX_BLOCK_SIZE:
            raise BitstreamError(f"inconsistent CorrDiff header: correction block size {header.block_size}")
    if header.y_h * 16 != header.height + header.pad_h or header.y_w * 16 != header.width + header.pad_w:
        raise BitstreamError(f"inconsistent CorrDiff header: latent shape does not match the image size ({header})")
    payload = data[HEADER_SIZE:]
    z_end = header.z_len
    y_end = z_end + header.y_len
    return header, (payload[:z_end], payload[z_end:y_end], payload[y_end:])
