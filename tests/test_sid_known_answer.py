"""Stage 1 converges on a problem with a known answer (an exact Gaussian-mixture teacher), and only when it is right.

The student, fake score and teacher are tiny (2-D); the step is the package's own stage-1 step
(``rp_diffusers.training_utils.sid``, which ``training/distill_cid.py`` calls). Each mutation test breaks one
piece of that step the way a plausible bug would and checks that the convergence test's own criterion then fails.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from rp_diffusers.losses import denoising_loss, sid_generator_loss
from rp_diffusers.training_utils import sid
from rp_diffusers.training_utils.sid_toy import GaussianMixture, ToyConfig, distill_toy

# Four modes at (+-1.5, +-1.5), std 0.3: separated, with enough overlap at moderate noise for a continuous one-step
# map to carry the right mass to each mode. The untrained student (the identity on N(0, I)) is at about 0.31.
TEACHER = GaussianMixture.square(spread=1.5, std=0.3)
CONFIG = ToyConfig(steps=1500, batch_size=512, learning_rate=5e-4, fake_learning_rate=2e-3)
# Seeds 0-2 end at 0.007-0.013; a student that matched only the mixture's mean and covariance would be at 0.06.
BOUND = 0.025


def converged(result) -> bool:
    """The criterion of the known-answer test: a tenfold fall, and below BOUND."""
    return result.distance_final <= BOUND and result.distance_final * 10 <= result.distance_initial


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    yield
    torch.set_num_threads(threads)


def test_sid_student_converges_on_known_answer():
    result = distill_toy(CONFIG, TEACHER)
    assert result.distance_initial > 0.25
    assert converged(result), (result.distance_initial, result.distance_final)
    assert result.distance_final < 20 * max(result.distance_floor, 5e-4)  # near the sampling floor of the distance


def test_the_criterion_rejects_a_gaussian_with_the_mixture_moments():
    """BOUND is tight enough that matching the first two moments (no modes) fails it."""
    from rp_diffusers.training_utils.sid_toy import energy_distance

    generator = torch.Generator().manual_seed(0)
    target, _ = TEACHER.sample(3000, generator)
    moments = target.mean(0) + torch.randn(3000, 2, generator=generator) * target.std(0)
    assert energy_distance(moments, TEACHER.sample(3000, generator)[0]) > 2 * BOUND


def _wrong_sign(x_g, f_real, f_fake, alpha=1.0):
    return -sid_generator_loss(x_g, f_real, f_fake, alpha)


def _no_detach(fake_x0, x_g, t, noise, alphas_cumprod, prediction_type="epsilon"):
    # fake_score_loss without its detach: the student's outputs carry the fake score's loss back to the student
    alpha = sid.broadcast_alpha(alphas_cumprod, t, x_g.ndim)
    return denoising_loss(fake_x0(x_g, t, noise), x_g, alpha, prediction_type)


def _frozen_fake_score(*args, **kwargs):
    return 0.0 * sid_fake_score_loss(*args, **kwargs)  # a fake score that never learns


sid_fake_score_loss = sid.fake_score_loss

MUTATIONS = {
    "wrong_sign": ("sid_generator_loss", _wrong_sign),
    "missing_detach": ("fake_score_loss", _no_detach),
    "frozen_fake_score": ("fake_score_loss", _frozen_fake_score),
    "fake_score_not_frozen_in_student_step": ("frozen", lambda parameters: contextlib.nullcontext()),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_sid_mutations_fail_the_known_answer(mutation, monkeypatch):
    name, replacement = MUTATIONS[mutation]
    monkeypatch.setattr(sid, name, replacement)
    try:
        result = distill_toy(CONFIG, TEACHER)
    except RuntimeError:  # e.g. backward through the student's graph twice: the bug cannot go unnoticed either
        return
    assert not converged(result), (mutation, result.distance_initial, result.distance_final)


def test_sid_timesteps_per_sample_and_per_batch():
    generator = torch.Generator().manual_seed(0)
    t_fake, t_gen = sid.sid_timesteps(64, 20, 980, per_sample=True, generator=generator)
    assert t_fake.shape == t_gen.shape == (64,) and t_fake.unique().numel() > 30
    assert int(t_fake.min()) >= 20 and int(t_fake.max()) <= 980
    t_fake, t_gen = sid.sid_timesteps(64, 20, 980, per_sample=False, generator=generator)
    assert t_fake.unique().numel() == 1 and t_gen.unique().numel() == 1
    with pytest.raises(ValueError, match="t_min"):
        sid.sid_timesteps(4, 30, 20)


def test_mixture_x0_is_the_posterior_mean():
    """The closed form against a Monte-Carlo posterior mean at one x_t (importance weights from the prior)."""
    generator = torch.Generator().manual_seed(0)
    alpha = torch.tensor(0.3)
    x0, _ = TEACHER.sample(400_000, generator)
    z_t = torch.tensor([[0.4, -0.9]])
    log_w = -(z_t - alpha.sqrt() * x0).square().sum(1) / (2 * (1 - alpha))
    estimate = (log_w.softmax(0)[:, None] * x0).sum(0)
    torch.testing.assert_close(TEACHER.x0(z_t, alpha)[0], estimate, atol=0.02, rtol=0)


def test_cid_task_weight_trades_the_manifold_against_the_input():
    """CiD's consistency term: without it the student moves noisy inputs onto the mixture; with a large weight it
    stays at its input (and so off the mixture)."""
    import dataclasses

    free = distill_toy(dataclasses.replace(CONFIG, task="restore", lambda_task=0.0), TEACHER)
    tied = distill_toy(dataclasses.replace(CONFIG, task="restore", lambda_task=3.0), TEACHER)
    assert free.distance_final * 5 < free.distance_initial  # noisy inputs moved onto the mixture
    assert free.distance_final * 4 < tied.distance_final  # the task term holds the outputs back
    assert tied.input_mse_final * 20 < free.input_mse_final  # ... at their inputs
