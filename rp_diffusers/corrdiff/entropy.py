"""Entropy models with integer tables (factorized prior, Gaussian conditional) and their constriction coding.

Why integer tables: a range coder only decodes what it encoded when both sides use the very same cumulative
frequencies. CompressAI and HiFiC users report decoding failures across machines because their tables, or the
scales that pick them, are computed in floating point at coding time. Here every table the coder sees is an
``int32`` buffer computed once by ``update()`` and stored with the weights:

- ``EntropyBottleneck`` (factorized prior on z): per channel, the frequencies of the integers
  ``offset - half .. offset + half`` (``offset`` = the channel's median, rounded) plus one escape symbol.
- ``GaussianConditional`` (zero-mean Gaussian on y): one frequency row per entry of a fixed table of scales;
  each y element is coded with the row whose index the integer hyper-synthesis (``integer_net.py``) computes.

Frequencies sum to ``2**PRECISION`` exactly and every symbol has at least frequency 1. They reach
``constriction`` as ``freqs / 2**PRECISION`` in float64, which is exact, and constriction's own fixed-point
quantisation of those exact inputs is deterministic. Symbols outside a row (tails) are coded as the escape
symbol followed by the value as 16 raw bits (``constriction.stream.model.Uniform``); values are clamped to
``[-32768, 32767]`` by the encoder before the reconstruction is formed, so both sides agree.
"""

from __future__ import annotations

import math

import constriction
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PRECISION = 20  # bits of the integer frequency tables (constriction's Categorical works at 24)
LIKELIHOOD_BOUND = 1e-9
SYMBOL_LIMIT = 32767  # |symbol| bound; escaped values are sent as 16 raw bits
_RAW = 1 << 16


