"""One step of SiD distillation (Zhou et al. 2024, "Score identity Distillation", arXiv:2404.04057), as stage 1 runs it.

Stage 1 (``training/distill_cid.py``) alternates, on every batch, a fake-score update and a student update. This
module holds the parts of that step that do not depend on what the networks are, so that the script and the
known-answer tests (``tests/test_sid_known_answer.py``, where the teacher is an exact Gaussian-mixture denoiser)
run the same code:

- :func:`sid_timesteps`: the noise levels of the two updates (SiD draws one per sample; ``per_sample=False``
  draws one per batch, the project's earlier behaviour, kept as a flag);
- :func:`fake_score_loss`: the fake score's denoising loss on the student's detached outputs;
- :func:`student_sid_loss`: SiD's generator loss through the teacher and the frozen fake score.

A denoiser is passed as an ``X0Fn``: ``(x, t, noise) -> x0 estimate`` that noises ``x`` itself to
``sqrt(a_t) x + sqrt(1 - a_t) noise`` (as :func:`rp_diffusers.models.one_step.predict_x0_latents` does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch

from ..losses import denoising_loss, sid_generator_loss

X0Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sid_timesteps(
    batch_size: int,
    t_min: int,
    t_max: int,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t_fake, t_gen)``: two (N,) long tensors of timesteps in ``[t_min, t_max]``, for the two updates.

    ``per_sample=True`` (SiD) draws an independent timestep for every sample; ``False`` draws one per batch and
    repeats it, which gives the gradient of one noise level per step (noisier, the same in expectation).
    """
    if not 0 <= t_min <= t_max:
        raise ValueError(f"need 0 <= t_min <= t_max, got {t_min} and {t_max}")
    count = batch_size if per_sample else 1
    draws = torch.randint(t_min, t_max + 1, (2, count), generator=generator)
    return tuple(d.expand(batch_size).to(device) for d in draws)


def broadcast_alpha(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    """``alphas_cumprod[timesteps]`` shaped (N, 1, ..., 1) to broadcast against an ``ndim``-dimensional batch."""
    alpha = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alpha.reshape(-1, *([1] * (ndim - 1)))


def fake_score_loss(
    fake_x0: X0Fn,
    x_g: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """The fake score's denoising loss at the student's outputs ``x_g``; no gradient reaches the student."""
    x_g = x_g.detach()
    return denoising_loss(fake_x0(x_g, t, noise), x_g, broadcast_alpha(alphas_cumprod, t, x_g.ndim), prediction_type)


@contextmanager
def frozen(parameters: Iterable[torch.nn.Parameter]):
    """Turn ``requires_grad`` off for the trainable ``parameters`` inside the block (the fake score during the
    student's update: the generator loss differentiates through it with respect to its input only)."""
    trainable = [p for p in parameters if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def student_sid_loss(
    teacher_x0: X0Fn,
    fake_x0: X0Fn,
    fake_parameters: Iterable[torch.nn.Parameter],
    x_g: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alpha: float = 1.0,
) -> torch.Tensor:
    """SiD's generator loss at ``x_g`` noised to ``t`` with ``noise``, differentiated through both denoisers'
    inputs to the student; the fake score's parameters get no gradient."""
    with frozen(fake_parameters):
        f_fake = fake_x0(x_g, t, noise)
        f_real = teacher_x0(x_g, t, noise)
    return sid_generator_loss(x_g, f_real, f_fake, alpha)
