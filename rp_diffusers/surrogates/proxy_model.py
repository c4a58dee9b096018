"""The learned codec proxy network: a quality-conditioned residual U-Net with an analytic 4:2:0 prior and a rate head.

The network maps ``(image, quality)`` to the real codec's decoded image and its bit count:

- **Prior.** The image in the codec's YCbCr (BT.601 or BT.709) with its chroma averaged over 2x2 blocks and
  bilinearly upsampled (the 4:2:0 round trip every codec here performs), then blended per channel with a Gaussian
  blur of itself by a quality-dependent weight in [0, 1]: an analytic start, so the U-Net only learns the residual.
- **Residual U-Net.** Pixel-unshuffle by 2, three levels (H/2, H/4, H/8), residual blocks with FiLM conditioning
  on a Fourier embedding of the normalised quality, pixel-shuffle back to a YCbCr residual added to the prior.
- **Rate head.** Separate from the U-Net (its own quality embedding): per 8x8 block of the padded image, log
  statistics -> a small FiLM-conditioned MLP -> log bits of that block. Bits of the image = sum over blocks
  (weighted by the fraction of each block inside the unpadded image) + a quality-dependent header size. Two sets of
  statistics (``rate_features``):

  - ``"stats"`` (8): gradient energy and variance of Y, Cb, Cr, Laplacian energy of Y, gradient energy of Y over the
    surrounding 40x40 area;
  - ``"dct"`` (26): those 8, plus what a block-transform codec quantises: the 8x8 DCT-II energy of Y in 8 frequency
    bands, of Cb and Cr (on the 4:2:0 planes, 16x16 pixels) in 3 bands each, the energy left after the better of a
    horizontal or vertical prediction from the neighbouring blocks' edge pixels (intra prediction), the high-band
    energy over the surrounding 40x40 area, and, for global context, the image's mean of the Y band energies over
    the two highest bands (broadcast to every block).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.tiling import crop_to_size, pad_to_multiple

# Luma weights (Kr, Kb) of the YCbCr matrices the codecs signal: BT.601 (JFIF, HEIC/WebP/AVIF here), BT.709 (the
# ffmpeg HEVC/VVC codecs here).
LUMA_WEIGHTS = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
RATE_BLOCK = 8  # side of the blocks the rate head scores, in pixels
RATE_STATISTICS = 8  # log statistics per block, see CodecProxyNet.block_statistics
RATE_FEATURES = {"stats": 8, "dct": 26}  # statistics per block of each rate_features option
# Zigzag-like frequency bands of an 8x8 DCT: by u + v, grouped so that each band holds a similar share of the energy
# of photographs (DC alone; u + v = 1, 2, 3, 4-5, 6-7, 8-10, 11-14).
Y_BANDS = ((0, 0), (1, 1), (2, 2), (3, 3), (4, 5), (6, 7), (8, 10), (11, 14))
C_BANDS = ((0, 0), (1, 3), (4, 14))
PAD_MULTIPLE = 8  # the U-Net's total down-sampling factor


def ycbcr_matrix(matrix: str = "bt601") -> torch.Tensor:
    """(3, 3) full-range RGB -> YCbCr matrix on [0, 1] values (Y in [0, 1], Cb and Cr in [-0.5, 0.5])."""
    if matrix not in LUMA_WEIGHTS:
        raise ValueError(f"matrix must be one of {sorted(LUMA_WEIGHTS)}, got {matrix!r}")
    kr, kb = LUMA_WEIGHTS[matrix]
    y = torch.tensor([kr, 1.0 - kr - kb, kb], dtype=torch.float64)
    cb = (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - y) / (2 * (1 - kb))
    cr = (torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) - y) / (2 * (1 - kr))
    return torch.stack([y, cb, cr]).float()


def _apply_matrix(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(image), image)


def dct_matrix(size: int = RATE_BLOCK) -> torch.Tensor:
    """(size, size) orthonormal DCT-II matrix: row k is the k-th basis vector."""
    n = torch.arange(size, dtype=torch.float64)
    basis = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size)) * math.sqrt(2.0 / size)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


def band_energies(plane: torch.Tensor, bands) -> torch.Tensor:
    """(N, 1, H, W) plane, H and W multiples of 8 -> (N, len(bands), H/8, W/8) mean squared DCT coefficient per band."""
    n, _, height, width = plane.shape
    basis = dct_matrix().to(plane)
    blocks = plane.reshape(n, height // 8, 8, width // 8, 8).permute(0, 1, 3, 2, 4)
    coefficients = basis @ blocks @ basis.T  # (N, H/8, W/8, 8, 8)
    index = torch.arange(8, device=plane.device)
    order = index[:, None] + index[None, :]
    energies = []
    for first, last in bands:
        mask = ((order >= first) & (order <= last)).to(plane)
        energies.append((coefficients.square() * mask).sum((-1, -2)) / mask.sum())
    return torch.stack(energies, dim=1)


def intra_residual(luma: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma -> (N, 1, H/8, W/8): mean squared residual of each 8x8 block after the better of a vertical
    prediction (the row above the block repeated) and a horizontal one (the column to its left repeated); the first
    row and column of blocks predict from their own edge."""
    padded = F.pad(luma, (1, 0, 1, 0), mode="replicate")
    above = padded[..., :-1, 1:][..., 0::8, :]  # the row just above each block row, (N, 1, H/8, W)
    left = padded[..., 1:, :-1][..., :, 0::8]  # the column just left of each block column, (N, 1, H, W/8)
    vertical = luma - above.repeat_interleave(8, dim=-2)
    horizontal = luma - left.repeat_interleave(8, dim=-1)
    return torch.minimum(F.avg_pool2d(vertical.square(), 8), F.avg_pool2d(horizontal.square(), 8))


