"""Losses: SiD generator loss on hand-computable tensors, gradient routing, denoising loss, rate-perception loss."""

import pytest
import torch

from rp_diffusers.losses import (
    MSSSIMDistance,
    RatePerceptionLoss,
    classifier_free_guidance,
    denoising_loss,
    denoising_weight,
    perceptual_distance,
    sid_generator_loss,
    task_loss,
)
from rp_diffusers.surrogates import SurrogateOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sid_generator_loss_alpha_one_by_hand():
    # sample 0: x_g = 0, f_real = 1, f_fake = 0.5 -> (1 - .5) * (.5 - 0) / |0 - 1| = 0.25 per element
    # sample 1: x_g = 0, f_real = 2, f_fake = 0 -> (2 - 0) * (0 - 0) / 2 = 0
    x_g = torch.zeros(2, 1, 1, 2)
    f_real = torch.stack([torch.ones(1, 1, 2), torch.full((1, 1, 2), 2.0)])
    f_fake = torch.stack([torch.full((1, 1, 2), 0.5), torch.zeros(1, 1, 2)])
    assert sid_generator_loss(x_g, f_real, f_fake, alpha=1.0).item() == pytest.approx((0.25 + 0.0) / 2)


def test_sid_generator_loss_alpha_matches_sid_formula():
    # SiD: (f_real - f_fake) * ((f_real - x_g) - alpha * (f_real - f_fake)) / mean|x_g - f_real|
    x_g = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    f_real = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    f_fake = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)
    weight = (1.0 + 2.0) / 2  # mean |x_g - f_real|
    per_element = [1.0 * (1.0 - 1.2 * 1.0), 1.0 * (2.0 - 1.2 * 1.0)]  # alpha = 1.2
    expected = sum(per_element) / 2 / weight
    assert sid_generator_loss(x_g, f_real, f_fake, alpha=1.2).item() == pytest.approx(expected)


def test_sid_generator_loss_weight_is_detached():
    x_g = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).requires_grad_(True)
    f_real, f_fake = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2), torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)
    sid_generator_loss(x_g, f_real, f_fake, alpha=1.0).backward()
    # d/dx_g of mean((f_real - f_fake) * (f_fake - x_g)) / w with w constant: -(f_real - f_fake) / (2 w)
    assert torch.allclose(x_g.grad.flatten(), torch.tensor([-1.0, -1.0]) / (2 * 1.5))


def test_sid_gradients_reach_only_the_student():
    torch.manual_seed(0)
    student, teacher, fake = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    teacher.requires_grad_(False)
    fake.requires_grad_(False)  # frozen during the generator update, as the script does
    x_g = student(torch.randn(3, 4)).view(3, 1, 2, 2)
    noised = x_g + 0.5 * torch.randn_like(x_g)
    f_real, f_fake = teacher(noised.flatten(1)).view_as(x_g), fake(noised.flatten(1)).view_as(x_g)
    sid_generator_loss(x_g, f_real, f_fake).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None and fake.weight.grad is None


def test_denoising_loss_reaches_only_the_fake_score():
    torch.manual_seed(0)
    student, fake = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    x_g = student(torch.randn(3, 4))
    denoising_loss(fake(x_g.detach() + 0.1), x_g, alpha_bar=0.5).backward()
    assert student.weight.grad is None and fake.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoising_loss_equals_mse_on_the_model_target(prediction_type):
    torch.manual_seed(0)
    alpha_bar = torch.tensor(0.3)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x0, noise, output = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    z_t = a * x0 + s * noise
    target = {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}[prediction_type]
    x0_pred = {"epsilon": (z_t - s * output) / a, "v_prediction": a * z_t - s * output, "sample": output}[
        prediction_type
    ]
    expected = torch.nn.functional.mse_loss(output, target)
    assert denoising_loss(x0_pred, x0, alpha_bar, prediction_type).item() == pytest.approx(expected.item(), rel=1e-5)


def test_denoising_weight_rejects_unknown_type():
    with pytest.raises(ValueError, match="epsilon"):
        denoising_weight(0.5, "flow")


