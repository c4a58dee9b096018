"""benchmarks/decode_one_step.py: its patch statistics, and that every method sees the same noised input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rp_diffusers.utils.testing import load_script

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_one_step.py"


@pytest.fixture(scope="module")
def bench():
    module = load_script(BENCHMARK, "rp_benchmark_decode_one_step")
    return module


def test_patch_statistics_tell_blur_from_the_source(bench):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    ratio = bench.laplacian_energy(blurred) / bench.laplacian_energy(images)
    assert (ratio < 0.5).all()
    assert torch.allclose(bench.laplacian_energy(images) / bench.laplacian_energy(images), torch.ones(2))
    source = bench.patches(images)
    assert source.shape == (2 * 8 * 8, 3 * 64)
    assert bench.sliced_wasserstein(source, source) == 0.0
    assert bench.sliced_wasserstein(bench.patches(blurred), source) > 0.01


def test_a_student_equal_to_its_teacher_matches_the_posterior_mean_row(bench, tmp_path, tiny_edm_teacher):
    """A student that IS the teacher gives the posterior-mean row exactly: the same y for every method."""
    import shutil

    teacher = tiny_edm_teacher
    shutil.copytree(teacher / "unet", tmp_path / "copy")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / f"p{index}.png")
    output = tmp_path / "out.json"
    args = bench.parse_args(
        ["--teacher", str(teacher), "--student", f"same={tmp_path / 'copy'}", "--images", str(photos),
         "--crop", "32", "--sigmas", "0.1", "--threads", "1", "--figure_image", "p0", "--output", str(output)]
    )  # fmt: skip
    bench.main(args)
    report = json.loads(output.read_text())
    rows = report["levels"][0]["methods"]
    mean, same = rows["posterior mean (1 call)"], rows["student same (1 call)"]
    for key in ("psnr", "ssimulacra2", "psnr_to_teacher_ode", "hf_energy_ratio", "patch_swd_x100"):
        assert same[key] == pytest.approx(mean[key], abs=1e-9), key
    assert report["crops"] == ["p0", "p1"]
    assert output.with_name("out_crops.png").exists()
    with pytest.raises(ValueError, match="Kodak"):
        bench.parse_args(["--images", "../shared/data/kodak"])
