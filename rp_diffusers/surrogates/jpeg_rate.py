"""JPEG file size: libjpeg's exact Huffman bit count and its differentiable twin (exact value, soft gradient).

Both read quantised coefficients in zigzag order, luma (N, 2R, 2C, 64) and chroma (N, 2, R, C, 64) on the
MCU grid (R x C MCUs of 16x16 pixels), and code them as jchuff.c does for 4:2:0: per MCU four luma blocks
(top-left, top-right, bottom-left, bottom-right) then Cb then Cr; DC predicted from the previous block of the
same component; luma blocks outside the image are libjpeg's dummy blocks (DC of the previous block, no AC).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.assets import SURROGATE_WEIGHTS_DIR
from .jpeg_tables import HEADER_BYTES, huffman_lookup

DEFAULT_CALIBRATION = SURROGATE_WEIGHTS_DIR / "jpeg_rate.json"
_POWERS = [1 << k for k in range(16)]


def coding_order(luma: torch.Tensor, chroma: torch.Tensor, size: tuple[int, int]):
    """Put coefficients in the order jchuff.c codes them and replace dummy luma blocks as jccoefct.c does.

    Returns:
        luma (N, 4RC, 64) and chroma (N, 2, RC, 64), block sequences in coding order per component.
    """
    n, rows2, cols2, _ = luma.shape
    r, c = rows2 // 2, cols2 // 2
    luma_blocks = (math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    seq = luma.reshape(n, r, 2, c, 2, 64).permute(0, 1, 3, 2, 4, 5).reshape(n, 4 * r * c, 64)
    grid_r = torch.arange(rows2, device=luma.device).view(r, 2, 1, 1) < luma_blocks[0]
    grid_c = torch.arange(cols2, device=luma.device).view(1, 1, c, 2) < luma_blocks[1]
    real = (grid_r & grid_c).permute(0, 2, 1, 3).reshape(-1)
    if not bool(real.all()):
        position = torch.arange(real.numel(), device=luma.device)
        source = torch.where(real, position, torch.full_like(position, -1)).cummax(0).values
        seq = torch.cat([seq[:, source, :1], seq[..., 1:] * real[:, None].to(seq.dtype)], dim=-1)
    return seq, chroma.flatten(2, 3)


def _nbits(magnitude: torch.Tensor) -> torch.Tensor:
    """JPEG magnitude category of non-negative ints: 0 for 0, else floor(log2(x)) + 1."""
    return (magnitude[..., None] >= torch.tensor(_POWERS, device=magnitude.device)).sum(-1)


def entropy_units(seq: torch.Tensor, cls: int, lut: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit strings jchuff.c emits per block, int64 (value, length) pairs (..., 65): DC, 63 AC slots, EOB.

    ``seq``: integer coefficients (..., B, 64) in coding order (``coding_order``); ``cls`` 0 luma, 1 chroma tables.
    AC slot k holds the ZRL codes before coefficient k, its code and extra bits (length 0 where it is zero).
    """
    dc = seq[..., 0]
    diff = dc - F.pad(dc, (1, 0))[..., :-1]
    cat = _nbits(diff.abs())
    extra = torch.where(diff < 0, diff - 1, diff) & ((1 << cat) - 1)
    dc_value = (lut["dc_code"][cls][cat] << cat) | extra
    dc_length = lut["dc_length"][cls][cat] + cat

    ac = seq[..., 1:]
    nonzero = ac != 0
    k = torch.arange(1, 64, device=seq.device)
    last = torch.where(nonzero, k, torch.zeros_like(k)).cummax(-1).values
    run = k - F.pad(last, (1, 0))[..., :-1] - 1
    cat = _nbits(ac.abs())
    extra = torch.where(ac < 0, ac - 1, ac) & ((1 << cat) - 1)
    symbol = ((run & 15) << 4) | cat
    code, length = lut["ac_code"][cls][symbol], lut["ac_length"][cls][symbol]
    zrl_code, zrl_length = lut["ac_code"][cls][0xF0], lut["ac_length"][cls][0xF0]
    zrls = run >> 4
    zrl_value = sum(((zrls > i).long() * zrl_code) << (zrl_length * (zrls - 1 - i)).clamp_min(0) for i in range(3))
    ac_value = ((((zrl_value << length) | code) << cat) | extra) * nonzero
    ac_length = (zrls * zrl_length + length + cat) * nonzero

    eob = (ac[..., -1] == 0).long()
    eob_value, eob_length = lut["ac_code"][cls][0] * eob, lut["ac_length"][cls][0] * eob
    values = torch.cat([dc_value[..., None], ac_value, eob_value[..., None]], dim=-1)
    lengths = torch.cat([dc_length[..., None], ac_length, eob_length[..., None]], dim=-1)
    return values, lengths


