"""The real codec in the forward pass, a differentiable surrogate's gradient in the backward pass.

A learned proxy (``proxy.CodecProxySurrogate``) returns nearly its input: its decoded image is 1-2 dB closer to the
real decode than the input is at the default quality, and its size 3-12 % off (median on Kodak;
``proxy_{codec}.json``). Trained through it, a pre-processor learns the proxy's blind spots
(``benchmarks/proxy_agreement.py``). :class:`CodecInTheLoop` keeps the proxy for the gradient only:

- **forward**: the image is rounded to 8 bits, encoded by the real encoder and decoded by the real decoder. The
  loss therefore sees the real decoded pixels and the real file size, exactly.
- **backward**: the decoded image's gradient is the surrogate's (a straight-through estimator: ``surrogate + (real -
  surrogate).detach()``). The size's gradient is the surrogate's, scaled by ``real / surrogate`` for each image,
  which is the surrogate's gradient of ``log bits``.

Without a gradient (``torch.no_grad()``, or an input that does not require one), only the real codec runs. Costs:
one real encode and decode per image and call, on the CPU, beside the surrogate's forward and backward
(``benchmarks/proxy_agreement.py`` reports the training time of both).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..utils.image import tensor_to_pil
from .base import CodecSurrogate, SurrogateOutput


class CodecInTheLoop(CodecSurrogate):
    """Real encode + decode forward, ``surrogate``'s gradient backward.

    Args:
        surrogate: a differentiable surrogate of the same codec (``get_surrogate("hevc")``), which supplies the
            gradient.
        codec: the real codec (``rp_diffusers.codecs.get_codec``). Default: the codec the surrogate imitates, with
            the settings it was fitted to (a learned proxy records them in ``metadata["training"]``).
        workers: threads that run the real codec on the images of a batch (default: up to the CPU count).

    Qualities are rounded to the codec's integers (``torch.round``: halves to even), for the real codec and the
    surrogate alike. The surrogate runs only when the image requires a gradient, so a surrogate with trainable
    parameters gets no gradient through the loop. A codec error (an encoder failure or timeout) is raised as it is.

    Example:
        >>> from rp_diffusers.surrogates import get_surrogate
        >>> loop = CodecInTheLoop(get_surrogate("webp"))
        >>> x = torch.rand(1, 3, 32, 48, requires_grad=True)
        >>> out = loop(x, quality=75)
        >>> out.bits.backward(); x.grad.shape
        torch.Size([1, 3, 32, 48])
    """

    def __init__(self, surrogate: CodecSurrogate, codec=None, workers: int | None = None):
        super().__init__()
        if not isinstance(surrogate, CodecSurrogate):
            raise TypeError(f"surrogate must be a CodecSurrogate, got {type(surrogate).__name__}")
        if codec is None:
            from ..codecs import get_codec  # the codecs package imports this one's JPEG tables

            settings = dict(getattr(surrogate, "metadata", {}).get("training", {}).get("codec_settings", {}))
            codec = get_codec(surrogate.codec_name, **settings)
        if codec.name != surrogate.codec_name:
            raise ValueError(
                f"the codec ({codec.name!r}) is not the one the surrogate imitates ({surrogate.codec_name!r})"
            )
        self.surrogate, self.codec = surrogate, codec
        self.codec_name = surrogate.codec_name
        lo, hi = codec.quality_range
        self.quality_range = (max(lo, surrogate.quality_range[0]), min(hi, surrogate.quality_range[1]))
        self.default_quality = codec.default_quality
        self.workers = max(1, workers if workers is not None else min(4, os.cpu_count() or 1))

    @property
    def fitted_quality_range(self) -> tuple[float, float]:
        """The surrogate's fitted range (where its gradient was fitted); absent, as on the surrogate, when it has none,
        so that code choosing qualities treats the loop exactly as the surrogate alone."""
        fitted = getattr(self.surrogate, "fitted_quality_range", None)
        if fitted is None:
            raise AttributeError(f"{type(self.surrogate).__name__} has no fitted_quality_range")
        return tuple(fitted)

    @torch.no_grad()
    def real(self, image: torch.Tensor, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real encode + decode of each image at its integer quality: ((N, 3, H, W) decoded, (N,) bits float32)."""
        arrays = tensor_to_pil(image)  # rounded to 8 bits, as a file holds them
        qualities = [int(q) for q in quality.tolist()]

        def code(i: int):
            result = self.codec.run(arrays[i], qualities[i])
            return np.asarray(result.reconstruction, dtype=np.float32) / 255.0, 8.0 * len(result.data)

        if self.workers > 1 and len(arrays) > 1:
            with ThreadPoolExecutor(min(self.workers, len(arrays))) as pool:
                results = list(pool.map(code, range(len(arrays))))
        else:
            results = [code(i) for i in range(len(arrays))]
        decoded = torch.from_numpy(np.stack([r[0] for r in results])).permute(0, 3, 1, 2)
        bits = torch.tensor([r[1] for r in results], dtype=torch.float32)
        return decoded.to(device=image.device, dtype=image.dtype), bits.to(image.device)

    def forward(self, image: torch.Tensor, quality=None) -> SurrogateOutput:
        """Real decode and real size of ``image`` at ``quality``; gradients from the surrogate.

        Args:
            image: (N, 3, H, W) RGB in [0, 1] (rounded to 8 bits for the real codec), any device.
            quality: float or (N,) tensor on the codec's scale, rounded to integers; ``None``: the codec's default.

        Returns:
            ``SurrogateOutput``: the real decoded image (in the input's dtype) and the real file's bits (float32).
        """
        quality = self.check_inputs(image, self.default_quality if quality is None else quality)
        quality = quality.round()
        decoded, bits = self.real(image, quality)
        if not (torch.is_grad_enabled() and image.requires_grad):
            return SurrogateOutput(reconstruction=decoded, bits=bits)
        approx = self.surrogate(image, quality)
        approx_recon = approx.reconstruction.to(decoded.dtype)
        reconstruction = approx_recon + (decoded - approx_recon).detach()
        approx_bits = approx.bits.float()
        # value: the real size; gradient: the surrogate's d(log bits) times the real size.
        scaled = approx_bits * (bits / approx_bits.detach().clamp_min(1.0))
        return SurrogateOutput(reconstruction=reconstruction.to(image.dtype), bits=bits + (scaled - scaled.detach()))
