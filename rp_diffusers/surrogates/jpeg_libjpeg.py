"""libjpeg-turbo's integer arithmetic, bit for bit, on int64 tensors: the exact forward values of DiffJPEG.

Every function mirrors one routine of libjpeg-turbo (jccolor.c, jcsample.c, jfdctint.c, jcdctmgr.c,
jidctint.c, jdsample.c, jdcolor.c) for 8-bit samples, the defaults Pillow uses (ISLOW DCT both ways, fancy
upsampling). Nothing here is differentiable; ``jpeg.py`` pairs these values with a smooth float path.
"""

from __future__ import annotations

import torch

CONST_BITS, PASS1_BITS, SCALEBITS = 13, 2, 16
ONE_HALF, CBCR_OFFSET = 1 << (SCALEBITS - 1), 128 << SCALEBITS


def _descale(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x + (1 << (n - 1))) >> n


def rgb_to_ycc(rgb: torch.Tensor) -> torch.Tensor:
    """jccolor.c ``rgb_ycc_convert``: int (N, 3, H, W) RGB 0..255 -> int YCbCr 0..255 (JFIF, 16-bit fixed point)."""
    r, g, b = rgb.unbind(1)
    y = (19595 * r + 38470 * g + 7471 * b + ONE_HALF) >> SCALEBITS
    cb = (-11059 * r - 21709 * g + 32768 * b + CBCR_OFFSET + ONE_HALF - 1) >> SCALEBITS
    cr = (32768 * r - 27439 * g - 5329 * b + CBCR_OFFSET + ONE_HALF - 1) >> SCALEBITS
    return torch.stack([y, cb, cr], dim=1)


def downsample_h2v2(plane: torch.Tensor) -> torch.Tensor:
    """jcsample.c ``h2v2_downsample``: int (..., 2h, 2w) -> (..., h, w), 2x2 sums with biases 1, 2, 1, 2, ..."""
    s = plane[..., 0::2, 0::2] + plane[..., 0::2, 1::2] + plane[..., 1::2, 0::2] + plane[..., 1::2, 1::2]
    bias = 1 + (torch.arange(s.shape[-1], device=s.device) & 1)
    return (s + bias) >> 2


def _fdct_1d(d: torch.Tensor, final: bool) -> torch.Tensor:
    """One LL&M pass of ``jpeg_fdct_islow`` along the last dimension (8)."""
    d0, d1, d2, d3, d4, d5, d6, d7 = d.unbind(-1)
    tmp0, tmp7, tmp1, tmp6 = d0 + d7, d0 - d7, d1 + d6, d1 - d6
    tmp2, tmp5, tmp3, tmp4 = d2 + d5, d2 - d5, d3 + d4, d3 - d4
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    shift = CONST_BITS + PASS1_BITS if final else CONST_BITS - PASS1_BITS
    if final:
        out0, out4 = _descale(tmp10 + tmp11, PASS1_BITS), _descale(tmp10 - tmp11, PASS1_BITS)
    else:
        out0, out4 = (tmp10 + tmp11) << PASS1_BITS, (tmp10 - tmp11) << PASS1_BITS
    z1 = (tmp12 + tmp13) * 4433
    out2 = _descale(z1 + tmp13 * 6270, shift)
    out6 = _descale(z1 - tmp12 * 15137, shift)
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * 9633
    tmp4, tmp5, tmp6, tmp7 = tmp4 * 2446, tmp5 * 16819, tmp6 * 25172, tmp7 * 12299
    z1, z2, z3, z4 = z1 * -7373, z2 * -20995, z3 * -16069 + z5, z4 * -3196 + z5
    out7 = _descale(tmp4 + z1 + z3, shift)
    out5 = _descale(tmp5 + z2 + z4, shift)
    out3 = _descale(tmp6 + z2 + z3, shift)
    out1 = _descale(tmp7 + z1 + z4, shift)
    return torch.stack([out0, out1, out2, out3, out4, out5, out6, out7], dim=-1)


def fdct_islow(blocks: torch.Tensor) -> torch.Tensor:
    """jfdctint.c ``jpeg_fdct_islow`` on level-shifted int blocks (..., 8, 8) -> DCT scaled by 8 (..., 8, 8)."""
    rows = _fdct_1d(blocks, final=False)
    return _fdct_1d(rows.transpose(-1, -2), final=True).transpose(-1, -2)


