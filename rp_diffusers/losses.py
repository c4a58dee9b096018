"""Training losses of rate-perception pre-processing: SiD/CiD distillation (stage 1), rate-perception (stage 2).

The method: Guo et al., "Generative Preprocessing for Image Compression with Pre-trained Diffusion Models",
arXiv:2512.15270 (2025).

Stage 1, all tensors are latents (N, C, h, w):
- :func:`sid_generator_loss` is Score identity Distillation's generator loss (Zhou et al., 2024, eq. 9 with its
  public code): ``(f_real - f_fake) * ((f_real - x_g) - alpha * (f_real - f_fake)) / w`` with the per-sample weight
  ``w = mean|x_g - f_real|`` detached. For ``alpha = 1`` it is ``(f_real - f_fake) * (f_fake - x_g) / w``.
  We average over elements (SiD sums); only the learning rate's scale differs.
- :func:`denoising_loss` is the fake-score network's ordinary denoising loss on the student's outputs, written on
  x0 estimates with the weight that makes it equal to the MSE on the model's own target (epsilon or v).
- :func:`task_loss` is CiD's "consistent" term (our reading): a fidelity loss between G(x) and x.

Stage 2: :class:`RatePerceptionLoss` = lambda_R * bpp + lambda_P * P(x, x_hat) + lambda_D * MSE(x, x_hat), with
``(x_hat, bits) = S(G(x), q)`` from a differentiable codec surrogate.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_RATE_RISE = 0.05  # codec_slope: least relative rise of the size over 2 x slope_delta qualities it trusts
PERCEPTUAL_LOSSES = ("dists", "lpips", "ms_ssim", "ssimulacra2", "vif")  # sums: "ssimulacra2+3*vif"


def sid_generator_loss(
    x_g: torch.Tensor, f_real: torch.Tensor, f_fake: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """SiD generator loss, averaged over batch and elements.

    Args:
        x_g: (N, C, h, w) the student's clean latents (with gradient to the student).
        f_real: (N, C, h, w) the frozen teacher's x0 estimate at the noised ``x_g`` (with guidance, if any).
        f_fake: (N, C, h, w) the fake-score network's x0 estimate at the same noised latents.
        alpha: SiD's alpha (1.0 by default, as SiD-LSG for Stable Diffusion; SiD uses 1.2 for EDM).

    Returns:
        A scalar loss. The weight ``mean|x_g - f_real|`` per sample is detached (clipped at 1e-5), as in SiD.

    Example:
        >>> x_g, f_real, f_fake = torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2), torch.full((1, 1, 1, 2), 0.5)
        >>> float(sid_generator_loss(x_g, f_real, f_fake))  # (1 - .5) * (.5 - 0) / 1
        0.25
    """
    x_g, f_real, f_fake = x_g.float(), f_real.float(), f_fake.float()
    with torch.no_grad():
        weight = (x_g - f_real).abs().mean(dim=tuple(range(1, x_g.ndim)), keepdim=True).clamp(min=1e-5)
    difference = f_real - f_fake
    return (difference * ((f_real - x_g) - alpha * difference) / weight).mean()


def denoising_weight(alpha_bar: torch.Tensor | float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Weight turning an x0-space MSE into the MSE on ``prediction_type``'s target at noise level ``alpha_bar``.

    epsilon: SNR = a / (1 - a); v_prediction: 1 / (1 - a) = SNR + 1; sample: 1.
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float32)
    if prediction_type == "epsilon":
        return alpha_bar / (1.0 - alpha_bar)
    if prediction_type == "v_prediction":
        return 1.0 / (1.0 - alpha_bar)
    if prediction_type == "sample":
        return torch.ones_like(alpha_bar)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")


def denoising_loss(
    x0_pred: torch.Tensor, x0_target: torch.Tensor, alpha_bar: torch.Tensor | float, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The fake-score network's denoising loss: weighted MSE between its x0 estimate and the (detached) target.

    Args:
        x0_pred: (N, C, h, w) the fake-score network's x0 estimate at z_t (with gradient to its parameters).
        x0_target: (N, C, h, w) the student's latents x_g; detached here so no gradient reaches the student.
        alpha_bar: the scheduler's cumulative alpha at the sampled timestep (scalar or broadcastable).
        prediction_type: the network's parameterisation (the scheduler config's value).

    Returns:
        A scalar equal to the usual ``MSE(model_output, target)`` of diffusers' training examples.
    """
    weight = denoising_weight(alpha_bar, prediction_type).to(x0_pred.device)
    return (weight * (x0_pred.float() - x0_target.detach().float()).square()).mean()


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``; applied to x0 estimates (equivalent to epsilon at a fixed z_t)."""
    return uncond + scale * (cond - uncond)


def task_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    lambda_perceptual: float = 0.0,
) -> torch.Tensor:
    """CiD's consistency term: ``MSE(output, target) + lambda_perceptual * mean(perceptual(output, target))``.

    Args:
        output: (N, 3, H, W) the student's image in [0, 1] (not clipped).
        target: (N, 3, H, W) the input image in [0, 1].
        perceptual: a distance ``(reference, distorted) -> (N,)`` on [0, 1] images, e.g. LPIPS; skipped at weight 0.
    """
    loss = F.mse_loss(output.float(), target.float())
    if lambda_perceptual > 0:
        if perceptual is None:
            raise ValueError("lambda_perceptual > 0 needs a perceptual distance (e.g. LPIPS with its weights)")
        loss = loss + lambda_perceptual * perceptual(target.float(), output.float()).mean()
    return loss


class MSSSIMDistance(torch.nn.Module):
    """``1 - MS-SSIM`` on unquantised images (differentiable): (N,) in [0, 1]. Needs sides of 161 pixels or more."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .metrics.ssim import ms_ssim

        return 1.0 - ms_ssim(x.clamp(0, 1), y.clamp(0, 1), quantize=False)


