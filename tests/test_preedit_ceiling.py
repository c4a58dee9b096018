"""The pre-editing ceiling benchmark's optimiser and the SSIMULACRA2 training loss it shares with finetune_rp."""

from pathlib import Path

import pytest
import torch

from rp_diffusers.losses import RatePerceptionLoss, perceptual_distance
from rp_diffusers.surrogates import get_surrogate
from rp_diffusers.utils.testing import load_script

REPO = Path(__file__).resolve().parents[1]


def _benchmark():
    module = load_script(REPO / "benchmarks" / "preedit_ceiling.py", "preedit_ceiling")
    return module


def test_ssimulacra2_distance_is_zero_for_identical_images_and_has_a_gradient():
    distance = perceptual_distance("ssimulacra2")
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(distance(x, x), torch.zeros(2), atol=1e-6)
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1).requires_grad_(True)
    value = distance(x, y)
    assert bool((value > 0.01).all())
    value.sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_pre_edit_lowers_the_rate_perception_objective_through_diffjpeg():
    module = _benchmark()
    loss_fn = RatePerceptionLoss(
        get_surrogate("jpeg"),
        perceptual_distance("ssimulacra2"),
        lambda_rate=1.0,
        lambda_perceptual=1.0,
        lambda_mse=1.0,
        rate_weighting="codec_slope",
    )
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode="bilinear")
    original = (smooth + 0.08 * torch.randn(1, 3, 64, 64)).clamp(0, 1)  # texture that costs bits
    edited, trace = module.pre_edit(loss_fn, original, 30, steps=25, lr=2e-3)
    assert edited.shape == original.shape and float(edited.min()) >= 0 and float(edited.max()) <= 1
    assert trace[-1] < trace[0]  # the objective falls (the optimiser moves downhill on the exact forward pass)
    assert float((edited - original).abs().max()) > 1 / 255  # it actually edits pixels


def test_weighted_sums_of_distances_parse_and_add_up():
    from rp_diffusers.losses import parse_perceptual

    assert parse_perceptual("ssimulacra2+3*vif") == [(1.0, "ssimulacra2"), (3.0, "vif")]
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    y = (x * 0.9).clamp(0, 1)
    total = perceptual_distance("ssimulacra2+3*vif")(x, y)
    parts = perceptual_distance("ssimulacra2")(x, y) + 3 * perceptual_distance("vif")(x, y)
    torch.testing.assert_close(total, parts)
    for bad in ("ssimulacra2+x*vif", "psnr", "ssimulacra2+-1*vif"):
        with pytest.raises(ValueError, match="unknown perceptual loss"):
            parse_perceptual(bad)
