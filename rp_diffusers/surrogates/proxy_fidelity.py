"""Checking a learned proxy against its real codec: the qualities it is fitted and validated at, and its fidelity."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .proxy import CodecProxySurrogate


def proxy_qualities(codec) -> dict[str, int]:
    """Low, default and high quality at which a proxy is validated and benchmarked.

    low = the bottom of the codec's rate-distortion sweep (about 0.1 bpp on Kodak), high = halfway again above the
    default (at most 95% of the range; the top of some ranges is near-lossless or fails).
    """
    lo, hi = codec.quality_range
    default = codec.default_quality
    low = min(codec.sweep_qualities) if codec.sweep_qualities else lo + (default - lo) // 2
    high = min(default + (default - low) // 2, lo + int(0.95 * (hi - lo)))
    return {"low": int(low), "default": int(default), "high": int(high)}


def training_quality_range(codec, margin: int = 4) -> tuple[int, int]:
    """The qualities a proxy is fitted on: ``proxy_qualities`` low to high widened by ``margin`` (clipped)."""
    lo, hi = codec.quality_range
    levels = proxy_qualities(codec)
    return max(lo, levels["low"] - margin), min(hi, levels["high"] + margin)


def dithered(image, rng: np.random.Generator):
    """The PIL image plus an independent random -1/0/+1 on every 8-bit value (clipped), about 50 dB PSNR.

    A real encoder's decode of such an image differs from its decode of the image itself by about as much as the
    codec's own error at mid qualities: the encoder's decisions, not the input, set much of it. Averages of such
    decodes are what ``train_surrogate.py --label_dithers`` fits and what ``proxy_decode_structure.py`` measures.
    """
    from PIL import Image

    x = np.asarray(image, dtype=np.int16)
    return Image.fromarray((x + rng.integers(-1, 2, size=x.shape)).clip(0, 255).astype(np.uint8))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def measure_fidelity(
    surrogate: CodecProxySurrogate, codec, images: list, quality: int, cache: dict | None = None
) -> dict:
    """Compare a proxy with the real codec on a list of PIL images at one quality.

    Args:
        surrogate: the proxy to check.
        codec: the real codec (``rp_diffusers.codecs.get_codec(...)``).
        images: RGB PIL images (any sizes).
        quality: integer quality on the codec's scale.
        cache: optional dict reused across calls to avoid re-encoding (keyed by image index and quality).

    Returns:
        dict with ``psnr_min``/``psnr_median`` (dB, proxy decode vs real decode, 8-bit), ``psnr_codec_median``
        (real decode vs original: what a proxy returning its input scores), ``psnr_gain_mean`` (mean over images
        of the proxy's PSNR minus the input's, dB: its gain over the identity), ``bits_median_abs_rel_err``,
        ``bits_max_abs_rel_err``, ``bits_median_ratio`` (proxy / real: the sign of a systematic bias) and
        ``log_bits_pearson`` (nan for fewer than 3 images).
    """
    psnr, psnr_codec, real_bits, proxy_bits = [], [], [], []
    for index, image in enumerate(images):
        key = (index, quality)
        if cache is None or key not in cache:
            result = codec.run(image, quality)
            entry = (np.asarray(result.reconstruction.convert("RGB")), 8 * len(result.data))
            if cache is not None:
                cache[key] = entry
        else:
            entry = cache[key]
        decoded, bits = entry
        original = np.array(image.convert("RGB"))
        x = torch.from_numpy(original).permute(2, 0, 1)[None].float() / 255.0
        out = surrogate(x, float(quality))
        recon = (out.reconstruction[0].float().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round()
        psnr.append(_psnr(recon, decoded))
        psnr_codec.append(_psnr(original, decoded))
        real_bits.append(bits)
        proxy_bits.append(float(out.bits[0]))
    real, pred = np.asarray(real_bits, dtype=np.float64), np.asarray(proxy_bits)
    rel = np.abs(pred - real) / real
    pearson = float(np.corrcoef(np.log(real), np.log(pred))[0, 1]) if len(real) >= 3 else float("nan")
    return {
        "n": len(images),
        "psnr_min": round(float(np.min(psnr)), 3),
        "psnr_median": round(float(np.median(psnr)), 3),
        "psnr_codec_median": round(float(np.median(psnr_codec)), 3),
        "psnr_gain_mean": round(float(np.mean(np.asarray(psnr) - np.asarray(psnr_codec))), 3),
        "bits_median_abs_rel_err": round(float(np.median(rel)), 4),
        "bits_max_abs_rel_err": round(float(np.max(rel)), 4),
        "bits_median_ratio": round(float(np.median(pred / real)), 4),
        "log_bits_pearson": round(pearson, 4),
    }
