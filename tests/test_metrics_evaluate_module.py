"""The metric set as a Hugging Face ``evaluate`` module: loads offline from the package, gives measure()'s values."""

import pytest
from PIL import Image

from rp_diffusers.codecs import get_codec
from rp_diffusers.evaluation import EXAMPLES_DIR, list_images, measure
from rp_diffusers.metrics import EVALUATE_MODULE

evaluate = pytest.importorskip("evaluate", reason="Hugging Face evaluate (dev extra)")


@pytest.fixture(scope="module")
def pairs():
    originals = [Image.open(p).convert("RGB").crop((0, 0, 200, 176)) for p in list_images(EXAMPLES_DIR)[:2]]
    return originals, [get_codec("jpeg").run(image, quality=25).reconstruction for image in originals]


def test_evaluate_module_loads_offline_and_matches_measure(pairs):
    originals, decoded = pairs
    module = evaluate.load(str(EVALUATE_MODULE))
    result = module.compute(predictions=decoded, references=originals, metrics="psnr,ms_ssim,ssimulacra2")
    expected = [measure(o, d, ["psnr", "ms_ssim", "ssimulacra2"]) for o, d in zip(originals, decoded)]
    assert result["num_images"] == 2
    for name in ("psnr", "ms_ssim", "ssimulacra2"):
        assert result[name] == pytest.approx(sum(e[name] for e in expected) / 2, rel=1e-6)


def test_evaluate_module_add_batch_equals_one_compute(pairs):
    originals, decoded = pairs
    module = evaluate.load(str(EVALUATE_MODULE))
    for original, image in zip(originals, decoded):
        module.add_batch(predictions=[image], references=[original])
    batched = module.compute(metrics="psnr")
    assert batched["psnr"] == pytest.approx(
        evaluate.load(str(EVALUATE_MODULE)).compute(predictions=decoded, references=originals, metrics="psnr")["psnr"]
    )


def test_evaluate_module_refuses_mismatched_sizes(pairs):
    originals, decoded = pairs
    with pytest.raises(ValueError, match="sizes must match"):
        evaluate.load(str(EVALUATE_MODULE)).compute(
            predictions=[decoded[0].crop((0, 0, 100, 100))], references=[originals[0]], metrics="psnr"
        )