def test_classifier_free_guidance_extrapolates():
    uncond, cond = torch.tensor([1.0]), torch.tensor([2.0])
    assert classifier_free_guidance(uncond, cond, 1.0).item() == 2.0
    assert classifier_free_guidance(uncond, cond, 3.0).item() == 4.0


def test_task_loss_adds_weighted_perceptual_term():
    output, target = torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4)

    def half_mean(reference, distorted):  # (N,)
        return (distorted - reference).abs().flatten(1).mean(1) / 2

    assert task_loss(output, target).item() == pytest.approx(0.25)
    assert task_loss(output, target, half_mean, 2.0).item() == pytest.approx(0.25 + 2.0 * 0.25)
    with pytest.raises(ValueError, match="perceptual"):
        task_loss(output, target, None, 1.0)


class _FixedSurrogate(torch.nn.Module):
    """Reconstruction = image * 0.5; bits = 100 per image times quality / 10."""

    def forward(self, image, quality):
        bits = torch.full((image.shape[0],), 100.0) * float(quality) / 10
        return SurrogateOutput(image * 0.5, bits)


def test_rate_perception_loss_terms_by_hand():
    original = torch.ones(2, 3, 10, 5)
    preprocessed = torch.full((2, 3, 10, 5), 0.8, requires_grad=True)
    l1 = lambda reference, distorted: (reference - distorted).abs().flatten(1).mean(1)  # noqa: E731
    loss_fn = RatePerceptionLoss(_FixedSurrogate(), l1, lambda_rate=2.0, lambda_perceptual=3.0, lambda_mse=4.0)
    out = loss_fn(original, preprocessed, quality=20.0)
    assert out.bpp.item() == pytest.approx(200.0 / 50)  # bits over the original's pixels
    assert out.mse.item() == pytest.approx(0.6**2)  # reconstruction 0.4 vs 1
    assert out.perceptual.item() == pytest.approx(0.6)
    assert out.loss.item() == pytest.approx(2.0 * 4.0 + 3.0 * 0.6 + 4.0 * 0.36)
    out.loss.backward()
    assert preprocessed.grad.abs().sum() > 0


class _QualityNoiseSurrogate(torch.nn.Module):
    """Toy codec: reconstruction error shrinks and bits grow linearly with quality (known R-D slope)."""

    quality_range = (0.0, 100.0)

    def forward(self, image, quality):
        q = torch.as_tensor(quality, dtype=torch.float32).expand(image.shape[0])
        bits = q * image.shape[-2] * image.shape[-1] / 50  # bpp = q / 50
        offset = (1 - q / 100).view(-1, 1, 1, 1) * 0.1  # MSE = (0.1 (1 - q / 100))^2
        return SurrogateOutput(image + offset, bits)


def test_rate_perception_loss_codec_slope_matches_the_toy_codec():
    """-dD/dR of the toy codec at q = 50: D = 0.01 (1 - q/100)^2, R = q / 50 -> slope = 0.01 * 2 * 0.5 / 100 * 50."""
    loss_fn = RatePerceptionLoss(
        _QualityNoiseSurrogate(), None, 3.0, 0.0, 1.0, rate_weighting="codec_slope", slope_delta=5.0
    )
    original = torch.rand(2, 3, 8, 8)
    slope = loss_fn.codec_slope(original, 50.0)
    expected = 0.01 * 2 * 0.5 / 100 * 50  # |dD/dq| / (dR/dq) = (0.01 * 2 * (1 - q/100) / 100) / (1/50)
    assert slope.shape == (2,) and torch.allclose(slope, torch.full((2,), expected), rtol=1e-4)
    preprocessed = original.clone().requires_grad_(True)
    out = loss_fn(original, preprocessed, 50.0)
    assert out.loss.item() == pytest.approx(3.0 * expected * out.bpp.item() + out.mse.item(), rel=1e-5)
    out.loss.backward()
    assert torch.isfinite(preprocessed.grad).all()
    with pytest.raises(ValueError, match="rate_weighting"):
        RatePerceptionLoss(_QualityNoiseSurrogate(), None, 1.0, 0.0, 1.0, rate_weighting="slope")