def _stuffed_bytes(values: torch.Tensor, lengths: torch.Tensor) -> tuple[int, int]:
    """Pack one scan's bit strings (padding with 1s as jchuff.c flushes) -> (bytes, 0xFF bytes needing a 0x00)."""
    keep = lengths > 0
    values, lengths = values[keep], lengths[keep]
    ends = lengths.cumsum(0)
    total = int(ends[-1]) if ends.numel() else 0
    if total == 0:
        return 0, 0
    unit = torch.repeat_interleave(torch.arange(values.numel(), device=values.device), lengths)
    shift = ends[unit] - 1 - torch.arange(total, device=values.device)
    bits = (values[unit] >> shift) & 1
    bits = F.pad(bits, (0, (-total) % 8), value=1).view(-1, 8)
    packed = (bits << torch.arange(7, -1, -1, device=bits.device)).sum(-1)
    return packed.numel(), int((packed == 255).sum())


@torch.no_grad()
def exact_bits(luma: torch.Tensor, chroma: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Exact size in bits of the baseline JPEG file Pillow writes for these integer coefficients.

    Args:
        luma: int64 (N, 2R, 2C, 64), chroma: int64 (N, 2, R, C, 64), zigzag order.
        size: (H, W) of the image (luma blocks past ``ceil(H / 8) x ceil(W / 8)`` are dummy blocks).

    Returns:
        float64 tensor (N,): 8 x (headers + entropy-coded bytes + stuffed zero bytes).
    """
    lut = huffman_lookup(luma.device)
    luma_seq, chroma_seq = coding_order(luma.long(), chroma.long(), size)
    luma_values, luma_lengths = entropy_units(luma_seq, 0, lut)
    chroma_values, chroma_lengths = entropy_units(chroma_seq, 1, lut)
    n, mcus = luma.shape[0], chroma_seq.shape[2]
    values = torch.cat([luma_values.view(n, mcus, 4, 65), chroma_values.transpose(1, 2)], dim=2).view(n, -1)
    lengths = torch.cat([luma_lengths.view(n, mcus, 4, 65), chroma_lengths.transpose(1, 2)], dim=2).view(n, -1)
    sizes = [sum(_stuffed_bytes(value, length)) for value, length in zip(values, lengths)]
    return 8.0 * (HEADER_BYTES + torch.tensor(sizes, dtype=torch.float64, device=luma.device))


def _interp(x: torch.Tensor, knots: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``values`` at ``knots`` (sorted), constant outside; differentiable in x."""
    idx = torch.searchsorted(knots, x.detach().contiguous()).clamp(1, knots.numel() - 1)
    k0, k1 = knots[idx - 1], knots[idx]
    weight = ((x - k0) / (k1 - k0)).clamp(0, 1)
    return values[idx - 1] + weight * (values[idx] - values[idx - 1])


def _straight_through(soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """The value of ``hard`` with the gradient of ``soft``."""
    return soft + (hard - soft).detach()


class JPEGRateModel(nn.Module):
    """Differentiable JPEG file size whose value is libjpeg's Huffman count and whose gradient is a soft model.

    Every quantity jchuff.c uses has a hard value, read from the integer coefficients, and a soft twin, a
    smooth function of the continuous scaled coefficients u (DCT / table, before rounding) that supplies the
    gradient (straight-through): a coefficient is non-zero (hard: c != 0; soft:
    ``sigmoid(sharpness * (|u| - 0.5))``), its magnitude category (hard: bit length of |c|; soft:
    ``log2(|u| + 0.5) + category_offset``), the zero run before each AC position (the recurrence
    ``r[k+1] = (1 - p[k]) * (r[k] + 1)`` on either), ZRL codes for runs past 15, EOB when the last coefficient
    is zero; DC differences likewise. Code lengths are the standard tables, interpolated (bi)linearly in run
    and category, so the forward value E is the exact entropy-coded bit count while a coefficient that could
    become non-zero or change category already gets a gradient. A per-quality scale fitted on real encodes
    (``training/calibrate_jpeg_rate.py``) accounts for byte stuffing and padding:
    ``bits = 8 * header_bytes + exp(a(q)) * E``, a piecewise linear in q.

    Args:
        knots: qualities (ascending) where ``log_scale`` (a) is given.
        log_scale: a at each knot.
        sharpness: slope of the soft non-zero test. A step along -gradient(bits) lowered the real size most
            with 8 and 12 among 2, 4, 8, 12, 20 (val-set14 crops; ``benchmarks/surrogates.py`` reports this
            "rate descent" on Kodak).
        category_offset: added to ``log2(|u| + 0.5)`` (0.42 puts categories 1, 2, 3, 4 at |u| 1, 2.5, 5.5, 11.5).
    """

    def __init__(
        self,
        knots: tuple[float, ...] = (1.0, 100.0),
        log_scale: tuple[float, ...] = (0.0, 0.0),
        sharpness: float = 8.0,
        category_offset: float = 0.42,
    ):
        super().__init__()
        if not (len(knots) == len(log_scale) >= 2):
            raise ValueError("knots and log_scale need the same length (at least 2)")
        self.sharpness, self.category_offset = float(sharpness), float(category_offset)
        lut = huffman_lookup()
        self.register_buffer("dc_length", lut["dc_length"][:, :12].float(), persistent=False)
        self.register_buffer("ac_length", lut["ac_length"].float().view(2, 16, 16)[:, :, :11], persistent=False)
        self.register_buffer("eob_length", lut["ac_length"][:, 0x00].float(), persistent=False)
        self.register_buffer("zrl_length", lut["ac_length"][:, 0xF0].float(), persistent=False)
        self.register_buffer("knots", torch.tensor(knots, dtype=torch.float32), persistent=False)
        self.register_buffer("log_scale", torch.tensor(log_scale, dtype=torch.float32), persistent=False)

    @classmethod
    def from_json(cls, calibration: str | Path | dict | None = None) -> JPEGRateModel:
        """Load a calibration (a path, a dict of constructor arguments, or ``None`` for the packaged file)."""
        if isinstance(calibration, dict):
            return cls(**calibration)
        path = Path(calibration) if calibration is not None else DEFAULT_CALIBRATION
        if not path.is_file():
            raise FileNotFoundError(
                f"JPEG rate calibration not found at {path}; run `python training/calibrate_jpeg_rate.py "
                f"--output {path}` on a folder of training photographs to create it"
            )
        params = json.loads(path.read_text())
        return cls(**{key: params[key] for key in ("knots", "log_scale", "sharpness", "category_offset")})

    def _soft(self, magnitude: torch.Tensor, hard: torch.Tensor, max_category: int):
        """(p non-zero, category) with hard values from integer magnitudes and soft gradients."""
        p = _straight_through(torch.sigmoid(self.sharpness * (magnitude - 0.5)), (hard > 0).float())
        soft_category = (torch.log2(magnitude + 0.5) + self.category_offset).clamp(1, max_category)
        return p, _straight_through(soft_category, _nbits(hard.long()).clamp(min=1).float())

    def _component(self, seq: torch.Tensor, hard: torch.Tensor, cls: int) -> torch.Tensor:
        """Bits of block sequences (N, ..., B, 64) of one table class (scaled and integer-valued) -> (N,)."""
        dc, dc_hard = seq[..., 0], hard[..., 0]
        diff, diff_hard = dc - F.pad(dc, (1, 0))[..., :-1], dc_hard - F.pad(dc_hard, (1, 0))[..., :-1]
        p, cat = self._soft(diff.abs(), diff_hard.abs(), 11)
        low = cat.detach().floor().clamp(max=10).long()
        table = self.dc_length[cls]
        length = table[low] + (cat - low) * (table[low + 1] - table[low])
        bits = ((1 - p) * table[0] + p * (length + cat)).flatten(1).sum(1)

        p, cat = self._soft(seq[..., 1:].abs(), hard[..., 1:].abs(), 10)
        runs, run = [], torch.zeros_like(p[..., 0])
        for k in range(63):
            runs.append(run)
            run = (1 - p[..., k]) * (run + 1)
        run = torch.stack(runs, dim=-1)
        run_hard = run.detach()
        zrls = _straight_through((run - 15).clamp_min(0) / 16, torch.floor(run_hard / 16))
        run = _straight_through(run.clamp(max=15), run_hard - 16 * torch.floor(run_hard / 16))
        r0, c0 = run.detach().floor().clamp(max=14).long(), cat.detach().floor().clamp(max=9).long()
        fr, fc = run - r0, cat - c0
        table = self.ac_length[cls]
        length = (
            (1 - fr) * (1 - fc) * table[r0, c0]
            + (1 - fr) * fc * table[r0, c0 + 1]
            + fr * (1 - fc) * table[r0 + 1, c0]
            + fr * fc * table[r0 + 1, c0 + 1]
        )
        bits = bits + (p * (length + cat + zrls * self.zrl_length[cls])).flatten(1).sum(1)
        return bits + ((1 - p[..., -1]) * self.eob_length[cls]).flatten(1).sum(1)

    def entropy_bits(
        self,
        luma: torch.Tensor,
        chroma: torch.Tensor,
        size: tuple[int, int],
        luma_hard: torch.Tensor | None = None,
        chroma_hard: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Entropy-coded bits E (N,) float32: exact value, soft gradient (see the class docstring).

        Args:
            luma, chroma: scaled coefficients u in zigzag order, (N, 2R, 2C, 64) and (N, 2, R, C, 64).
            size: (H, W) of the image.
            luma_hard, chroma_hard: the integer coefficients the encoder writes (default: u rounded half away
                from zero, which can differ from libjpeg's integer DCT in rare ties).
        """
        luma, chroma = luma.float(), chroma.float()
        if luma_hard is None or chroma_hard is None:
            luma_hard, chroma_hard = (torch.sign(x) * torch.floor(x.abs() + 0.5) for x in (luma, chroma))
        luma_seq, chroma_seq = coding_order(luma, chroma, size)
        luma_hard_seq, chroma_hard_seq = coding_order(luma_hard.detach().float(), chroma_hard.detach().float(), size)
        return self._component(luma_seq, luma_hard_seq, 0) + self._component(chroma_seq, chroma_hard_seq, 1)

    def calibrate(self, entropy: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """File size in bits (N,) from entropy-coded bits E (N,) at quality (N,): headers, stuffing, padding."""
        return 8.0 * HEADER_BYTES + torch.exp(_interp(quality.float(), self.knots, self.log_scale)) * entropy

    def forward(
        self,
        luma: torch.Tensor,
        chroma: torch.Tensor,
        size: tuple[int, int],
        quality: torch.Tensor,
        luma_hard: torch.Tensor | None = None,
        chroma_hard: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Estimated file size (N,) in bits; arguments as in ``entropy_bits`` plus quality (N,) in [1, 100]."""
        return self.calibrate(self.entropy_bits(luma, chroma, size, luma_hard, chroma_hard), quality)
