"""Perceptual-decoding solvers in VE notation: consistency (multi)step, DPM-Solver++(2M), Euler-Maruyama, DPS.

Every solver starts from ``x = x_dec + sigma_0 * n`` and walks a decreasing list of sigmas to 0 with a denoiser
``denoise(x, sigma) -> x0`` (:mod:`rp_diffusers.decode.denoisers`), so one implementation serves pixel and
latent models, VP and EDM parametrisations.

- ``sample_consistency``: one call of a consistency model (the ``fast`` preset), or its multistep sampler
  (x0 = f(x, s_i); x = x0 + sqrt(s_{i+1}^2 - s_min^2) z, as ``CMStochasticIterativeScheduler.step``).
- ``sample_dpmpp_2m``: DPM-Solver++(2M), the few-step PF-ODE solver (Lu et al. 2022) in k-diffusion's form.
- ``sample_euler_maruyama``: the reverse VE SDE of the paper's Eq. 5,
  x_{i+1} = x_i + (s_i^2 - s_{i+1}^2) score + sqrt(s_i^2 - s_{i+1}^2) z with score = (D - x_i) / s_i^2.
- ``DPSGuidance``: the diffusion-posterior-sampling term of Eq. 16-17, x_{i+1} -= zeta grad_{x_i} ||S(x0(x_i)) -
  x_dec|| through a differentiable codec surrogate S.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

Denoise = Callable[[torch.Tensor, float], torch.Tensor]


def karras_sigmas(sigma_max: float, sigma_min: float, num: int, rho: float = 7.0) -> list[float]:
    """``num`` sigmas from ``sigma_max`` down to ``sigma_min`` with Karras et al.'s rho spacing (no final 0)."""
    if num < 1:
        raise ValueError(f"num_steps must be at least 1, got {num}")
    if num == 1 or sigma_max <= sigma_min:
        return [float(sigma_max)]
    ramp = torch.linspace(0, 1, num, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [float(s) for s in (max_inv + ramp * (min_inv - max_inv)) ** rho]


def reconstruction_of(output) -> torch.Tensor:
    """A surrogate's output -> its decoded image tensor (accepts ``SurrogateOutput`` or a bare tensor)."""
    return output if isinstance(output, torch.Tensor) else output.reconstruction


class DPSGuidance:
    """The DPS correction: pull the codec-re-encoded x0 estimate toward the received decode.

    Args:
        to_image: maps model-space x0 (B, C, h, w) to an image (B, 3, H, W) in [0, 1], differentiably
            (pixel models: ``x0 / 2 + 0.5``; latent models: VAE decode and crop).
        target: (B, 3, H, W) in [0, 1], the decoded image of the received bitstream (``x_dec``).
        surrogate: differentiable codec ``surrogate(image, quality) -> SurrogateOutput | tensor`` (N, 3, H, W).
        quality: the codec quality the bitstream was encoded with (passed to the surrogate).
        scale: zeta. The step is zeta * grad ||r|| = zeta * grad(||r||^2) / (2 ||r||) per image, Chung et al.'s
            normalised step, so zeta does not depend on the image size or the residual's magnitude.

    Example:
        >>> guidance = DPSGuidance(lambda x0: x0 / 2 + 0.5, target, lambda im, q: im, quality=None)  # doctest: +SKIP
        >>> x0, correction, residual_norm = guidance(denoise, x, sigma)  # doctest: +SKIP
    """

    def __init__(self, to_image, target: torch.Tensor, surrogate, quality=None, scale: float = 1.0) -> None:
        self.to_image = to_image
        self.target = target
        self.surrogate = surrogate
        self.quality = quality
        self.scale = float(scale)

    def residual_norm(self, x0: torch.Tensor) -> torch.Tensor:
        """||S(image(x0)) - x_dec||_2 per image, shape (B,)."""
        reconstruction = reconstruction_of(self.surrogate(self.to_image(x0), self.quality))
        return (reconstruction.float() - self.target.float()).flatten(1).pow(2).sum(1).sqrt()

    def __call__(self, denoise: Denoise, x: torch.Tensor, sigma: float):
        """-> (x0 detached, correction to subtract from the next sample, residual norm (B,))."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = denoise(x_in, sigma)
            reconstruction = reconstruction_of(self.surrogate(self.to_image(x0), self.quality))
            squared = (reconstruction.float() - self.target.float()).flatten(1).pow(2).sum(1)
            (grad,) = torch.autograd.grad(squared.sum(), x_in)
        norm = squared.detach().sqrt()
        step = self.scale / (2 * norm.clamp_min(1e-12))
        return x0.detach(), grad * step.view(-1, *([1] * (grad.ndim - 1))), norm


def _denoise_step(denoise: Denoise, x: torch.Tensor, sigma: float, guidance: DPSGuidance | None):
    if guidance is None:
        return denoise(x, sigma), None
    x0, correction, _ = guidance(denoise, x, sigma)
    return x0, correction


def _noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)


def sample_consistency(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: list[float],
    sigma_min: float,
    generator: torch.Generator | None = None,
    guidance: DPSGuidance | None = None,
) -> torch.Tensor:
    """Consistency-model sampling from ``x`` at ``sigmas[0]``: one call per sigma, fresh noise in between.

    With one sigma this is the ``fast`` preset: x0 = f(x_dec + sigma n, sigma). The optional DPS term is
    applied to each re-noised sample (our reading of the slow preset for a consistency model).
    """
    for index, sigma in enumerate(sigmas):
        x0, correction = _denoise_step(denoise, x, sigma, guidance)
        if index == len(sigmas) - 1:
            return x0
        next_sigma = sigmas[index + 1]
        x = x0 + max(next_sigma**2 - sigma_min**2, 0.0) ** 0.5 * _noise_like(x0, generator)
        if correction is not None:
            x = x - correction
    return x


def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """DPM-Solver++(2M) on the PF-ODE from ``sigmas[0]`` to 0 (``sigmas`` excludes the final 0); one call a step."""
    sigmas = [*sigmas, 0.0]
    old_x0 = None
    for index in range(len(sigmas) - 1):
        sigma, next_sigma = sigmas[index], sigmas[index + 1]
        x0 = denoise(x, sigma)
        if next_sigma == 0:
            return x0
        t, t_next = -torch.tensor(sigma).log(), -torch.tensor(next_sigma).log()
        h = float(t_next - t)
        if old_x0 is None:
            x0_d = x0
        else:
            h_last = float(t - (-torch.tensor(sigmas[index - 1]).log()))
            r = h_last / h
            x0_d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        x = (next_sigma / sigma) * x - float(torch.tensor(-h).expm1()) * x0_d
        old_x0 = x0
    return x


def sample_euler_maruyama(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: list[float],
    generator: torch.Generator | None = None,
    guidance: DPSGuidance | None = None,
) -> torch.Tensor:
    """Euler-Maruyama on the reverse VE SDE from ``sigmas[0]`` to 0; the last step returns the x0 estimate.

    With ``guidance`` this is DPS started from the noised decode (the ``slow`` preset, Eq. 16-17).
    """
    sigmas = [*sigmas, 0.0]
    for index in range(len(sigmas) - 1):
        sigma, next_sigma = sigmas[index], sigmas[index + 1]
        x0, correction = _denoise_step(denoise, x, sigma, guidance)
        if next_sigma == 0:
            return x0
        variance = sigma**2 - next_sigma**2
        score = (x0 - x) / sigma**2
        x = x + variance * score + variance**0.5 * _noise_like(x, generator)
        if correction is not None:
            x = x - correction
    return x