def quantize_pmf(pmf: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Probabilities of ``L`` symbols (+ the leftover tail mass as an escape symbol) -> integer frequencies.

    Args:
        pmf: float64 array (L,), non-negative, summing to at most 1.
        precision: the frequencies sum to ``2**precision``.

    Returns:
        int64 array (L + 1,), every entry >= 1, summing to ``2**precision``; the last entry is the escape.
    """
    pmf = np.clip(np.asarray(pmf, dtype=np.float64), 0.0, None)
    tail = max(1.0 - float(pmf.sum()), 0.0)
    probs = np.append(pmf, tail)
    total = 1 << precision
    freqs = np.maximum(np.floor(probs / probs.sum() * total).astype(np.int64), 1)
    while freqs.sum() != total:  # fix the rounding on the largest entries, keeping every entry >= 1
        diff = total - int(freqs.sum())
        top = int(np.argmax(freqs))
        step = diff if diff > 0 else max(diff, 1 - int(freqs[top]))
        freqs[top] += step
    return freqs


def _categorical(freqs: np.ndarray) -> constriction.stream.model.Categorical:
    probabilities = np.asarray(freqs, dtype=np.float64) / float(1 << PRECISION)  # exact: a power-of-two divisor
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def encode_with_table(encoder, values: np.ndarray, freqs: np.ndarray, offset: int) -> None:
    """Append ``values`` (int, any shape, flattened in C order) coded with one frequency row.

    Args:
        encoder: a ``constriction.stream.queue.RangeEncoder``.
        values: integers in ``[-SYMBOL_LIMIT, SYMBOL_LIMIT]``.
        freqs: int row (L + 1,) from ``quantize_pmf``; symbol ``k < L`` stands for the value ``offset + k``.
        offset: the value of symbol 0.
    """
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size == 0:
        return
    size = len(freqs) - 1
    symbols = values - offset
    escaped = (symbols < 0) | (symbols >= size)
    symbols = np.where(escaped, size, symbols).astype(np.int32)
    encoder.encode(symbols, _categorical(freqs))
    if escaped.any():
        raw = (values[escaped] + (_RAW // 2)).astype(np.int32)
        encoder.encode(raw, constriction.stream.model.Uniform(_RAW))


def decode_with_table(decoder, count: int, freqs: np.ndarray, offset: int) -> np.ndarray:
    """Inverse of :func:`encode_with_table`: read ``count`` values (int64 array (count,))."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    size = len(freqs) - 1
    symbols = np.asarray(decoder.decode(_categorical(freqs), count), dtype=np.int64)
    values = symbols + offset
    escaped = symbols == size
    if escaped.any():
        raw = np.asarray(decoder.decode(constriction.stream.model.Uniform(_RAW), int(escaped.sum())), dtype=np.int64)
        values[escaped] = raw - (_RAW // 2)
    return values


def _trim(freqs_padded: torch.Tensor, length: int) -> np.ndarray:
    return freqs_padded[:length].cpu().numpy().astype(np.int64)


class EntropyBottleneck(nn.Module):
    """Factorized (non-parametric, per-channel) prior on z, Balle et al. 2018, with integer coding tables.

    Args:
        channels: number of channels of z.
        half_range: each table covers ``median - half_range .. median + half_range`` (+ escape).
        filters: hidden widths of the per-channel cumulative density network.
    """

    def __init__(self, channels: int, half_range: int = 64, filters: tuple[int, ...] = (3, 3, 3)):
        super().__init__()
        self.channels, self.half_range = channels, half_range
        dims = (1, *filters, 1)
        init_scale = 10.0 ** (1 / (len(filters) + 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / init_scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.register_buffer("offsets", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("freqs", torch.zeros(channels, 2 * half_range + 2, dtype=torch.int32))

    def _logits_cumulative(self, inputs: torch.Tensor) -> torch.Tensor:
        """(C, 1, N) values -> (C, 1, N) logits of the cumulative distribution (dtype of ``inputs``)."""
        logits = inputs
        for i, matrix in enumerate(self.matrices):
            logits = torch.matmul(F.softplus(matrix.to(inputs.dtype)), logits) + self.biases[i].to(inputs.dtype)
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i].to(inputs.dtype)) * torch.tanh(logits)
        return logits

    def _pmf(self, values: torch.Tensor) -> torch.Tensor:
        """Probability of the unit bin around each value: (C, 1, N) -> (C, 1, N)."""
        lower = self._logits_cumulative(values - 0.5)
        upper = self._logits_cumulative(values + 0.5)
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood of (noisy or rounded) z of shape (B, C, h, w) under the prior; same shape, in (0, 1]."""
        b, c, h, w = z.shape
        values = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        pmf = self._pmf(values).reshape(c, b, h, w).permute(1, 0, 2, 3)
        return pmf.clamp_min(LIKELIHOOD_BOUND)

    @torch.no_grad()
    def update(self) -> None:
        """Tabulate the prior: integer medians and integer frequency rows, computed once in float64."""
        grid = torch.arange(-4096, 4097, dtype=torch.float64)
        pmf = self._pmf(grid.expand(self.channels, 1, -1).contiguous())[:, 0]
        medians = grid[(pmf.cumsum(-1) >= 0.5).int().argmax(-1)].round().to(torch.int64)
        span = torch.arange(-self.half_range, self.half_range + 1, dtype=torch.float64)
        rows = self._pmf((medians[:, None].double() + span)[:, None])[:, 0].numpy()
        self.offsets.copy_(medians.to(torch.int32))
        self.freqs.copy_(torch.from_numpy(np.stack([quantize_pmf(row) for row in rows])).to(torch.int32))

    def compress(self, encoder, symbols: torch.Tensor) -> None:
        """Code integer z (B=1, C, h, w) channel by channel with the stored rows."""
        values = symbols[0].to(torch.int64).cpu().numpy()
        for c in range(self.channels):
            offset = int(self.offsets[c]) - self.half_range
            encode_with_table(encoder, values[c], self.freqs[c].cpu().numpy().astype(np.int64), offset)

    def decompress(self, decoder, shape: tuple[int, int]) -> torch.Tensor:
        """Read integer z of spatial ``shape`` (h, w) -> float tensor (1, C, h, w) of integers."""
        h, w = shape
        out = np.zeros((self.channels, h * w), dtype=np.int64)
        for c in range(self.channels):
            offset = int(self.offsets[c]) - self.half_range
            out[c] = decode_with_table(decoder, h * w, self.freqs[c].cpu().numpy().astype(np.int64), offset)
        return torch.from_numpy(out.reshape(1, self.channels, h, w)).float()


def scale_table(minimum: float, maximum: float, levels: int) -> torch.Tensor:
    """Log-spaced Gaussian scales (float64, (levels,)), as CompressAI's ``get_scale_table``."""
    return torch.exp(torch.linspace(math.log(minimum), math.log(maximum), levels, dtype=torch.float64))


class GaussianConditional(nn.Module):
    """Zero-mean Gaussian conditional on y whose coding scale is an index into a fixed table of scales.

    Args:
        scales: the table (levels,), ascending; the model codes with the largest table scale <= the prediction.
        tail_sigmas: each row covers ``[-ceil(tail_sigmas * scale), +ceil(...)]`` (+ escape).
        scale_bound: lower bound of the predicted scale in training.
    """

    def __init__(self, scales: torch.Tensor, tail_sigmas: float = 6.0, scale_bound: float = 0.11):
        super().__init__()
        self.scale_bound = scale_bound
        halves = torch.ceil(scales * tail_sigmas).to(torch.int64)
        self.register_buffer("scale_values", scales.double(), persistent=False)
        self.register_buffer("halves", halves.to(torch.int32))
        self.register_buffer("freqs", torch.zeros(len(scales), 2 * int(halves.max()) + 2, dtype=torch.int32))

    @staticmethod
    def _cumulative(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.erfc(-x / math.sqrt(2.0))

    def likelihood(self, y: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Likelihood of (noisy or rounded) y under N(0, scales) integrated over unit bins; same shape as y."""
        scales = scales.clamp_min(self.scale_bound)
        values = torch.abs(y)
        upper = self._cumulative((0.5 - values) / scales)
        lower = self._cumulative((-0.5 - values) / scales)
        return (upper - lower).clamp_min(LIKELIHOOD_BOUND)

    @torch.no_grad()
    def update(self) -> None:
        """Tabulate one integer frequency row per table scale (float64 CDF, quantised once)."""
        self.freqs.zero_()
        for i, (scale, half) in enumerate(zip(self.scale_values.tolist(), self.halves.tolist())):
            span = torch.arange(-half, half + 1, dtype=torch.float64)
            pmf = self._cumulative((span + 0.5) / scale) - self._cumulative((span - 0.5) / scale)
            row = quantize_pmf(pmf.numpy())
            self.freqs[i, : len(row)] = torch.from_numpy(row).to(torch.int32)

    def _row(self, index: int) -> tuple[np.ndarray, int]:
        half = int(self.halves[index])
        return _trim(self.freqs[index], 2 * half + 2), -half

    def compress(self, encoder, symbols: torch.Tensor, indexes: torch.Tensor) -> None:
        """Code integer y (1, M, h, w) grouped by table index (ascending), each group in C order."""
        values = symbols.to(torch.int64).flatten().cpu().numpy()
        flat = indexes.flatten().cpu().numpy()
        for index in np.unique(flat):
            freqs, offset = self._row(int(index))
            encode_with_table(encoder, values[flat == index], freqs, offset)

    def decompress(self, decoder, indexes: torch.Tensor) -> torch.Tensor:
        """Read integer y given its table indexes (1, M, h, w) -> float tensor of the same shape."""
        flat = indexes.flatten().cpu().numpy()
        out = np.zeros(flat.shape, dtype=np.int64)
        for index in np.unique(flat):
            freqs, offset = self._row(int(index))
            mask = flat == index
            out[mask] = decode_with_table(decoder, int(mask.sum()), freqs, offset)
        return torch.from_numpy(out).reshape(indexes.shape).float()


def _freqs_from_counts(counts: np.ndarray) -> np.ndarray:
    """Integer counts (all >= 1) -> frequencies summing to ``2**PRECISION`` with integer arithmetic only."""
    total, scale = int(counts.sum()), 1 << PRECISION
    freqs = np.maximum(counts.astype(np.int64) * scale // total, 1)
    freqs[int(np.argmax(freqs))] += scale - int(freqs.sum())
    return freqs


def encode_choices(encoder, choices: np.ndarray, alphabet: int) -> None:
    """Code correction choices (steps, nbh, nbw) with an adaptive per-step frequency count (starts uniform).

    Args:
        encoder: a ``constriction.stream.queue.RangeEncoder``.
        choices: integer codebook indexes in ``[0, alphabet)``.
        alphabet: codebook size.
    """
    for step in np.asarray(choices, dtype=np.int64):
        counts = np.ones(alphabet, dtype=np.int64)
        for symbol in step.ravel():
            encoder.encode(int(symbol), _categorical(_freqs_from_counts(counts)))
            counts[symbol] += 1


def decode_choices(decoder, shape: tuple[int, int, int], alphabet: int) -> np.ndarray:
    """Inverse of :func:`encode_choices`: int64 array of ``shape`` (steps, nbh, nbw)."""
    out = np.zeros(shape, dtype=np.int64)
    for step in range(shape[0]):
        counts = np.ones(alphabet, dtype=np.int64)
        flat = out[step].reshape(-1)
        for i in range(flat.size):
            symbol = int(decoder.decode(_categorical(_freqs_from_counts(counts))))
            if not 0 <= symbol < alphabet:
                raise ValueError(f"decoded correction choice {symbol} outside the codebook (corrupt stream)")
            flat[i] = symbol
            counts[symbol] += 1
    return out
