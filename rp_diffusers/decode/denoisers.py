"""One x0 estimate D(x, sigma) in VE/EDM notation for any diffusers noise model (consistency, VP/DDPM, EDM).

The solvers are written once, in the VE notation of Zhu et al. 2025, arXiv:2506.16102: a clean sample ``x`` (pixels in
[-1, 1] or scaled VAE latents) is noised as ``x_sigma = x + sigma * n`` and a denoiser returns an estimate of
``x`` from ``x_sigma``. Each model family is converted here, and only here:

- Consistency models (``CMStochasticIterativeScheduler``): ``D = c_skip(sigma) x + c_out(sigma) F(c_in x, t)``
  with the boundary-condition scalings and ``t = 250 log(sigma)``, exactly as diffusers' scheduler steps. D is
  then the consistency function (the PF-ODE endpoint), not a posterior mean.
- VP / DDPM models (any scheduler with ``alphas_cumprod``): ``x_t = sqrt(abar) x + sqrt(1 - abar) n`` is the VE
  sample ``x_sigma / sqrt(1 + sigma^2)`` with ``sigma = sqrt((1 - abar) / abar)``; the timestep is found by
  interpolating log-sigma over the training schedule (continuous t, as k-diffusion does). Epsilon, v and sample
  predictions are supported; ADM's learned-variance channels are dropped.
- EDM-preconditioned models (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): the scheduler's own
  ``precondition_inputs`` / ``precondition_noise`` / ``precondition_outputs``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Denoiser:
    """Base class: ``denoiser(x_sigma, sigma) -> x0`` for a model call ``model_fn(model_input, timesteps)``.

    Args:
        model_fn: maps a (B, C, h, w) model input and a (B,) float timestep tensor to the raw model output.
        scheduler: the diffusers scheduler whose configuration defines the noise parametrisation.

    Attributes:
        kind: ``"consistency"``, ``"vp"`` or ``"edm"``.
        sigma_min, sigma_max: the noise range the model was trained on (VE units of the model's space).
    """

    kind = "base"

    def __init__(self, model_fn: ModelFn, scheduler) -> None:
        self.model_fn = model_fn
        self.scheduler = scheduler
        self.sigma_min = 0.0
        self.sigma_max = float("inf")

    @property
    def is_consistency(self) -> bool:
        return self.kind == "consistency"

    def _call_model(self, model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        timesteps = timestep.reshape(-1).expand(model_input.shape[0]).to(model_input.device)
        output = self.model_fn(model_input, timesteps).float()
        if output.shape[1] == 2 * model_input.shape[1]:
            output = output[:, : model_input.shape[1]]  # ADM learned variance: keep the mean channels
        return output

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) noisy sample at ``sigma`` (a float shared by the batch) -> (B, C, h, w) x0 estimate."""
        raise NotImplementedError


class ConsistencyDenoiser(Denoiser):
    """The consistency function f(x, sigma) of a ``CMStochasticIterativeScheduler`` model (one call = x0)."""

    kind = "consistency"

    def __init__(self, model_fn: ModelFn, scheduler) -> None:
        super().__init__(model_fn, scheduler)
        self.sigma_min = float(scheduler.config.sigma_min)
        self.sigma_max = float(scheduler.config.sigma_max)
        self.sigma_data = float(scheduler.config.sigma_data)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).clamp_min(self.sigma_min)
        x = x.float()
        c_in = (sigma**2 + self.sigma_data**2).rsqrt()
        c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition(sigma)
        timestep = 1000 * 0.25 * torch.log(sigma + 1e-44)  # CMStochasticIterativeScheduler.sigma_to_t
        return c_skip * x + c_out * self._call_model(c_in * x, timestep)


class VPDenoiser(Denoiser):
    """Tweedie x0 estimate of a variance-preserving (DDPM/ADM/SD) model, expressed in VE sigma.

    ``sigma`` of the VE sample maps to the VP sample ``x_t = x_sigma / sqrt(1 + sigma^2)`` and to the continuous
    timestep whose ``sqrt((1 - abar_t) / abar_t)`` equals sigma (log-linear interpolation between integer steps).
    """

    kind = "vp"

    def __init__(self, model_fn: ModelFn, scheduler) -> None:
        super().__init__(model_fn, scheduler)
        alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
        self.log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod).sqrt()).log()
        self.sigma_min = float(self.log_sigmas[0].exp())
        self.sigma_max = float(self.log_sigmas[-1].exp())
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"unsupported prediction_type {self.prediction_type!r}; use epsilon, v_prediction or sample"
            )

    def sigma_to_t(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """VE sigma -> continuous training timestep in [0, T - 1] (clamped to the trained range)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        index = torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1)).clamp(1, len(self.log_sigmas) - 1)
        low, high = self.log_sigmas[index - 1], self.log_sigmas[index]
        fraction = ((log_sigma.reshape(-1) - low) / (high - low)).clamp(0, 1)
        return (index - 1 + fraction).reshape(torch.as_tensor(sigma).shape).float()

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        x = x.float()
        x_t = x / (1 + sigma_t**2).sqrt()
        output = self._call_model(x_t, self.sigma_to_t(float(sigma_t)).to(x.device))
        if self.prediction_type == "epsilon":
            return x - sigma_t * output
        if self.prediction_type == "v_prediction":
            return (x_t - sigma_t * output) / (1 + sigma_t**2).sqrt()
        return output


class EDMDenoiser(Denoiser):
    """Denoiser of an EDM-preconditioned model through the scheduler's ``precondition_*`` methods."""

    kind = "edm"

    def __init__(self, model_fn: ModelFn, scheduler) -> None:
        super().__init__(model_fn, scheduler)
        self.sigma_min = float(scheduler.config.sigma_min)
        self.sigma_max = float(scheduler.config.sigma_max)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        x = x.float()
        model_input = self.scheduler.precondition_inputs(x, sigma)
        timestep = torch.as_tensor(self.scheduler.precondition_noise(sigma), dtype=torch.float32)
        output = self._call_model(model_input, timestep)
        return self.scheduler.precondition_outputs(x, output, sigma).float()


def make_denoiser(model_fn: ModelFn, scheduler) -> Denoiser:
    """Pick the conversion that matches ``scheduler``: consistency, EDM or VP (in that order of checks).

    Example:
        >>> from diffusers import DDPMScheduler
        >>> denoiser = make_denoiser(lambda x, t: torch.zeros_like(x), DDPMScheduler())
        >>> denoiser.kind, round(denoiser.sigma_max, 1)
        ('vp', 157.4)
    """
    name = type(scheduler).__name__
    if name == "CMStochasticIterativeScheduler" or hasattr(scheduler, "get_scalings_for_boundary_condition"):
        return ConsistencyDenoiser(model_fn, scheduler)
    if hasattr(scheduler, "precondition_outputs"):
        return EDMDenoiser(model_fn, scheduler)
    if hasattr(scheduler, "alphas_cumprod"):
        return VPDenoiser(model_fn, scheduler)
    raise ValueError(
        f"{name} is not a supported noise schedule; use CMStochasticIterativeScheduler (consistency models), "
        "an EDM scheduler, or any scheduler with alphas_cumprod (DDPM, DDIM, DPMSolverMultistep, Euler)"
    )
