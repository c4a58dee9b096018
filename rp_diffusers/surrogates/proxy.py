"""Learned differentiable proxies of codecs with no closed form (HEIC/HEVC, VVC, WebP, AVIF): loading and calling.

Each proxy is a small quality-conditioned network (``proxy_model.CodecProxyNet``) fitted by
``training/train_surrogate.py`` to the real codec's decoded image and file size. Shipped weights live in
``surrogates/weights/proxy_{codec}.safetensors`` with ``proxy_{codec}.json`` beside them: the architecture, the
codec settings it imitates, the exact training command and its measured fidelity to the real codec.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .base import CodecSurrogate, SurrogateOutput, register_surrogate
from .proxy_model import CodecProxyNet

PROXY_CODECS = ("heic", "hevc", "vvc", "webp", "avif")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class CodecProxySurrogate(CodecSurrogate):
    """Differentiable stand-in for a real codec: ``(image, quality) -> SurrogateOutput(reconstruction, bits)``.

    Args:
        net: the fitted ``CodecProxyNet``.
        codec: the registered codec name it imitates (``rp_diffusers.codecs.get_codec(codec)``).
        quality_range: the codec's inclusive ``(lo, hi)`` quality scale (higher = better).
        default_quality: quality used when ``quality`` is ``None`` (the codec's default).
        metadata: the contents of ``proxy_{codec}.json`` (settings, training command, measured fidelity).

    Any quality in the codec's range is accepted, but the proxy was fitted on ``fitted_quality_range`` (around the
    codec's rate-distortion sweep, see ``training_quality_range``) and extrapolates outside it.

    Example:
        >>> from rp_diffusers.surrogates import get_surrogate
        >>> proxy = get_surrogate("heic")
        >>> out = proxy(torch.rand(1, 3, 64, 96, requires_grad=True), quality=50)
        >>> out.reconstruction.shape, out.bits.shape
        (torch.Size([1, 3, 64, 96]), torch.Size([1]))
    """

    def __init__(
        self,
        net: CodecProxyNet,
        codec: str,
        quality_range: tuple[int, int],
        default_quality: float | None = None,
        metadata: dict | None = None,
    ):
        super().__init__()
        lo, hi = quality_range
        if not hi > lo:
            raise ValueError(f"quality_range must be (lo, hi) with hi > lo, got {quality_range}")
        self.net = net
        self.codec_name = codec
        self.quality_range = (lo, hi)
        self.default_quality = (lo + hi) / 2 if default_quality is None else default_quality
        self.metadata = metadata or {}
        calibration = self.metadata.get("rate_calibration")
        self.rate_calibration = None if calibration is None else dict(calibration)

    @property
    def fitted_quality_range(self) -> tuple[int, int]:
        """The qualities the training pairs were drawn from (the whole codec range when not recorded)."""
        return tuple(self.metadata.get("training", {}).get("quality_range", self.quality_range))

    def forward(self, image: torch.Tensor, quality=None) -> SurrogateOutput:
        """Imitate one encode + decode.

        Args:
            image: (N, 3, H, W) RGB in [0, 1], any H and W, float32 or bfloat16, on any device.
            quality: float or (N,) tensor on the real codec's scale (``quality_range``, higher = better;
                non-integer values interpolate); ``None`` uses the codec's default quality.

        Returns:
            ``SurrogateOutput`` with ``reconstruction`` (N, 3, H, W) in [0, 1] in the input's dtype (clamped with a
            straight-through gradient) and ``bits`` (N,) float32, the predicted size of the whole file in bits.
        """
        quality = self.check_inputs(image, self.default_quality if quality is None else quality)
        param = next(self.net.parameters())
        lo, hi = self.quality_range
        q_norm = ((quality - lo) / (hi - lo)).to(param.dtype)
        recon, bits = self.net(image.to(param.dtype), q_norm)
        recon = recon + (recon.clamp(0, 1) - recon).detach()  # real decodes are clipped; keep the gradient
        pixels = image.shape[-2] * image.shape[-1]
        bits = bits.float() * rate_correction(self.rate_calibration, pixels, q_norm, image)
        return SurrogateOutput(reconstruction=recon.to(image.dtype), bits=bits)

    @classmethod
    def from_pretrained(cls, codec: str, weights_dir: str | Path | None = None) -> CodecProxySurrogate:
        """Load ``proxy_{codec}.safetensors`` + ``proxy_{codec}.json`` from ``weights_dir`` (default: shipped).

        Raises:
            FileNotFoundError: no fitted weights for ``codec`` there (the message says how to train them).
        """
        folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
        weights, config = folder / f"proxy_{codec}.safetensors", folder / f"proxy_{codec}.json"
        if not weights.is_file() or not config.is_file():
            raise FileNotFoundError(
                f"no proxy weights for codec {codec!r} in {folder} (need {weights.name} and {config.name}); "
                f"fit them with `python training/train_surrogate.py --codec {codec} --train_data_dir PHOTOS "
                f"--output_dir DIR` and pass weights_dir=DIR"
            )
        metadata = json.loads(config.read_text())
        architecture = metadata["architecture"]
        net = CodecProxyNet(channels=tuple(architecture["channels"]), matrix=architecture["matrix"])
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        net.load_state_dict(state)
        net.eval().requires_grad_(False)
        return cls(net, codec, tuple(metadata["quality_range"]), metadata.get("default_quality"), metadata)

    def save_pretrained(
        self, directory: str | Path, training: dict | None = None, fidelity: dict | None = None
    ) -> Path:
        """Write ``proxy_{codec}.safetensors`` (float32) and ``proxy_{codec}.json``; return the weights path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.net.state_dict().items()}
        path = directory / f"proxy_{self.codec_name}.safetensors"
        save_file(state, str(path), metadata={"format": "pt", "codec": self.codec_name})
        metadata = dict(self.metadata)
        metadata.update(
            codec=self.codec_name,
            quality_range=list(self.quality_range),
            default_quality=self.default_quality,
            architecture={"class": "CodecProxyNet", "channels": list(self.net.channels), "matrix": self.net.matrix},
            parameters=sum(v.numel() for v in state.values()),
        )
        if training is not None:
            metadata["training"] = training
        if fidelity is not None:
            metadata.setdefault("fidelity", {}).update(fidelity)
        (directory / f"proxy_{self.codec_name}.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        return path


BASE_TERMS = ("1", "log_pixels", "q")
RATE_TERMS = ("1", "log_pixels", "q", "q2", "noise", "noise*q", "noise*q2")


def noise_level(image: torch.Tensor) -> torch.Tensor:
    """``log(sigma + 0.05)`` per image (N,), float32, no gradient: the luma noise level on the 0-255 scale.

    ``sigma`` is Donoho's robust estimate, ``median(|HH|) / 0.6745`` of the finest diagonal Haar coefficients of
    the luma. It is the content feature of the ``noise`` calibration terms: how much of an image's detail sits at
    the level a quantiser can remove. Clean, smooth photographs (low sigma) are cheaper for VVC at mid qualities
    than the proxy, fitted on crops of JPEG-compressed photographs, predicts.
    """
    with torch.no_grad():
        x = image.detach().float() * 255.0
        luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        height, width = luma.shape[-2] // 2 * 2, luma.shape[-1] // 2 * 2
        if height == 0 or width == 0:
            return torch.zeros(image.shape[0], device=image.device)
        luma = luma[:, :height, :width]
        diagonal = (luma[:, 0::2, 0::2] - luma[:, 1::2, 0::2] - luma[:, 0::2, 1::2] + luma[:, 1::2, 1::2]) / 2
        sigma = diagonal.abs().flatten(1).median(dim=1).values / 0.6745
        return torch.log(sigma + 0.05)


def _rate_design(terms, log_size, q_norm, noise):
    """The columns of the calibration's linear model, one per term name in ``terms``."""
    columns = []
    for term in terms:
        factors = term.split("*")
        value = 1.0
        for factor in factors:
            if factor == "1":
                continue
            if factor == "log_pixels":
                value = value * log_size
            elif factor in ("q", "q2"):
                value = value * (q_norm if factor == "q" else q_norm * q_norm)
            elif factor == "noise":
                if noise is None:
                    raise ValueError("this rate calibration has noise terms: pass the image (or its noise level)")
                value = value * noise
            else:
                raise ValueError(f"unknown rate calibration term {term!r}; known: {RATE_TERMS}")
        columns.append(value)
    return columns


def rate_correction(
    calibration: dict | None,
    pixels: int,
    q_norm: torch.Tensor,
    image: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multiplicative size correction ``exp(sum_k coef_k * term_k)``, (N,) float32, no gradient through the image.

    ``calibration["terms"]`` names the terms (default ``1, log_pixels, q``: ``log_pixels`` is ``log(pixels) -
    log_pixels_ref``, ``q`` the normalised quality, ``q2`` its square, ``noise`` :func:`noise_level` of ``image``
    (or ``noise`` given directly), ``a*b`` a product). The proxy's rate head is fitted on crops;
    ``fit_rate_calibration`` measures its bias on whole (resized) and cropped training photographs at several
    qualities. ``None`` means no correction (1).
    """
    q_norm = q_norm.float()
    if calibration is None:
        return torch.ones_like(q_norm)
    terms = calibration.get("terms", BASE_TERMS)
    log_size = math.log(max(pixels, 1)) - calibration["log_pixels_ref"]
    if noise is None and image is not None and any("noise" in term for term in terms):
        noise = noise_level(image)
    if noise is not None:
        noise = torch.as_tensor(noise, dtype=torch.float32, device=q_norm.device)
    columns = _rate_design(terms, log_size, q_norm, noise)
    total = sum(coef * column for coef, column in zip(calibration["coef"], columns))
    return torch.exp(torch.as_tensor(total, dtype=torch.float32, device=q_norm.device).expand_as(q_norm)).clone()


def fit_rate_calibration(records: list[tuple], terms: tuple[str, ...] = BASE_TERMS) -> dict:
    """Least-squares fit of ``log(real / proxy) = sum_k coef_k * term_k`` (see :func:`rate_correction`).

    Args:
        records: ``(pixels, q_norm, proxy_bits, real_bits)`` rows, plus ``noise_level`` as a fifth column when
            ``terms`` use it; proxy bits measured WITHOUT any calibration, from training photographs (never the
            test set) at several sizes and qualities.
        terms: the model's terms (``BASE_TERMS`` or a subset of ``RATE_TERMS``).

    Returns:
        ``{"terms": [...], "coef": [...], "log_pixels_ref": ref, "n": rows, "rms_log_residual": ...,
        "rms_log_before": ...}``.
    """
    terms = tuple(terms)
    if len(records) < len(terms) + 1:
        raise ValueError(
            f"need at least {len(terms) + 1} (pixels, q, proxy, real) records to fit {len(terms)} coefficients, "
            f"got {len(records)}"
        )
    rows = np.asarray(records, dtype=np.float64)
    uses_noise = any("noise" in term for term in terms)
    if uses_noise and rows.shape[1] < 5:
        raise ValueError("noise terms need a fifth column (noise_level) in every record")
    log_pixels, q_norm = np.log(rows[:, 0]), rows[:, 1]
    ref = float(np.mean(log_pixels))
    target = np.log(rows[:, 3] / rows[:, 2])
    columns = _rate_design(terms, log_pixels - ref, q_norm, rows[:, 4] if uses_noise else None)
    design = np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), q_norm.shape) for c in columns], axis=1)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coef
    return {
        "terms": list(terms),
        "coef": [round(float(v), 6) for v in coef],
        "log_pixels_ref": round(ref, 6),
        "n": int(len(rows)),
        "rms_log_residual": round(float(np.sqrt(np.mean(residual**2))), 4),
        "rms_log_before": round(float(np.sqrt(np.mean(target**2))), 4),
    }


def load_proxy(codec: str, weights_dir: str | Path | None = None) -> CodecProxySurrogate:
    """The fitted proxy of ``codec`` (one of ``PROXY_CODECS``), in eval mode with frozen weights, float32 on CPU."""
    return CodecProxySurrogate.from_pretrained(codec, weights_dir)


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
        (real decode vs original: what a proxy returning its input scores), ``bits_median_abs_rel_err``,
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
        "bits_median_abs_rel_err": round(float(np.median(rel)), 4),
        "bits_max_abs_rel_err": round(float(np.max(rel)), 4),
        "bits_median_ratio": round(float(np.median(pred / real)), 4),
        "log_bits_pearson": round(pearson, 4),
    }


for _name in PROXY_CODECS:
    register_surrogate(_name)(partial(load_proxy, _name))
