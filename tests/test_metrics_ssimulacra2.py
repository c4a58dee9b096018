"""SSIMULACRA2: our batched torch implementation against the independent NumPy port on PyPI (``ssimulacra2``),
on real photographs under real codecs, plus its gradient and input checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from rp_diffusers.codecs import get_codec
from rp_diffusers.metrics import compute_metrics, ssimulacra2
from rp_diffusers.utils import pil_to_tensor

reference_port = pytest.importorskip("ssimulacra2.ssimulacra2", reason="the PyPI package ssimulacra2 (dev extra)")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (codec, quality) pairs spanning very low to high quality; the port is the oracle, our float64 path its twin.
CASES = [("jpeg", 10), ("jpeg", 50), ("jpeg", 90), ("webp", 30), ("avif", 50)]


def _port_score(reference: Image.Image, distorted: Image.Image, tmp_path) -> float:
    reference.save(tmp_path / "reference.png")
    distorted.save(tmp_path / "distorted.png")
    return float(reference_port.compute_ssimulacra2(tmp_path / "reference.png", tmp_path / "distorted.png"))


@pytest.mark.slow
def test_ssimulacra2_matches_reference_port_on_kodak(kodak_dir, tmp_path):
    images = sorted(kodak_dir.glob("*.png"))[:3]
    ours32, ours64, port = [], [], []
    for path in images:
        original = Image.open(path).convert("RGB")
        for codec, quality in CASES:
            decoded = get_codec(codec).run(original, quality=quality).reconstruction
            x, y = pil_to_tensor(original), pil_to_tensor(decoded)
            ours32.append(float(ssimulacra2(x, y)[0]))
            ours64.append(float(ssimulacra2(x.double(), y.double())[0]))
            port.append(_port_score(original, decoded, tmp_path))
    ours32, ours64, port = map(np.array, (ours32, ours64, port))
    assert port.min() < 20 and port.max() > 80  # the cases really span the scale
    # The bar is mean |diff| <= 0.5 and max <= 2 points; the same algorithm in float64 agrees to 1e-6.
    np.testing.assert_allclose(ours64, port, rtol=0, atol=1e-6)
    assert np.abs(ours32 - port).mean() <= 0.05 and np.abs(ours32 - port).max() <= 0.2


def test_ssimulacra2_matches_reference_port_on_odd_sizes(tmp_path):
    """Odd widths and heights exercise the partial 2x2 blocks and the padding of every scale; 40 px stops at
    three scales, 300 px reaches all six."""
    generator = np.random.default_rng(0)
    for height, width in ((97, 131), (40, 300), (300, 9)):
        base = generator.random((height // 4 + 1, width // 4 + 1, 3))
        smooth = np.kron(base, np.ones((4, 4, 1)))[:height, :width]
        original = Image.fromarray((255 * smooth).astype(np.uint8))
        distorted = Image.fromarray(
            np.clip(np.asarray(original) + generator.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        )
        ours = float(ssimulacra2(pil_to_tensor(original).double(), pil_to_tensor(distorted).double())[0])
        assert ours == pytest.approx(_port_score(original, distorted, tmp_path), abs=1e-6)


def test_ssimulacra2_identical_images_score_100_and_worse_distortion_scores_lower():
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssimulacra2(x, x), torch.full((2,), 100.0), rtol=0, atol=0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    scores = [float(ssimulacra2(x, (x + s * noise).clamp(0, 1))[0]) for s in (0.01, 0.03, 0.1)]
    assert scores[0] > scores[1] > scores[2]


def test_ssimulacra2_batch_equals_one_image_at_a_time():
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 48, 56, generator=generator)
    y = (x + 0.05 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    for dtype, atol in ((torch.float64, 1e-9), (torch.float32, 2e-3)):  # float32 sums depend on the batch layout
        batch = ssimulacra2(x, y, dtype=dtype)
        single = torch.cat([ssimulacra2(x[i : i + 1], y[i : i + 1], dtype=dtype) for i in range(3)])
        torch.testing.assert_close(batch, single, rtol=0, atol=atol)
        assert batch.shape == (3,) and batch.dtype == dtype


def test_ssimulacra2_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 16, 16, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    y = (x + 0.05 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: ssimulacra2(x, d, quantize=False), (y,), eps=1e-6, atol=1e-5)


def test_ssimulacra2_gradient_is_finite_for_identical_images():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = x.clone().requires_grad_(True)
    ssimulacra2(x, y, quantize=False).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_ssimulacra2_as_a_loss_improves_a_blurred_image():
    """A few gradient steps on the distorted image raise its score: the gradient points the right way."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    y = blurred.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([y], lr=0.01)
    start = float(ssimulacra2(x, y.detach(), quantize=False))
    for _ in range(20):
        optimizer.zero_grad()
        (-ssimulacra2(x, y, quantize=False)).sum().backward()
        optimizer.step()
    assert float(ssimulacra2(x, y.detach(), quantize=False)) > start + 5


def test_ssimulacra2_rejects_tiny_or_mismatched_images():
    with pytest.raises(ValueError, match="at least 8x8"):
        ssimulacra2(torch.rand(1, 3, 7, 32), torch.rand(1, 3, 7, 32))
    with pytest.raises(ValueError, match="differ in shape"):
        ssimulacra2(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="3-channel"):
        ssimulacra2(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))


def test_compute_metrics_offers_ssimulacra2():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    y = (x + 0.02).clamp(0, 1)
    values = compute_metrics(x, y, metrics=("ssimulacra2",))
    np.testing.assert_allclose(values["ssimulacra2"], ssimulacra2(x, y).tolist(), rtol=1e-6)


def test_ssimulacra2_nan_input_gives_nan_not_100():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    y = x.clone()
    y[0, 0, 5, 5] = float("nan")
    assert torch.isnan(ssimulacra2(x, y, quantize=False)).all()
