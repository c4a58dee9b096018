"""Our differentiable VIF against libvmaf's own VIF feature (imageio-ffmpeg's ffmpeg), and as a loss."""

import io
import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from rp_diffusers.evaluation import EXAMPLES_DIR
from rp_diffusers.metrics.vif import vif, vif_per_scale


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _libvmaf_vif(reference: Image.Image, distorted: Image.Image, tmp_path) -> list[float]:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    from rp_diffusers.metrics.external import _TO_YUV, vmaf_available

    if not vmaf_available():
        pytest.fail("imageio-ffmpeg's ffmpeg has no libvmaf (it ships with the package's dependencies)")
    reference.save(tmp_path / "r.png")
    distorted.save(tmp_path / "d.png")
    graph = f"[0:v]{_TO_YUV}[d];[1:v]{_TO_YUV}[r];[d][r]libvmaf=log_fmt=json:log_path=v.json:feature=name=float_vif"
    argv = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-v",
        "error",
        "-i",
        "d.png",
        "-i",
        "r.png",
        "-lavfi",
        graph,
        "-f",
        "null",
        "-",
    ]
    subprocess.run(argv, cwd=tmp_path, check=True, timeout=60)
    metrics = json.loads((tmp_path / "v.json").read_text())["frames"][0]["metrics"]
    return [metrics[f"vif_scale{i}"] for i in range(4)]


@pytest.mark.parametrize("name", ["chalet.png", "canal_urban.png"])
@pytest.mark.parametrize("quality", [10, 50, 85])
def test_vif_matches_libvmaf_per_scale(tmp_path, name, quality):
    reference = Image.open(EXAMPLES_DIR / name).convert("RGB")
    buffer = io.BytesIO()
    reference.save(buffer, "JPEG", quality=quality)
    distorted = Image.open(buffer).convert("RGB")
    expected = _libvmaf_vif(reference, distorted, tmp_path)
    ours = vif_per_scale(_tensor(reference), _tensor(distorted), enhancement_gain_limit=None)[0].tolist()
    # measured: within 0.011 on Kodak and the bundled photos (libvmaf reads 8-bit luma; ours is unrounded)
    assert max(abs(a - b) for a, b in zip(ours, expected)) < 0.015, (ours, expected)


def test_vif_is_one_for_identical_images_caps_enhancement_and_has_a_gradient():
    reference = Image.open(EXAMPLES_DIR / "chalet.png").convert("RGB")
    sharpened = reference.filter(ImageFilter.UnsharpMask(radius=2, percent=200, threshold=0))
    x, s = _tensor(reference), _tensor(sharpened)
    assert float(vif(x, x)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(vif(x, s, enhancement_gain_limit=None)[0]) > float(vif(x, s)[0])  # NEG's cap bites on sharpening
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1).requires_grad_(True)
    value = vif(x, blurred)
    assert float(value[0]) < 0.9
    value.sum().backward()
    assert torch.isfinite(blurred.grad).all() and blurred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 24x24"):
        vif(x[..., :20, :20], x[..., :20, :20])