class SSIMULACRA2Distance(torch.nn.Module):
    """``(100 - SSIMULACRA2) / 100`` on unquantised images (differentiable): (N,), 0 for identical images.

    SSIMULACRA2 (Cloudinary's metric, the JPEG XL / AVIF communities' reference) in our PyTorch implementation;
    it needs no network weights. Needs sides of 8 pixels or more.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .metrics.ssimulacra2 import ssimulacra2

        return (100.0 - ssimulacra2(x.clamp(0, 1), y.clamp(0, 1), quantize=False)) / 100.0


class VIFDistance(torch.nn.Module):
    """``1 - VIF`` (VMAF-NEG's information-fidelity feature, gain capped at 1) on unquantised images: (N,)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .metrics.vif import vif

        return 1.0 - vif(x.clamp(0, 1), y.clamp(0, 1))


class SumDistance(torch.nn.Module):
    """A weighted sum of distances ``(x, y) -> (N,)``: ``sum(w_i * d_i(x, y))``."""

    def __init__(self, parts: list[torch.nn.Module], weights: list[float]):
        super().__init__()
        self.parts, self.weights = torch.nn.ModuleList(parts), [float(w) for w in weights]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum(w * part(x, y) for w, part in zip(self.weights, self.parts))


def parse_perceptual(spec: str) -> list[tuple[float, str]]:
    """``"ssimulacra2+3*vif"`` -> ``[(1.0, "ssimulacra2"), (3.0, "vif")]``; every name one of PERCEPTUAL_LOSSES.

    Raises:
        ValueError: an unknown name or a weight that is not a positive number.
    """
    terms = []
    for term in str(spec).split("+"):
        weight, _, name = term.strip().rpartition("*")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = float("nan")
        if name not in PERCEPTUAL_LOSSES or not value > 0:
            raise ValueError(
                f"unknown perceptual loss {spec!r}: give one of {', '.join(PERCEPTUAL_LOSSES)}, or a sum with "
                "positive weights such as 'ssimulacra2+3*vif'"
            )
        terms.append((value, name))
    return terms


def perceptual_distance(name: str, net: str = "alex", weights_path: str | None = None) -> torch.nn.Module:
    """A frozen perceptual distance module ``(reference, distorted) -> (N,)`` on [0, 1] images, by name.

    Args:
        name: ``"dists"`` (the paper's metric), ``"lpips"``, ``"ms_ssim"`` (1 - MS-SSIM), ``"ssimulacra2"``
            ((100 - SSIMULACRA2) / 100) or ``"vif"`` (1 - VIF, VMAF-NEG's information fidelity); the last three
            need no weights. A weighted sum is written ``"ssimulacra2+3*vif"``.
        net: LPIPS trunk, ``"alex"`` or ``"vgg"``.
        weights_path: converted weights (file or folder) for LPIPS/DISTS; by default they are looked up as
            ``rp_diffusers.metrics.weights`` describes (environment folder, then the Hub).

    Raises:
        MetricWeightsUnavailable: LPIPS/DISTS weights not found; the message says what to download and where.

    Example:
        >>> perceptual_distance("ms_ssim")(torch.rand(1, 3, 192, 192), torch.rand(1, 3, 192, 192)).shape
        torch.Size([1])
    """
    if name == "ms_ssim":
        return MSSSIMDistance()
    if name == "ssimulacra2":
        return SSIMULACRA2Distance()
    if name == "vif":
        return VIFDistance()
    if "+" in name or "*" in name:
        terms = parse_perceptual(name)
        parts = [perceptual_distance(term, net, weights_path) for _, term in terms]
        return SumDistance(parts, [weight for weight, _ in terms])
    if name == "lpips":
        from .metrics.lpips import LPIPS

        return LPIPS(net, weights_path=weights_path)
    if name == "dists":
        from .metrics.dists import DISTS

        return DISTS(weights_path=weights_path)
    raise ValueError(f"unknown perceptual loss {name!r}; choose one of {', '.join(PERCEPTUAL_LOSSES)}")


@dataclass
class RatePerceptionLossOutput:
    """Terms of one :class:`RatePerceptionLoss` evaluation (all scalars but ``reconstruction``).

    Attributes:
        loss: the weighted total.
        bpp: mean surrogate bits per pixel of the original's pixels.
        perceptual: mean perceptual distance P(x, x_hat) (0 when its weight is 0 and no distance is set).
        mse: mean squared error between x and x_hat, images in [0, 1].
        reconstruction: (N, 3, H, W) the surrogate's decoded image.
    """

    loss: torch.Tensor
    bpp: torch.Tensor
    perceptual: torch.Tensor
    mse: torch.Tensor
    reconstruction: torch.Tensor


class RatePerceptionLoss(torch.nn.Module):
    """``lambda_rate * bpp + lambda_perceptual * P(x, x_hat) + lambda_mse * MSE(x, x_hat)``, x_hat from a surrogate.

    Args:
        surrogate: a differentiable codec surrogate ``(image, quality) -> SurrogateOutput(.reconstruction, .bits)``
            (``rp_diffusers.surrogates.get_surrogate("jpeg")``).
        perceptual: a distance ``(x, y) -> (N,)`` on [0, 1] images (DISTS, LPIPS, 1 - MS-SSIM), or ``None``.
        lambda_rate: weight of the rate in bits per pixel.
        lambda_perceptual: weight of the perceptual distance.
        lambda_mse: weight of the MSE (the "D" of R-D; keeps colours honest).
        rate_weighting: ``"fixed"``: the rate term is ``lambda_rate * bpp``. ``"codec_slope"``: it is
            ``lambda_rate * s * bpp`` with ``s`` the codec's own R-D slope at that quality on that image
            (:meth:`codec_slope`), so ``lambda_rate`` is a multiplier of the codec's trade-off: 1 = exactly the
            codec's, > 1 favours fewer bits. A fixed lambda is too cheap at low qualities (where the codec's curve
            is steep) and too dear at high ones; the slope-matched rate is what BD-rate measures.
        slope_delta: quality step of the slope's central difference.
        quality_range: ``(lo, hi)`` qualities the slope may probe (default: a learned proxy's
            ``fitted_quality_range``, where it was fitted to the codec, else the surrogate's ``quality_range``).

    Example:
        >>> loss_fn = RatePerceptionLoss(get_surrogate("jpeg"), None, lambda_rate=0.5, lambda_perceptual=0.0,
        ...                              lambda_mse=1.0)  # doctest: +SKIP
        >>> out = loss_fn(image, pipe_output, quality=40.0)  # doctest: +SKIP
        >>> out.loss.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
        surrogate: Callable,
        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        lambda_rate: float = 1.0,
        lambda_perceptual: float = 1.0,
        lambda_mse: float = 0.0,
        rate_weighting: str = "fixed",
        slope_delta: float = 5.0,
        quality_range: tuple[float, float] | None = None,
    ):
        super().__init__()
        if lambda_perceptual > 0 and perceptual is None:
            raise ValueError("lambda_perceptual > 0 needs a perceptual distance; pass perceptual= or set it to 0")
        if rate_weighting not in ("fixed", "codec_slope"):
            raise ValueError(f"rate_weighting must be 'fixed' or 'codec_slope', got {rate_weighting!r}")
        self.surrogate, self.perceptual = surrogate, perceptual
        self.lambda_rate, self.lambda_perceptual, self.lambda_mse = lambda_rate, lambda_perceptual, lambda_mse
        self.rate_weighting, self.slope_delta = rate_weighting, slope_delta
        self.quality_range = (
            quality_range
            or getattr(surrogate, "fitted_quality_range", None)
            or getattr(surrogate, "quality_range", (0, 100))
        )
        self._warned_rate = False

    def distortion(self, target: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Per-image D = lambda_perceptual * P + lambda_mse * MSE, (N,)."""
        d = self.lambda_mse * (reconstruction - target).square().flatten(1).mean(1)
        if self.perceptual is not None and self.lambda_perceptual > 0:
            d = d + self.lambda_perceptual * self.perceptual(target, reconstruction).float()
        return d

    @torch.no_grad()
    def codec_slope(self, original: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
        """The codec's own R-D slope -dD/dR at ``quality`` on each ``original`` image, (N,) >= 0.

        Central difference through the surrogate at ``quality +- slope_delta`` (kept in the quality range): what
        one more bit per pixel buys the codec alone by raising its quality. Weighting the rate by it makes
        ``D + slope * R`` fall exactly when the pre-processor beats the codec's own trade-off (first order), i.e.
        when the BD-rate in D improves. An image whose predicted size rises by less than ``MIN_RATE_RISE`` over the
        probe takes the median slope of the batch's other images (a warning says so once).
        """
        lo, hi = self.quality_range
        q = torch.as_tensor(quality, dtype=torch.float32, device=original.device).expand(original.shape[0])
        q_lo, q_hi = (q - self.slope_delta).clamp(lo, hi), (q + self.slope_delta).clamp(lo, hi)
        pixels = original.shape[-2] * original.shape[-1]
        target = original.float()
        low, high = self.surrogate(target, q_lo), self.surrogate(target, q_hi)
        d_low = self.distortion(target, low.reconstruction.float())
        d_high = self.distortion(target, high.reconstruction.float())
        r_low, r_high = low.bits.float() / pixels, high.bits.float() / pixels
        slope = ((d_low - d_high) / (r_high - r_low).clamp_min(1e-4)).clamp_min(0.0)
        # Where the predicted size rises by less than MIN_RATE_RISE over the probe, the quotient above prices bits at
        # up to 10^4 times the codec's usual slope and training flattens the images. A learned proxy's size falls
        # with quality on some content (an artefact); an exact surrogate's can be nearly flat on a tiny crop whose
        # file is mostly header. Either way one image's quotient is not a trade-off to train on: such images take
        # the median slope of the others in the batch (0 when none is valid).
        valid = (r_high - r_low) > MIN_RATE_RISE * (r_high + r_low) / 2
        if not bool(valid.all()):
            if not self._warned_rate:
                warnings.warn(
                    f"the surrogate's predicted size does not rise with quality (by {MIN_RATE_RISE:.0%}) between "
                    f"{float(q_lo[0]):g} and {float(q_hi[0]):g} on {int((~valid).sum())} of {len(valid)} images; "
                    "their codec-slope weight is the median of the others (a learned proxy's size is not monotone "
                    "in quality on all content; an exact one's is flat on crops whose file is mostly header)",
                    stacklevel=2,
                )
                self._warned_rate = True
            fallback = slope[valid].median() if bool(valid.any()) else slope.new_zeros(())
            slope = torch.where(valid, slope, fallback)
        return slope

    def forward(
        self, original: torch.Tensor, preprocessed: torch.Tensor, quality: float | torch.Tensor
    ) -> RatePerceptionLossOutput:
        """Args:
        original: (N, 3, H, W) the input images x in [0, 1] (no gradient needed).
        preprocessed: (N, 3, H, W) G(x) in [0, 1] (with gradient); clipped to [0, 1] before the codec, as a
            real codec sees 8-bit pixels.
        quality: the codec quality (float or (N,) tensor), higher = better.
        """
        height, width = original.shape[-2:]
        coded = self.surrogate(preprocessed.float().clamp(0.0, 1.0), quality)
        reconstruction = coded.reconstruction.float()
        bpp_each = coded.bits.float() / (height * width)
        bpp = bpp_each.mean()
        target = original.float()
        mse = F.mse_loss(reconstruction, target)
        if self.perceptual is not None:
            perceptual = self.perceptual(target, reconstruction).float().mean()
        else:
            perceptual = torch.zeros((), device=reconstruction.device)
        if self.rate_weighting == "codec_slope":
            rate = (self.codec_slope(original, quality) * bpp_each).mean()
        else:
            rate = bpp
        loss = self.lambda_rate * rate + self.lambda_perceptual * perceptual + self.lambda_mse * mse
        return RatePerceptionLossOutput(loss, bpp, perceptual, mse, reconstruction)
