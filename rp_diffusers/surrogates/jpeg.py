"""DiffJPEG: a differentiable Pillow/libjpeg-turbo baseline JPEG (4:2:0) whose forward pass is bit-exact.

Two paths run side by side. The exact path is libjpeg-turbo's integer arithmetic (``jpeg_libjpeg.py``):
colour conversion, h2v2 downsampling with its 1,2 biases, edge replication to whole MCUs, ISLOW DCT,
rounding quantisation, ISLOW IDCT, fancy upsampling, colour conversion back. The smooth path is the same
chain in float32 (orthonormal DCT, plain averages). With ``rounding="ste"`` every output takes the exact
path's value and the smooth path's gradient, so the reconstruction equals Pillow's decode pixel for pixel
while gradients reach the image and, through a continuous relaxation of the IJG table scaling, the quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import jpeg_libjpeg as libjpeg
from .base import CodecSurrogate, SurrogateOutput, register_surrogate
from .jpeg_rate import JPEGRateModel, exact_bits
from .jpeg_tables import QUALITY_RANGE, ZIGZAG, qtables

ROUNDING_MODES = ("ste", "soft", "cubic")
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


@dataclass
class JPEGAnalysis:
    """Quantised DCT coefficients of a batch, in zigzag order, luma (N, 2R, 2C, 64) and chroma (N, 2, R, C, 64).

    R, C are the MCU rows and columns (16x16 pixels each). ``*_scaled`` hold the continuous DCT / table values
    before rounding, ``*_exact`` libjpeg's integers (int64), ``luma``/``chroma``
    the rounded values the decoder sees (exact forward values with ``rounding="ste"``).
    """

    luma: torch.Tensor
    chroma: torch.Tensor
    luma_scaled: torch.Tensor
    chroma_scaled: torch.Tensor
    luma_exact: torch.Tensor
    chroma_exact: torch.Tensor
    tables: torch.Tensor  # (N, 2, 64) zigzag, float32, differentiable in quality
    size: tuple[int, int]  # (H, W) of the image


def _pad_edge(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate the last row/column of (..., h, w) up to (..., height, width), as libjpeg's expand_*_edge."""
    rows = torch.arange(height, device=x.device).clamp(max=x.shape[-2] - 1)
    cols = torch.arange(width, device=x.device).clamp(max=x.shape[-1] - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """(..., 8a, 8b) -> (..., a, b, 64) row-major blocks."""
    *lead, h, w = plane.shape
    blocks = plane.reshape(*lead, h // 8, 8, w // 8, 8).transpose(-3, -2)
    return blocks.reshape(*lead, h // 8, w // 8, 64)


def _from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """(..., a, b, 64) -> (..., 8a, 8b)."""
    *lead, a, b, _ = blocks.shape
    return blocks.reshape(*lead, a, b, 8, 8).transpose(-3, -2).reshape(*lead, 8 * a, 8 * b)


def _dct_matrix() -> torch.Tensor:
    """Orthonormal 2D DCT-II as a (64, 64) matrix, rows in zigzag order: coefficients = blocks @ D.T."""
    k, n = torch.arange(8, dtype=torch.float64)[:, None], torch.arange(8, dtype=torch.float64)[None]
    c = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    c[0] /= math.sqrt(2)
    return torch.kron(c, c)[list(ZIGZAG)].float()


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _fancy_upsample(plane: torch.Tensor) -> torch.Tensor:
    """Float twin of ``libjpeg.upsample_h2v2`` (same taps, no rounding biases)."""
    if plane.shape[-1] <= 2:
        return plane.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    up = torch.cat([plane[..., :1, :], plane[..., :-1, :]], dim=-2)
    down = torch.cat([plane[..., 1:, :], plane[..., -1:, :]], dim=-2)
    colsum = torch.stack([3 * plane + up, 3 * plane + down], dim=-2).flatten(-3, -2)
    left = torch.cat([colsum[..., :1], colsum[..., :-1]], dim=-1)
    right = torch.cat([colsum[..., 1:], colsum[..., -1:]], dim=-1)
    return torch.stack([3 * colsum + left, 3 * colsum + right], dim=-1).flatten(-2) / 16


@register_surrogate("jpeg")
class DiffJPEG(CodecSurrogate):
    """Differentiable baseline JPEG matching Pillow ``save(..., "JPEG", quality=q, subsampling=2)`` + decode.

    Args:
        rounding: ``"ste"`` (default: exact forward, identity gradient), ``"soft"`` (soft-round of Agustsson &
            Theis with ``soft_alpha``) or ``"cubic"`` (``round(x) + (x - round(x))**3``); the last two change the
            forward values, so only ``"ste"`` reproduces the real decode.
        rate: how ``bits`` gets its value; the gradient is always the soft rate model's (``JPEGRateModel``).
            ``"proxy"`` (default): libjpeg's exact Huffman bit count times a calibrated per-quality factor
            for byte stuffing and padding, plus headers. ``"exact"``: the exact file size, stuffing counted by
            packing the bitstream (slower, synchronises with the device).
        soft_alpha: sharpness of the soft rounding (larger is closer to hard rounding).
        calibration: path of a rate calibration JSON (default: the packaged ``weights/jpeg_rate.json``).

    Example:
        >>> jpeg = DiffJPEG()
        >>> image = torch.rand(2, 3, 33, 17, requires_grad=True)
        >>> out = jpeg(image, torch.tensor([15.0, 85.0]))
        >>> (out.bits.sum() + out.reconstruction.sum()).backward()
        >>> out.reconstruction.shape, image.grad.abs().sum() > 0
        (torch.Size([2, 3, 33, 17]), tensor(True))
    """

    codec_name = "jpeg"
    quality_range = QUALITY_RANGE

    def __init__(self, rounding: str = "ste", rate: str = "proxy", soft_alpha: float = 5.0, calibration=None):
        super().__init__()
        if rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
        if rate not in ("proxy", "exact"):
            raise ValueError(f"rate must be 'proxy' or 'exact', got {rate!r}")
        self.rounding, self.rate, self.soft_alpha = rounding, rate, float(soft_alpha)
        self.rate_model = JPEGRateModel.from_json(calibration)
        self.register_buffer("dct", _dct_matrix(), persistent=False)
        self.register_buffer("rgb_to_ycc", torch.tensor(_RGB_TO_YCC), persistent=False)
        self.register_buffer("ycc_to_rgb", torch.tensor(_YCC_TO_RGB), persistent=False)

    def _round(self, scaled: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
        if self.rounding == "ste":
            return scaled + (exact.to(scaled.dtype) - scaled).detach()
        hard = _round_half_away(scaled)
        if self.rounding == "cubic":
            return hard + (scaled - hard) ** 3
        low = torch.floor(scaled)
        r = scaled - low - 0.5
        return low + 0.5 + torch.tanh(self.soft_alpha * r) / (2 * math.tanh(self.soft_alpha / 2))

    def analyze(self, image: torch.Tensor, quality: torch.Tensor) -> JPEGAnalysis:
        """Encoder half: image (N, 3, H, W) in [0, 1] and quality (N,) -> quantised coefficients.

        ``quality`` must already be checked (see ``check_inputs``); the forward tables are libjpeg's for
        ``round(quality)``.
        """
        h, w = image.shape[-2:]
        mcu_rows, mcu_cols = math.ceil(h / 16), math.ceil(w / 16)
        pixels = image.float().clamp(0, 1) * 255
        pixels_int = torch.round(pixels.detach())
        pixels = pixels + (pixels_int - pixels).detach()  # the codec sees 8-bit samples
        offset = torch.tensor([0.0, 128.0, 128.0], device=image.device)
        ycc = torch.einsum("ij,njhw->nihw", self.rgb_to_ycc, pixels) + offset[:, None, None]
        luma = _pad_edge(ycc[:, 0], 16 * mcu_rows, 16 * mcu_cols)
        chroma = _pad_edge(ycc[:, 1:], 2 * math.ceil(h / 2), 16 * mcu_cols)
        chroma = torch.nn.functional.avg_pool2d(chroma, 2)
        chroma = _pad_edge(chroma, 8 * mcu_rows, 8 * mcu_cols)
        tables = qtables(quality)[:, :, list(ZIGZAG)]  # (N, 2, 64) zigzag
        luma_scaled = (_to_blocks(luma - 128) @ self.dct.T) / tables[:, None, None, 0]
        chroma_scaled = (_to_blocks(chroma - 128) @ self.dct.T) / tables[:, 1, None, None, None]

        with torch.no_grad():
            ycc_int = libjpeg.rgb_to_ycc(pixels_int.long())
            y_int = _pad_edge(ycc_int[:, 0], 16 * mcu_rows, 16 * mcu_cols)
            c_int = _pad_edge(ycc_int[:, 1:], 2 * math.ceil(h / 2), 16 * mcu_cols)
            c_int = _pad_edge(libjpeg.downsample_h2v2(c_int), 8 * mcu_rows, 8 * mcu_cols)
            t_int = tables.detach().long()
            luma_exact = self._exact_coefficients(y_int, t_int[:, None, None, 0])
            chroma_exact = self._exact_coefficients(c_int, t_int[:, 1, None, None, None])
        return JPEGAnalysis(
            luma=self._round(luma_scaled, luma_exact),
            chroma=self._round(chroma_scaled, chroma_exact),
            luma_scaled=luma_scaled,
            chroma_scaled=chroma_scaled,
            luma_exact=luma_exact,
            chroma_exact=chroma_exact,
            tables=tables,
            size=(h, w),
        )

    @staticmethod
    def _exact_coefficients(plane: torch.Tensor, tables_zz: torch.Tensor) -> torch.Tensor:
        blocks = _to_blocks(plane - 128)
        coefficients = libjpeg.fdct_islow(blocks.unflatten(-1, (8, 8))).flatten(-2)[..., list(ZIGZAG)]
        return libjpeg.quantize(coefficients, tables_zz)

    def synthesize(self, analysis: JPEGAnalysis) -> torch.Tensor:
        """Decoder half: coefficients -> float32 RGB (N, 3, H, W) in [0, 255]."""
        h, w = analysis.size
        t = analysis.tables
        luma = _from_blocks((analysis.luma * t[:, None, None, 0]) @ self.dct) + 128
        chroma = _from_blocks((analysis.chroma * t[:, 1, None, None, None]) @ self.dct) + 128
        chroma = _fancy_upsample(chroma[..., : math.ceil(h / 2), : math.ceil(w / 2)])
        ycc = torch.cat([luma[:, None, :h, :w], chroma[..., :h, :w]], dim=1)
        offset = torch.tensor([0.0, 128.0, 128.0], device=ycc.device)
        rgb = torch.einsum("ij,njhw->nihw", self.ycc_to_rgb, ycc - offset[:, None, None]).clamp(0, 255)
        if self.rounding != "ste":
            return rgb
        with torch.no_grad():
            rgb_exact = self._exact_decode(analysis).to(rgb.dtype)
        return rgb + (rgb_exact - rgb).detach()

    @staticmethod
    def _exact_decode(analysis: JPEGAnalysis) -> torch.Tensor:
        h, w = analysis.size
        inverse = torch.argsort(torch.tensor(ZIGZAG, device=analysis.tables.device))
        t = analysis.tables.detach().long()[..., inverse]
        planes = []
        for coefficients, table in (
            (analysis.luma_exact, t[:, None, None, 0]),
            (analysis.chroma_exact, t[:, 1, None, None, None]),
        ):
            samples = libjpeg.idct_islow(coefficients[..., inverse].unflatten(-1, (8, 8)), table.unflatten(-1, (8, 8)))
            planes.append(_from_blocks(samples.flatten(-2)))
        chroma = libjpeg.upsample_h2v2(planes[1][..., : math.ceil(h / 2), : math.ceil(w / 2)])
        ycc = torch.cat([planes[0][:, None, :h, :w], chroma[..., :h, :w]], dim=1)
        return libjpeg.ycc_to_rgb(ycc)

    def forward(self, image: torch.Tensor, quality: float | torch.Tensor) -> SurrogateOutput:
        """Compress and decompress ``image`` (N, 3, H, W) in [0, 1] at JPEG ``quality`` (scalar or (N,), 1..100).

        The forward pass uses libjpeg's tables for ``round(quality)`` (the real codec takes integers); the
        gradient with respect to ``quality`` comes from the continuous table scaling (``jpeg_tables.qtables``).
        Pixels are clipped to [0, 1] and rounded to 8 bits as the real codec's input (straight-through).

        Returns:
            ``SurrogateOutput`` with ``reconstruction`` (N, 3, H, W) in [0, 1] in the input dtype and ``bits``
            (N,) float32, the estimated size of the real file in bits (headers included).
        """
        q = self.check_inputs(image, quality)
        a = self.analyze(image, q)
        reconstruction = (self.synthesize(a) / 255).to(image.dtype)
        bits = self.rate_model(a.luma_scaled, a.chroma_scaled, a.size, q, a.luma_exact, a.chroma_exact)
        if self.rate == "exact":
            hard = exact_bits(a.luma_exact, a.chroma_exact, a.size).to(bits)
            bits = bits + (hard - bits).detach()
        return SurrogateOutput(reconstruction=reconstruction, bits=bits)

    @torch.no_grad()
    def exact_bits(self, image: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
        """Exact size in bits of the file Pillow writes (Huffman count, byte stuffing, headers), not differentiable.

        Returns:
            float64 tensor (N,).
        """
        q = self.check_inputs(image, quality)
        analysis = self.analyze(image, q)
        return exact_bits(analysis.luma_exact, analysis.chroma_exact, analysis.size)
