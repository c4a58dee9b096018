"""Stage 1 on a problem with a known answer: SiD/CiD distillation of an exact Gaussian-mixture teacher.

The teacher is not a network: for data from a mixture of isotropic Gaussians, the x0 estimate
``E[x0 | x_t]`` of a variance-preserving diffusion (``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``, with Stable
Diffusion's noise schedule) has a closed form (:meth:`GaussianMixture.x0`). A one-step student (a small MLP) is
trained with the package's own stage-1 step (:mod:`rp_diffusers.training_utils.sid`: the same timestep and noise
sampling, fake-score update, then student update through ``optimizer_step``, as ``training/distill_cid.py``), and
its output distribution is compared with the mixture by the energy distance on samples.

Two problems:

- ``task="generate"``: the student maps N(0, I) to the mixture (pure SiD; the known answer is the mixture).
- ``task="restore"``: the student maps noisy data ``x0 + input_noise * eps`` back onto the mixture while CiD's
  consistency term ``lambda_task * MSE(G(y), y)`` keeps it close to its input; the weight trades the
  distribution match against staying near the input (``benchmarks/sid_toy.py`` sweeps it).

The fake score starts as a copy of the teacher (as SiD initialises it): the exact mixture denoiser plus a
trainable residual MLP whose last layer is zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import sid
from .runner import optimizer_step


def sd_alphas_cumprod(num_train_timesteps: int = 1000) -> torch.Tensor:
    """Stable Diffusion's cumulative alphas (``scaled_linear`` betas from 0.00085 to 0.012), as diffusers makes them."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class GaussianMixture:
    """Equal-weight mixture of isotropic Gaussians with means ``means`` (K, D) and standard deviation ``std``."""

    def __init__(self, means: torch.Tensor, std: float) -> None:
        self.means = means.float()
        self.std = float(std)

    @classmethod
    def square(cls, spread: float = 1.0, std: float = 0.15) -> GaussianMixture:
        """Four modes at (+-spread, +-spread)."""
        corners = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
        return cls(spread * corners, std)

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(samples (count, D), component index (count,))``."""
        index = torch.randint(len(self.means), (count,), generator=generator)
        noise = torch.randn(count, self.means.shape[1], generator=generator)
        return self.means[index] + self.std * noise, index

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest mean of each row of ``x``."""
        return torch.cdist(x.float(), self.means).argmin(dim=1)

    def x0(self, z_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Exact ``E[x0 | x_t = z_t]`` at noise level ``alpha_bar`` ((N, 1) or scalar): differentiable in ``z_t``."""
        alpha_bar = torch.as_tensor(alpha_bar, dtype=z_t.dtype).reshape(-1, 1)
        sqrt_a = alpha_bar.sqrt()
        variance = alpha_bar * self.std**2 + (1.0 - alpha_bar)  # of x_t given the component
        centred = z_t[:, None, :] - sqrt_a[:, None, :] * self.means[None]  # (N, K, D)
        logits = -centred.square().sum(-1) / (2 * variance)  # equal weights and variances: no other terms
        weights = logits.softmax(dim=1)  # (N, K) posterior over the components
        gain = sqrt_a * self.std**2 / variance  # (N, 1)
        per_component = self.means[None] + gain[:, None, :] * centred  # E[x0 | x_t, k]
        return (weights[..., None] * per_component).sum(dim=1)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance ``2 E|x - y| - E|x - x'| - E|y - y'|`` between two samples (0 for equal distributions)."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def mlp(inputs: int, outputs: int, width: int = 128, depth: int = 3) -> nn.Sequential:
    layers, size = [], inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.SiLU()]
        size = width
    layers.append(nn.Linear(size, outputs))
    return nn.Sequential(*layers)


class ToyStudent(nn.Module):
    """One-step map ``G(y) = y + MLP(y)`` (the identity at the start when ``MLP``'s last layer is zero)."""

    def __init__(self, dim: int = 2, width: int = 128) -> None:
        super().__init__()
        self.net = mlp(dim, dim, width)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.net(y)


class ToyFakeScore(nn.Module):
    """The teacher's exact denoiser plus a trainable residual ``MLP(z_t, log SNR)`` that starts at zero."""

    def __init__(self, teacher: GaussianMixture, alphas_cumprod: torch.Tensor, width: int = 128) -> None:
        super().__init__()
        self.teacher, self.alphas_cumprod = teacher, alphas_cumprod
        dim = teacher.means.shape[1]
        self.net = mlp(dim + 1, dim, width)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        alpha = sid.broadcast_alpha(self.alphas_cumprod, t, x.ndim)
        z_t = alpha.sqrt() * x + (1 - alpha).sqrt() * noise
        log_snr = (alpha / (1 - alpha)).log() / 8
        return self.teacher.x0(z_t, alpha) + self.net(torch.cat([z_t, log_snr], dim=1))


def teacher_x0_fn(teacher: GaussianMixture, alphas_cumprod: torch.Tensor) -> sid.X0Fn:
    """The mixture's exact denoiser as SiD's ``(x, t, noise) -> x0`` function."""

    def x0(x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        alpha = sid.broadcast_alpha(alphas_cumprod, t, x.ndim)
        return teacher.x0(alpha.sqrt() * x + (1 - alpha).sqrt() * noise, alpha)

    return x0


@dataclass
class ToyConfig:
    task: str = "generate"  # "generate" (N(0, I) -> mixture) or "restore" (noisy data -> mixture, CiD)
    steps: int = 1500
    batch_size: int = 256
    learning_rate: float = 1e-3
    fake_learning_rate: float = 2e-3
    sid_alpha: float = 1.2  # SiD's choice for EDM-style denoisers
    t_min: int = 20
    t_max: int = 980
    per_sample_timesteps: bool = True
    lambda_task: float = 0.0
    input_noise: float = 0.5  # "restore": standard deviation of the noise on the student's inputs
    final_lr_fraction: float = 0.05  # cosine decay of both learning rates to this share
    max_grad_norm: float = 1.0
    eval_samples: int = 3000
    seed: int = 0


@dataclass
class ToyResult:
    config: dict
    distance_initial: float  # energy distance(student outputs, mixture) before training
    distance_final: float
    distance_floor: float  # between two independent samples of the mixture of the same size
    input_mse_final: float  # mean squared distance |G(y) - y|^2 per coordinate
    mode_agreement_final: float  # "restore": share of outputs nearest to the mode their input came from
    history: list[dict]


def student_inputs(
    config: ToyConfig, teacher: GaussianMixture, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, source component)`` of the student for ``config.task``."""
    if config.task == "generate":
        return torch.randn(count, teacher.means.shape[1], generator=generator), torch.full((count,), -1)
    if config.task == "restore":
        clean, index = teacher.sample(count, generator)
        return clean + config.input_noise * torch.randn(clean.shape, generator=generator), index
    raise ValueError(f"unknown task {config.task!r}; use 'generate' or 'restore'")


@torch.no_grad()
def evaluate_student(
    student: nn.Module, teacher: GaussianMixture, config: ToyConfig, keep: dict | None = None
) -> dict:
    """Distance to the mixture, MSE to the input and mode agreement on fixed evaluation draws; ``keep`` (a dict)
    receives the draws' ``inputs`` and ``outputs`` as arrays."""
    generator = torch.Generator().manual_seed(10_000 + config.seed)  # the same evaluation draws every time
    inputs, source = student_inputs(config, teacher, config.eval_samples, generator)
    target, _ = teacher.sample(config.eval_samples, generator)
    outputs = student(inputs)
    if keep is not None:
        keep.update(inputs=inputs.numpy(), outputs=outputs.numpy())
    agreement = float((teacher.nearest(outputs) == source).float().mean()) if config.task == "restore" else math.nan
    return {
        "distance": energy_distance(outputs, target),
        "input_mse": float((outputs - inputs).square().mean()),
        "mode_agreement": agreement,
    }


def distill_toy(
    config: ToyConfig | None = None, teacher: GaussianMixture | None = None, keep: dict | None = None
) -> ToyResult:
    """Train a one-step student against the exact mixture teacher with stage 1's step; see the module docstring.
    ``keep`` (a dict) receives the trained student's evaluation ``inputs`` and ``outputs``."""
    from accelerate import Accelerator

    from ..losses import task_loss

    config = config or ToyConfig()
    teacher = teacher or GaussianMixture.square()
    torch.manual_seed(config.seed)
    alphas = sd_alphas_cumprod()
    student, fake = ToyStudent(teacher.means.shape[1]), ToyFakeScore(teacher, alphas)
    nn.init.zeros_(student.net[-1].weight)  # the untrained student is the identity map
    nn.init.zeros_(student.net[-1].bias)
    accelerator = Accelerator()  # no prepare(): optimizer_step only needs its backward and clipping
    optimizer_g = torch.optim.Adam(student.parameters(), lr=config.learning_rate, betas=(0.0, 0.999))
    optimizer_f = torch.optim.Adam(fake.parameters(), lr=config.fake_learning_rate, betas=(0.0, 0.999))

    def decay(step: int) -> float:  # cosine from 1 to config.final_lr_fraction
        done = min(step / config.steps, 1.0)
        return config.final_lr_fraction + (1 - config.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * done))

    schedule_g = torch.optim.lr_scheduler.LambdaLR(optimizer_g, decay)
    schedule_f = torch.optim.lr_scheduler.LambdaLR(optimizer_f, decay)
    teacher_x0 = teacher_x0_fn(teacher, alphas)
    fake_parameters = [p for p in fake.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(config.seed)

    initial = evaluate_student(student, teacher, config)
    history = [{"step": 0, **initial}]
    for step in range(1, config.steps + 1):
        inputs, _ = student_inputs(config, teacher, config.batch_size, generator)
        x_g = student(inputs)
        t_fake, t_gen = sid.sid_timesteps(
            config.batch_size, config.t_min, config.t_max, config.per_sample_timesteps, generator
        )
        noise_fake, noise_gen = torch.randn((2, *x_g.shape), generator=generator)
        loss_fake = sid.fake_score_loss(fake, x_g, t_fake, noise_fake, alphas, "epsilon")
        optimizer_step(accelerator, loss_fake, fake, optimizer_f, schedule_f, config.max_grad_norm)
        loss_g = sid.student_sid_loss(teacher_x0, fake, fake_parameters, x_g, t_gen, noise_gen, config.sid_alpha)
        if config.lambda_task:
            loss_g = loss_g + config.lambda_task * task_loss(x_g, inputs)
        optimizer_step(accelerator, loss_g, student, optimizer_g, schedule_g, config.max_grad_norm)
        if step % max(1, config.steps // 10) == 0 or step == config.steps:
            last = step == config.steps
            history.append({"step": step, **evaluate_student(student, teacher, config, keep if last else None)})

    floor_generator = torch.Generator().manual_seed(20_000 + config.seed)
    floor = energy_distance(
        teacher.sample(config.eval_samples, floor_generator)[0],
        teacher.sample(config.eval_samples, floor_generator)[0],
    )
    final = history[-1]
    return ToyResult(
        config=asdict(config),
        distance_initial=initial["distance"],
        distance_final=final["distance"],
        distance_floor=floor,
        input_mse_final=final["input_mse"],
        mode_agreement_final=final["mode_agreement"],
        history=history,
    )
