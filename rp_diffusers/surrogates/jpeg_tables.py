"""The constants of baseline JPEG as libjpeg writes them: Annex-K tables, IJG quality scaling, Huffman codes."""

from __future__ import annotations

import torch

# Annex K.1 quantisation tables, natural (row-major) order.
STD_LUMA_QTABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
STD_CHROMA_QTABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32  # fmt: skip

# ZIGZAG[k] = natural index of the k-th coefficient in zigzag (coding) order.
ZIGZAG = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
)  # fmt: skip

# Annex K.3 Huffman tables as (BITS: count of codes of length 1..16, HUFFVAL), exactly what libjpeg's
# std_huff_tables() installs and writes into the DHT segments when optimize_coding is off.
DC_LUMA_HUFFMAN = ((0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0), tuple(range(12)))
DC_CHROMA_HUFFMAN = ((0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0), tuple(range(12)))
AC_LUMA_HUFFMAN = (
    (0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D),
    (
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
        0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
        0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
        0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
        0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
        0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
        0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
        0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
        0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
        0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
        0xF9, 0xFA,
    ),
)  # fmt: skip
AC_CHROMA_HUFFMAN = (
    (0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77),
    (
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
        0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
        0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
        0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
        0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
        0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
        0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
        0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
        0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
        0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
        0xF9, 0xFA,
    ),
)  # fmt: skip

# Bytes Pillow writes around the entropy-coded data of a baseline 4:2:0 colour JPEG with no metadata:
# SOI 2 + APP0/JFIF 18 + 2 x DQT 69 + SOF0 19 + DHT (33 + 183 + 33 + 183) + SOS 14 + EOI 2.
HEADER_BYTES = 625

QUALITY_RANGE = (1.0, 100.0)


def quality_scale(quality: int) -> int:
    """IJG ``jpeg_quality_scaling``: quality 1..100 -> percentage applied to the Annex-K tables."""
    quality = min(max(int(quality), 1), 100)
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def scaled_qtable(base: tuple[int, ...], quality: int) -> list[int]:
    """libjpeg's ``jpeg_add_quant_table`` with ``force_baseline=TRUE``: (t * scale + 50) / 100 clamped to 1..255."""
    scale = quality_scale(quality)
    return [min(max((t * scale + 50) // 100, 1), 255) for t in base]


def qtables(quality: torch.Tensor) -> torch.Tensor:
    """Quantisation tables for per-image qualities, with a continuous relaxation in quality.

    The forward value is exactly libjpeg's integer table for ``round(quality)``; the gradient is that of the
    continuous curve ``t * s(q) / 100`` with ``s(q) = 5000 / q`` (q < 50) or ``200 - 2 q`` (q >= 50), clamped
    to [1, 255] (clamped entries get no gradient, as in the real codec).

    Args:
        quality: float tensor (N,) in [1, 100].

    Returns:
        float32 tensor (N, 2, 64): luma and chroma tables in natural order, on ``quality``'s device.
    """
    q = quality.float()
    base = torch.tensor([STD_LUMA_QTABLE, STD_CHROMA_QTABLE], dtype=torch.float32, device=q.device)
    q_int = q.detach().round().clamp(1, 100)
    scale_exact = torch.where(q_int < 50, torch.div(5000, q_int, rounding_mode="floor"), 200 - 2 * q_int)
    exact = torch.div(base * scale_exact[:, None, None] + 50, 100, rounding_mode="floor").clamp(1, 255)
    scale_soft = torch.where(q < 50, 5000 / q.clamp_min(1), 200 - 2 * q)
    soft = (base * scale_soft[:, None, None] / 100 + 0.5).clamp(1, 255)
    return soft + (exact - soft).detach()


def huffman_codes(spec: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[list[int], list[int]]:
    """Canonical Huffman codes (Annex C) of a (BITS, HUFFVAL) spec -> (code, length) lists indexed by symbol."""
    bits, values = spec
    code_of, length_of = [0] * 256, [0] * 256
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            code_of[values[k]], length_of[values[k]] = code, length
            code += 1
            k += 1
        code <<= 1
    return code_of, length_of


def huffman_lookup(device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """int64 tensors (2, 256) of codes and lengths per table class, index 0 luma and 1 chroma."""
    out = {}
    for kind, specs in (("dc", (DC_LUMA_HUFFMAN, DC_CHROMA_HUFFMAN)), ("ac", (AC_LUMA_HUFFMAN, AC_CHROMA_HUFFMAN))):
        codes, lengths = zip(*(huffman_codes(spec) for spec in specs))
        out[f"{kind}_code"] = torch.tensor(codes, dtype=torch.int64, device=device)
        out[f"{kind}_length"] = torch.tensor(lengths, dtype=torch.int64, device=device)
    return out
