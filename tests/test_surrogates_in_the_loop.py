"""CodecInTheLoop: the real codec's decode and size forward, the surrogate's gradient backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rp_diffusers.codecs import get_codec
from rp_diffusers.evaluation import EXAMPLES_DIR
from rp_diffusers.losses import RatePerceptionLoss
from rp_diffusers.surrogates import CodecInTheLoop, DiffJPEG, get_surrogate
from rp_diffusers.utils.image import load_image, pil_to_tensor, tensor_to_pil

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def crops():
    """Two 48 x 64 crops of a bundled photograph, float in [0, 1] on 8-bit values."""
    image = pil_to_tensor(load_image(EXAMPLES_DIR / "chalet.png"))[0]
    return torch.stack([image[:, :48, :64], image[:, 40:88, 30:94]]).contiguous()


def test_forward_is_the_real_codec_exactly(crops):
    loop = CodecInTheLoop(get_surrogate("webp"))
    out = loop(crops.clone().requires_grad_(True), quality=60.4)  # rounded to 60 for the real codec
    codec = get_codec("webp", **loop.surrogate.metadata["training"]["codec_settings"])
    for i, pil in enumerate(tensor_to_pil(crops)):
        real = codec.run(pil, 60)
        assert float(out.bits[i].detach()) == 8 * len(real.data)
        np.testing.assert_array_equal(
            (out.reconstruction[i].detach() * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(),
            np.asarray(real.reconstruction),
        )


def test_gradient_is_the_surrogates(crops):
    surrogate = get_surrogate("hevc")
    loop = CodecInTheLoop(surrogate)
    weight = torch.rand_like(crops)
    x_loop, x_surr = crops.clone().requires_grad_(True), crops.clone().requires_grad_(True)
    out, approx = loop(x_loop, 23), surrogate(x_surr, torch.full((2,), 23.0))
    (out.reconstruction * weight).sum().backward()
    (approx.reconstruction * weight).sum().backward()
    torch.testing.assert_close(x_loop.grad, x_surr.grad)

    # the size: the surrogate's gradient of log bits, times the real size
    x_loop.grad = x_surr.grad = None
    out, approx = loop(x_loop, 23), surrogate(x_surr, torch.full((2,), 23.0))
    out.bits[1].backward()
    approx.bits[1].backward()
    ratio = float(out.bits[1].detach() / approx.bits[1].detach())
    assert ratio != pytest.approx(1.0, abs=1e-3)  # the proxy is off, so the scaling is exercised
    scale = float(x_surr.grad.abs().max()) * ratio  # float32 sums over hundreds of blocks
    torch.testing.assert_close(x_loop.grad, x_surr.grad * ratio, rtol=1e-4, atol=1e-6 * scale)
    assert float(x_loop.grad[0].abs().sum()) == 0.0  # image 0's size does not depend on image 1


def test_without_a_gradient_only_the_real_codec_runs(crops, monkeypatch):
    loop = CodecInTheLoop(DiffJPEG())
    monkeypatch.setattr(loop.surrogate, "forward", lambda *a, **k: pytest.fail("the surrogate ran"))
    with torch.no_grad():
        out = loop(crops.clone().requires_grad_(True), 50)
    plain = loop(crops, 50)  # no requires_grad either
    torch.testing.assert_close(out.reconstruction, plain.reconstruction)
    assert out.bits.tolist() == [8 * len(get_codec("jpeg").run(p, 50).data) for p in tensor_to_pil(crops)]


def test_exact_surrogate_agrees_with_its_loop(crops):
    """DiffJPEG decodes bit-exactly like libjpeg-turbo on 8-bit input at integer qualities, so there the loop changes
    its decode by nothing and its size by DiffJPEG's estimate's error (within 1 % here)."""
    x = crops.clone().requires_grad_(True)
    loop, exact = CodecInTheLoop(DiffJPEG()), DiffJPEG()
    looped, alone = loop(x, 40), exact(x, 40)
    torch.testing.assert_close(looped.reconstruction, alone.reconstruction, atol=1e-6, rtol=0)
    torch.testing.assert_close(looped.bits.detach(), alone.bits.detach(), rtol=0.01, atol=0)


def test_loop_has_a_fitted_quality_range_only_where_its_surrogate_has_one():
    """Code that picks training qualities (proxy_agreement.training_range, RatePerceptionLoss) must see the same range
    through the loop as through the surrogate alone."""
    assert not hasattr(DiffJPEG(), "fitted_quality_range")
    assert not hasattr(CodecInTheLoop(DiffJPEG()), "fitted_quality_range")
    proxy = get_surrogate("hevc")
    assert CodecInTheLoop(proxy).fitted_quality_range == tuple(proxy.fitted_quality_range)
    loss_alone = RatePerceptionLoss(DiffJPEG(), None, lambda_perceptual=0.0, lambda_mse=1.0)
    loss_loop = RatePerceptionLoss(CodecInTheLoop(DiffJPEG()), None, lambda_perceptual=0.0, lambda_mse=1.0)
    assert loss_alone.quality_range == loss_loop.quality_range


def test_codec_slope_uses_real_sizes():
    """Through the loop, the codec-slope weight comes from real files (no learned size in it)."""
    image = pil_to_tensor(load_image(EXAMPLES_DIR / "chalet.png"))[0]
    crops = torch.stack([image[:, :128, :128], image[:, 64:192, 100:228]]).contiguous()
    loop = CodecInTheLoop(get_surrogate("webp"))
    loss = RatePerceptionLoss(loop, None, lambda_rate=1.0, lambda_perceptual=0.0, lambda_mse=1.0,
                              rate_weighting="codec_slope")  # fmt: skip
    slope = loss.codec_slope(crops, 60.0)
    for i, pil in enumerate(tensor_to_pil(crops)):
        lo, hi = loop.codec.run(pil, 55), loop.codec.run(pil, 65)
        assert len(hi.data) > 1.05 * len(lo.data)  # a trusted probe: no fallback to the batch's median
        d = [float((pil_to_tensor(r.reconstruction)[0] - crops[i]).square().mean()) for r in (lo, hi)]
        expected = (d[0] - d[1]) / ((len(hi.data) - len(lo.data)) * 8 / (128 * 128))
        assert expected > 0 and float(slope[i]) == pytest.approx(expected, rel=1e-3)
    x = crops.clone().requires_grad_(True)
    terms = loss(crops, x, 60.0)
    terms.loss.backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_bad_arguments_get_clear_errors(crops):
    with pytest.raises(ValueError, match="not the one the surrogate imitates"):
        CodecInTheLoop(get_surrogate("webp"), codec=get_codec("jpeg"))
    with pytest.raises(TypeError, match="CodecSurrogate"):
        CodecInTheLoop(get_codec("jpeg"))
    with pytest.raises(ValueError, match="quality must lie in"):
        CodecInTheLoop(DiffJPEG())(crops, 101)