def quantize(coefficients: torch.Tensor, divisors: torch.Tensor) -> torch.Tensor:
    """jcdctmgr.c ``quantize``: round half away from zero of ``coefficients / (8 * table)``.

    libjpeg-turbo multiplies by a corrected reciprocal; for 16-bit DCT values and 8-bit tables that equals
    this division exactly (checked for every table value and every input).
    """
    divisor = divisors << 3
    magnitude = torch.div(coefficients.abs() + (divisor >> 1), divisor, rounding_mode="floor")
    return torch.where(coefficients < 0, -magnitude, magnitude)


def _idct_1d(z: torch.Tensor, shift: int) -> torch.Tensor:
    """One LL&M pass of ``jpeg_idct_islow`` along the last dimension (8)."""
    i0, i1, i2, i3, i4, i5, i6, i7 = z.unbind(-1)
    z1 = (i2 + i6) * 4433
    tmp2, tmp3 = z1 - i6 * 15137, z1 + i2 * 6270
    tmp0, tmp1 = (i0 + i4) << CONST_BITS, (i0 - i4) << CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    z1, z2, z3, z4 = i7 + i1, i5 + i3, i7 + i3, i5 + i1
    z5 = (z3 + z4) * 9633
    tmp0, tmp1, tmp2, tmp3 = i7 * 2446, i5 * 16819, i3 * 25172, i1 * 12299
    z1, z2, z3, z4 = z1 * -7373, z2 * -20995, z3 * -16069 + z5, z4 * -3196 + z5
    tmp0, tmp1, tmp2, tmp3 = tmp0 + z1 + z3, tmp1 + z2 + z4, tmp2 + z2 + z3, tmp3 + z1 + z4
    outs = (
        tmp10 + tmp3, tmp11 + tmp2, tmp12 + tmp1, tmp13 + tmp0,
        tmp13 - tmp0, tmp12 - tmp1, tmp11 - tmp2, tmp10 - tmp3,
    )  # fmt: skip
    return torch.stack([_descale(o, shift) for o in outs], dim=-1)


def _idct_range_limit(v: torch.Tensor) -> torch.Tensor:
    """``IDCT_range_limit``: the table lookup ``v & 1023`` (clamp to 0..255 after +128, wrapping past +-512)."""
    idx = v & 1023
    out = torch.where(idx < 128, idx + 128, torch.where(idx < 512, 255, 0))
    return torch.where(idx >= 896, idx - 896, out)


def idct_islow(coefficients: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """jidctint.c ``jpeg_idct_islow``: quantised int blocks (..., 8, 8) and tables -> samples 0..255 (..., 8, 8)."""
    z = coefficients * tables
    cols = _idct_1d(z.transpose(-1, -2), CONST_BITS - PASS1_BITS).transpose(-1, -2)
    return _idct_range_limit(_idct_1d(cols, CONST_BITS + PASS1_BITS + 3))


def upsample_h2v2(plane: torch.Tensor) -> torch.Tensor:
    """jdsample.c 2x2 upsampling of int (..., h, w): fancy (triangular 3/4-1/4) when w > 2, else replication.

    Out-of-image neighbours are the edge samples themselves, as libjpeg's context rows and special-cased
    first/last columns make them.
    """
    if plane.shape[-1] <= 2:
        return plane.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    up = torch.cat([plane[..., :1, :], plane[..., :-1, :]], dim=-2)
    down = torch.cat([plane[..., 1:, :], plane[..., -1:, :]], dim=-2)
    colsum = torch.stack([3 * plane + up, 3 * plane + down], dim=-2).flatten(-3, -2)  # (..., 2h, w)
    left = torch.cat([colsum[..., :1], colsum[..., :-1]], dim=-1)
    right = torch.cat([colsum[..., 1:], colsum[..., -1:]], dim=-1)
    even, odd = (3 * colsum + left + 8) >> 4, (3 * colsum + right + 7) >> 4
    return torch.stack([even, odd], dim=-1).flatten(-2)


def ycc_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """jdcolor.c ``ycc_rgb_convert``: int (N, 3, H, W) YCbCr 0..255 -> int RGB 0..255."""
    y, cb, cr = ycc[:, 0], ycc[:, 1] - 128, ycc[:, 2] - 128
    r = y + ((91881 * cr + ONE_HALF) >> SCALEBITS)
    g = y + ((-22554 * cb + ONE_HALF - 46802 * cr) >> SCALEBITS)
    b = y + ((116130 * cb + ONE_HALF) >> SCALEBITS)
    return torch.stack([r, g, b], dim=1).clamp(0, 255)
