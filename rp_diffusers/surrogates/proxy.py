"""Learned differentiable proxies of codecs with no closed form (HEIC/HEVC, VVC, WebP, AVIF): loading and calling.

Each proxy is a small quality-conditioned network (``proxy_model.CodecProxyNet``) fitted by
``training/train_surrogate.py`` to the real codec's decoded image and file size. Shipped weights live in
``surrogates/weights/proxy_{codec}.safetensors`` with ``proxy_{codec}.json`` beside them: the architecture, the
codec settings it imitates, the exact training command and its measured fidelity to the real codec.

The size calibration lives in ``proxy_rate`` and the checks against the real codec in ``proxy_fidelity``; their
public names are re-exported here.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..utils.assets import SURROGATE_WEIGHTS_DIR
from .base import CodecSurrogate, SurrogateOutput, register_surrogate
from .proxy_fidelity import measure_fidelity, proxy_qualities, training_quality_range
from .proxy_model import CodecProxyNet
from .proxy_rate import BASE_TERMS, RATE_TERMS, fit_rate_calibration, noise_level, rate_correction

PROXY_CODECS = ("heic", "hevc", "vvc", "webp", "avif")
WEIGHTS_DIR = SURROGATE_WEIGHTS_DIR


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

    def bits(self, image: torch.Tensor, quality=None) -> torch.Tensor:
        """Only the predicted size, (N,) float32 bits, without the decode's U-Net (the same value as ``forward``)."""
        quality = self.check_inputs(image, self.default_quality if quality is None else quality)
        param = next(self.net.parameters())
        lo, hi = self.quality_range
        q_norm = ((quality - lo) / (hi - lo)).to(param.dtype)
        pixels = image.shape[-2] * image.shape[-1]
        bits = self.net.bits(image.to(param.dtype), q_norm).float()
        return bits * rate_correction(self.rate_calibration, pixels, q_norm, image)

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
        net = CodecProxyNet(
            channels=tuple(architecture["channels"]),
            matrix=architecture["matrix"],
            rate_hidden=architecture.get("rate_hidden", 64),
            rate_features=architecture.get("rate_features", "stats"),
        )
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
            architecture={
                "class": "CodecProxyNet",
                "channels": list(self.net.channels),
                "matrix": self.net.matrix,
                "rate_hidden": self.net.rate_hidden,
                "rate_features": self.net.rate_features,
            },
            parameters=sum(v.numel() for v in state.values()),
        )
        if training is not None:
            metadata["training"] = training
        if fidelity is not None:
            metadata.setdefault("fidelity", {}).update(fidelity)
        (directory / f"proxy_{self.codec_name}.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        return path


def load_proxy(codec: str, weights_dir: str | Path | None = None) -> CodecProxySurrogate:
    """The fitted proxy of ``codec`` (one of ``PROXY_CODECS``), in eval mode with frozen weights, float32 on CPU."""
    return CodecProxySurrogate.from_pretrained(codec, weights_dir)


for _name in PROXY_CODECS:
    register_surrogate(_name)(partial(load_proxy, _name))

__all__ = [
    "BASE_TERMS",
    "PROXY_CODECS",
    "RATE_TERMS",
    "WEIGHTS_DIR",
    "CodecProxySurrogate",
    "fit_rate_calibration",
    "load_proxy",
    "measure_fidelity",
    "noise_level",
    "proxy_qualities",
    "rate_correction",
    "training_quality_range",
]