class _NonMonotoneSurrogate(_QualityNoiseSurrogate):
    """The toy codec, but the size of images whose mean is over 0.5 falls with quality (as a learned proxy's does on
    some content)."""

    fitted_quality_range = (20.0, 80.0)

    def forward(self, image, quality):
        out = super().forward(image, quality)
        falls = image.flatten(1).mean(1) > 0.5
        return SurrogateOutput(out.reconstruction, torch.where(falls, 4 * image[0, 0].numel() - out.bits, out.bits))


def test_codec_slope_does_not_trust_a_size_that_falls_with_quality():
    loss_fn = RatePerceptionLoss(
        _NonMonotoneSurrogate(), None, 1.0, 0.0, 1.0, rate_weighting="codec_slope", slope_delta=5.0
    )
    assert loss_fn.quality_range == (20.0, 80.0)  # a proxy's slope probes where it was fitted
    dark, bright = torch.full((1, 3, 8, 8), 0.2), torch.full((1, 3, 8, 8), 0.8)
    expected = 0.01 * 2 * 0.5 / 100 * 50  # the toy codec's slope at q = 50 (see the test above)
    with pytest.warns(UserWarning, match="does not rise with quality .* on 1 of 3 images"):
        slope = loss_fn.codec_slope(torch.cat([dark, bright, dark]), 50.0)
    assert torch.allclose(slope, torch.full((3,), expected), rtol=1e-4)  # not 10^4 x: the others' median
    assert torch.equal(loss_fn.codec_slope(bright, 50.0), torch.zeros(1))  # nothing to trust: no rate weight


def test_rate_perception_loss_clips_before_the_codec():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, image, quality):
            seen["max"], seen["min"] = image.max().item(), image.min().item()
            return SurrogateOutput(image, torch.zeros(image.shape[0]))

    RatePerceptionLoss(Spy(), None, 1.0, 0.0, 1.0)(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4) * 3 - 1, 50)
    assert seen == {"max": 1.0, "min": 0.0}


def test_rate_perception_loss_needs_a_distance_when_weighted():
    with pytest.raises(ValueError, match="perceptual"):
        RatePerceptionLoss(_FixedSurrogate(), None, lambda_perceptual=1.0)


def test_rate_perception_loss_with_diffjpeg_and_random_lpips():
    from rp_diffusers.metrics import LPIPS
    from rp_diffusers.surrogates import get_surrogate

    surrogate = get_surrogate("jpeg")  # its rate calibration ships with the package: missing is a failure
    torch.manual_seed(0)
    lpips = LPIPS("vgg", load_weights=False)  # random weights: the gradient path, not the values, is tested
    loss_fn = RatePerceptionLoss(surrogate, lpips, lambda_rate=0.5, lambda_perceptual=1.0, lambda_mse=1.0)
    original = torch.rand(2, 3, 32, 32)
    preprocessed = original.clone().requires_grad_(True)
    low, high = loss_fn(original, preprocessed, 20.0), loss_fn(original, preprocessed, 80.0)
    assert high.bpp > low.bpp > 0 and high.mse < low.mse
    low.loss.backward()
    assert torch.isfinite(preprocessed.grad).all() and preprocessed.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips.parameters())  # the metric network stays frozen


def test_perceptual_distance_ms_ssim_and_unknown_name():
    x = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    distance = perceptual_distance("ms_ssim")
    assert isinstance(distance, MSSSIMDistance)
    assert distance(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert distance(x, (x + 0.2 * torch.rand_like(x)).clamp(0, 1)).item() > 0.01
    with pytest.raises(ValueError, match="dists"):
        perceptual_distance("ssim")


def test_perceptual_distance_missing_weights_says_what_to_do(tmp_path):
    from rp_diffusers.metrics import MetricWeightsUnavailable

    with pytest.raises(MetricWeightsUnavailable, match="convert"):
        perceptual_distance("dists", weights_path=tmp_path / "nothing.safetensors")