def _gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap binomial blur (sigma ~ 1 pixel) with reflect padding, per channel."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, taps.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


class QualityEmbedding(nn.Module):
    """Normalised quality in [0, 1], shape (N,) -> (N, dim) embedding (Fourier features + MLP), smooth in q."""

    def __init__(self, dim: int = 64, frequencies: int = 6):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1, dtype=torch.float32), False)
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies + 1, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        angles = q[:, None] * self.freqs.to(q)
        return self.mlp(torch.cat([q[:, None], angles.sin(), angles.cos()], dim=1))


class FiLMBlock(nn.Module):
    """conv3x3 -> FiLM(quality) -> SiLU -> conv3x3, added to the input."""

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(x) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class CodecProxyNet(nn.Module):
    """Quality-conditioned proxy of one codec: ``(image, q_norm) -> (reconstruction, bits)``.

    Args:
        channels: widths of the three U-Net levels (H/2, H/4, H/8).
        matrix: the YCbCr matrix of the codec (``"bt601"`` or ``"bt709"``), where the 4:2:0 prior is applied.
        embed_dim: size of the quality embeddings.
        rate_hidden: width of the rate head's hidden layers.
        rate_features: the rate head's block statistics, ``"stats"`` (8) or ``"dct"`` (26, see the module's
            docstring).

    Example:
        >>> net = CodecProxyNet()
        >>> recon, bits = net(torch.rand(2, 3, 37, 50), torch.tensor([0.2, 0.8]))
        >>> tuple(recon.shape), tuple(bits.shape)
        ((2, 3, 37, 50), (2,))
    """

    def __init__(
        self,
        channels: tuple[int, int, int] = (24, 48, 64),
        matrix: str = "bt601",
        embed_dim: int = 64,
        rate_hidden: int = 64,
        rate_features: str = "stats",
    ):
        super().__init__()
        if rate_features not in RATE_FEATURES:
            raise ValueError(f"rate_features must be one of {sorted(RATE_FEATURES)}, got {rate_features!r}")
        self.channels, self.matrix, self.rate_features = tuple(channels), matrix, rate_features
        self.rate_hidden = rate_hidden
        statistics = RATE_FEATURES[rate_features]
        forward = ycbcr_matrix(matrix)
        self.register_buffer("rgb_to_ycc", forward, persistent=False)
        self.register_buffer("ycc_to_rgb", torch.linalg.inv(forward), persistent=False)
        c0, c1, c2 = channels
        self.embed = QualityEmbedding(embed_dim)
        self.blur_weight = nn.Linear(embed_dim, 3)  # per YCbCr channel, through a sigmoid
        self.head = nn.Conv2d(24, c0, 3, padding=1)  # pixel-unshuffled (x, prior) in YCbCr
        self.enc0 = FiLMBlock(c0, embed_dim)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = FiLMBlock(c1, embed_dim)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([FiLMBlock(c2, embed_dim), FiLMBlock(c2, embed_dim)])
        self.up2 = nn.Conv2d(c2, 4 * c1, 1)
        self.dec1 = FiLMBlock(c1, embed_dim)
        self.up1 = nn.Conv2d(c1, 4 * c0, 1)
        self.dec0 = FiLMBlock(c0, embed_dim)
        self.tail = nn.Conv2d(c0, 12, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        # Rate head on block statistics, normalised with the statistics of the training crops (see
        # fit_rate_normalisation; saved with the weights).
        self.register_buffer("stat_mean", torch.zeros(statistics))
        self.register_buffer("stat_std", torch.ones(statistics))
        self.rate_embed = QualityEmbedding(embed_dim)
        self.rate_in = nn.Conv2d(statistics, rate_hidden, 1)
        self.rate_film = nn.Linear(embed_dim, 2 * rate_hidden)
        self.rate_out = nn.Sequential(
            nn.SiLU(), nn.Conv2d(rate_hidden, rate_hidden, 1), nn.SiLU(), nn.Conv2d(rate_hidden, 1, 1)
        )
        self.header = nn.Linear(embed_dim, 1)  # log header bits
        # Start near real files: ~0.25 bit per pixel (16 bits per 8x8 block) and a ~1000-bit header.
        nn.init.constant_(self.rate_out[-1].bias, math.log(16.0))
        nn.init.constant_(self.header.bias, math.log(1000.0))

    def prior(self, ycc: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The analytic 4:2:0 + quality-dependent blur prior, (N, 3, H, W) YCbCr with even H, W."""
        chroma = F.interpolate(F.avg_pool2d(ycc[:, 1:], 2), scale_factor=2, mode="bilinear", align_corners=False)
        ycc = torch.cat([ycc[:, :1], chroma], dim=1)
        weight = torch.sigmoid(self.blur_weight(emb) - 3.0)[:, :, None, None]
        return ycc + weight * (_gaussian_blur(ycc) - ycc)

    @staticmethod
    def block_statistics(ycc: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) YCbCr, H and W multiples of 8 -> (N, 8, H/8, W/8) log statistics per 8x8 block.

        Channels: mean squared gradient of Y, Cb, Cr; variance of Y, Cb, Cr; mean squared Laplacian of Y; mean
        squared gradient of Y over the 5x5 blocks (40x40 pixels) around the block.
        """
        dx = F.pad(ycc[..., :, 1:] - ycc[..., :, :-1], (0, 1, 0, 0))
        dy = F.pad(ycc[..., 1:, :] - ycc[..., :-1, :], (0, 0, 0, 1))
        grad = F.avg_pool2d(dx.square() + dy.square(), RATE_BLOCK)
        mean = F.avg_pool2d(ycc, RATE_BLOCK)
        var = (F.avg_pool2d(ycc.square(), RATE_BLOCK) - mean.square()).clamp_min(0)
        laplace = torch.tensor(
            [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=ycc.dtype, device=ycc.device
        )
        lap = F.conv2d(F.pad(ycc[:, :1], (1, 1, 1, 1), mode="replicate"), laplace.view(1, 1, 3, 3))
        lap = F.avg_pool2d(lap.square(), RATE_BLOCK)
        context = F.avg_pool2d(grad[:, :1], 5, stride=1, padding=2, count_include_pad=False)
        return torch.log(torch.cat([grad, var, lap, context], dim=1) + 1e-5)

    def rate_statistics(self, ycc: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, 3, H, W) YCbCr, H and W multiples of 8 -> (N, S, H/8, W/8) log statistics of ``rate_features``.

        ``size`` is the unpadded (height, width): the image-wide means of the global-context channels count the
        blocks that overlap it, the partly padded edge blocks included (default: all blocks). The half-size chroma
        planes are padded to whole 8x8 blocks by repeating their last row and column.
        """
        stats = self.block_statistics(ycc)
        if self.rate_features == "stats":
            return stats
        luma = ycc[:, :1]
        y_bands = band_energies(luma, Y_BANDS)
        chroma = F.avg_pool2d(ycc[:, 1:], 2)
        pad_h, pad_w = (-chroma.shape[-2]) % 8, (-chroma.shape[-1]) % 8
        chroma = F.pad(chroma, (0, pad_w, 0, pad_h), mode="replicate")
        c_bands = torch.cat([band_energies(chroma[:, i : i + 1], C_BANDS) for i in range(2)], dim=1)
        c_bands = c_bands.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[
            ..., : stats.shape[-2], : stats.shape[-1]
        ]
        intra = intra_residual(luma)
        high = y_bands[:, -2:].mean(1, keepdim=True)
        context = F.avg_pool2d(high, 5, stride=1, padding=2, count_include_pad=False)
        rows, cols = stats.shape[-2:]
        if size is not None:
            rows, cols = max(1, math.ceil(size[0] / RATE_BLOCK)), max(1, math.ceil(size[1] / RATE_BLOCK))
        global_high = torch.log(y_bands[:, -2:, :rows, :cols] + 1e-5).mean((-1, -2))[:, :, None, None]
        local = torch.log(torch.cat([y_bands, c_bands, intra, context], dim=1) + 1e-5)
        return torch.cat([stats, local, global_high.expand(-1, -1, *stats.shape[-2:])], dim=1)

    @torch.no_grad()
    def fit_rate_normalisation(self, images: list[torch.Tensor]) -> None:
        """Set the rate head's input normalisation from RGB training crops in [0, 1], each (3, h, w) or (N, 3, h, w)."""
        stats = []
        for image in images:
            padded, _ = pad_to_multiple(image.float().reshape(-1, *image.shape[-3:]), PAD_MULTIPLE)
            block = self.rate_statistics(_apply_matrix(self.rgb_to_ycc, padded), tuple(image.shape[-2:]))
            stats.append(block.permute(1, 0, 2, 3).flatten(1))
        stats = torch.cat(stats, dim=1)
        self.stat_mean.copy_(stats.mean(dim=1))
        self.stat_std.copy_(stats.std(dim=1).clamp_min(1e-3))

    def forward(
        self, image: torch.Tensor, q_norm: torch.Tensor, window: tuple[int, int, int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the codec's decode and bit count.

        Args:
            image: (N, 3, H, W) RGB in [0, 1], any H, W >= 1.
            q_norm: (N,) quality mapped linearly to [0, 1] over the codec's quality range.
            window: optional ``(top, left, height, width)``: reconstruct only this window of the image (training
                fits the decode on a window and the rate on the whole image).

        Returns:
            ``(reconstruction, bits)``: (N, 3, H, W) (or the window's size) un-clamped RGB in the input's dtype and
            (N,) float32 predicted bits of the whole file.
        """
        if window is not None:
            top, left, height, width = window
            return self.reconstruct(image[..., top : top + height, left : left + width], q_norm), self.bits(
                image, q_norm
            )
        return self.reconstruct(image, q_norm), self.bits(image, q_norm)

    def reconstruct(self, image: torch.Tensor, q_norm: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, 3, H, W) predicted decode (un-clamped RGB, the input's dtype)."""
        height, width = image.shape[-2:]
        padded, _ = pad_to_multiple(image, PAD_MULTIPLE)
        emb = self.embed(q_norm.to(image.dtype))
        ycc = _apply_matrix(self.rgb_to_ycc, padded)
        prior = self.prior(ycc, emb)
        h0 = self.enc0(self.head(F.pixel_unshuffle(torch.cat([ycc, prior], dim=1), 2)), emb)
        h1 = self.enc1(self.down1(F.silu(h0)), emb)
        h2 = self.down2(F.silu(h1))
        for block in self.mid:
            h2 = block(h2, emb)
        d1 = self.dec1(F.pixel_shuffle(self.up2(F.silu(h2)), 2) + h1, emb)
        d0 = self.dec0(F.pixel_shuffle(self.up1(F.silu(d1)), 2) + h0, emb)
        residual = F.pixel_shuffle(self.tail(F.silu(d0)), 2)
        return crop_to_size(_apply_matrix(self.ycc_to_rgb, prior + residual), (height, width))

    def bits(self, image: torch.Tensor, q_norm: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N,) float32 predicted bits of the file (blocks + header)."""
        padded, _ = pad_to_multiple(image, PAD_MULTIPLE)
        return self.rate(_apply_matrix(self.rgb_to_ycc, padded), q_norm.to(image.dtype), tuple(image.shape[-2:]))

    def rate(self, ycc: torch.Tensor, q_norm: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bits of the file: sum of per-block bits over the unpadded ``size`` plus the header, (N,) float32."""
        emb = self.rate_embed(q_norm)
        stats = self.rate_statistics(ycc.float(), size)
        stats = (stats - self.stat_mean.view(1, -1, 1, 1)) / self.stat_std.view(1, -1, 1, 1)
        # Fraction of each 8x8 block that lies inside the unpadded image (padding carries no bits).
        inside = torch.zeros(1, 1, *ycc.shape[-2:], device=ycc.device)
        inside[..., : size[0], : size[1]] = 1.0
        weight = F.avg_pool2d(inside, RATE_BLOCK)
        stats = stats.to(emb.dtype)
        scale, shift = self.rate_film(emb)[:, :, None, None].chunk(2, dim=1)
        log_bits = self.rate_out(self.rate_in(stats) * (1 + scale) + shift).float().clamp(-10.0, 12.0)
        blocks = (log_bits.exp() * weight).flatten(1).sum(1)
        return blocks + self.header(emb).float().squeeze(1).clamp(-10.0, 20.0).exp()
