"""Butteraugli (libjxl's butteraugli_main) and VMAF / VMAF-NEG (libvmaf in ffmpeg) through their binaries."""

import json
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
from PIL import ImageFilter

from rp_diffusers.codecs import get_codec
from rp_diffusers.codecs.ffmpeg_codecs import ffmpeg_exe
from rp_diffusers.metrics import external
from rp_diffusers.metrics.external import (
    MetricToolError,
    MetricToolUnavailable,
    butteraugli_available,
    butteraugli_max,
    butteraugli_pnorm,
    butteraugli_scores,
    vmaf,
    vmaf_available,
    vmaf_neg,
    vmaf_scores,
)
from rp_diffusers.utils.image import load_image, pil_to_tensor, tensor_to_pil

needs_butteraugli = pytest.mark.skipif(
    not butteraugli_available(), reason="butteraugli_main not on PATH (apt-get install libjxl-devtools)"
)
needs_vmaf = pytest.mark.skipif(not vmaf_available(), reason="no ffmpeg with libvmaf (pip install imageio-ffmpeg)")
posix_only = pytest.mark.skipif(os.name != "posix", reason="the fake tools are POSIX shell scripts")

# A single frame has zero motion, so libvmaf's best score for identical images is 97.428 (vmaf_v0.6.1) and
# 97.425 (vmaf_v0.6.1neg) on any image of 128x96 or more (measured with libvmaf 86da14d in ffmpeg 9.0.2).
VMAF_IDENTICAL = 97.43


def scene(seed: int, height: int = 96, width: int = 128) -> torch.Tensor:
    """A seeded (1, 3, H, W) image in [0, 1]: smooth colour fields, one sharp-edged block and mild noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, height // 8), max(1, width // 8), generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    image[..., height // 4 : height // 2, width // 4 : width // 2] = 0.9
    return (image + 0.03 * torch.randn(image.shape, generator=generator)).clamp(0.0, 1.0)


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    return pil_to_tensor(get_codec("jpeg").run(tensor_to_pil(image)[0], quality=quality).reconstruction)


def fake_tool(directory, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def kodim01(kodak_dir) -> torch.Tensor:
    return pil_to_tensor(load_image(kodak_dir / "kodim01.png"))


@needs_butteraugli
def test_butteraugli_identical_images_score_zero():
    x = torch.cat([scene(0), scene(1)])
    scores = butteraugli_scores(x, x)
    assert set(scores) == {"butteraugli", "butteraugli_3norm"}
    assert scores["butteraugli"].shape == (2,) and scores["butteraugli"].dtype == torch.float64
    assert scores["butteraugli"].max() < 0.01 and scores["butteraugli_3norm"].max() < 0.01


@needs_vmaf
def test_vmaf_identical_images_score_the_zero_motion_maximum():
    x = torch.cat([scene(0), scene(1)])
    scores = vmaf_scores(x, x)
    assert set(scores) == {"vmaf", "vmaf_neg"}
    assert scores["vmaf"].shape == (2,) and scores["vmaf"].dtype == torch.float64
    assert scores["vmaf"].tolist() == pytest.approx([VMAF_IDENTICAL] * 2, abs=0.05)
    assert scores["vmaf_neg"].tolist() == pytest.approx([VMAF_IDENTICAL] * 2, abs=0.05)


@needs_butteraugli
@needs_vmaf
def test_external_metrics_rank_jpeg_q10_below_q90(kodim01):
    low, high = jpeg(kodim01, 10), jpeg(kodim01, 90)
    reference = torch.cat([kodim01, kodim01])
    butteraugli = butteraugli_scores(reference, torch.cat([low, high]))
    vmafs = vmaf_scores(reference, torch.cat([low, high]))
    # Measured on kodim01: butteraugli 8.65 / 1.71, 3-norm 4.05 / 0.70, VMAF 64.4 / 95.1, VMAF-NEG 61.6 / 94.3.
    assert butteraugli["butteraugli"][0] > butteraugli["butteraugli"][1] + 3.0  # higher = worse
    assert butteraugli["butteraugli_3norm"][0] > butteraugli["butteraugli_3norm"][1] + 1.5
    assert vmafs["vmaf"][0] < vmafs["vmaf"][1] - 15.0  # lower = worse
    assert vmafs["vmaf_neg"][0] < vmafs["vmaf_neg"][1] - 15.0


@needs_vmaf
def test_vmaf_neg_does_not_reward_sharpening(kodim01):
    sharpened = tensor_to_pil(kodim01)[0].filter(ImageFilter.UnsharpMask(radius=2, percent=300, threshold=0))
    scores = vmaf_scores(kodim01, pil_to_tensor(sharpened))
    # Plain VMAF counts the boosted detail as gain: it scores the sharpened photo 100 (its clip), ABOVE the
    # 97.43 of the untouched photo. VMAF-NEG removes that gain and measures 28.9: a large distortion.
    assert scores["vmaf"][0] > VMAF_IDENTICAL + 1.0
    assert scores["vmaf_neg"][0] <= scores["vmaf"][0]
    assert scores["vmaf_neg"][0] < 50.0


@needs_butteraugli
def test_butteraugli_scores_match_the_binary_output(kodim01, tmp_path):
    distorted = jpeg(kodim01, 10)
    tensor_to_pil(kodim01)[0].save(tmp_path / "a.png")
    tensor_to_pil(distorted)[0].save(tmp_path / "b.png")
    argv = ["butteraugli_main", "a.png", "b.png", "--pnorm", "3"]
    lines = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True).stdout
    max_line, norm_line = lines.split()[0], lines.split("3-norm:")[1]
    scores = butteraugli_scores(kodim01, distorted)
    assert float(scores["butteraugli"][0]) == pytest.approx(float(max_line), abs=1e-9)
    assert float(scores["butteraugli_3norm"][0]) == pytest.approx(float(norm_line), abs=1e-9)


@needs_vmaf
def test_vmaf_scores_match_ffmpeg_on_png_files(kodim01, tmp_path):
    # An independent path to the same numbers: ffmpeg reads PNG files here, the module feeds raw rgb24.
    distorted = jpeg(kodim01, 10)
    tensor_to_pil(kodim01)[0].save(tmp_path / "ref.png")
    tensor_to_pil(distorted)[0].save(tmp_path / "dist.png")
    yuv = "scale=out_color_matrix=bt709:out_range=tv:flags=accurate_rnd,format=yuv420p"
    models = r"version=vmaf_v0.6.1\:name=vmaf|version=vmaf_v0.6.1neg\:name=vmaf_neg"
    graph = f"[0:v]{yuv}[d];[1:v]{yuv}[r];[d][r]libvmaf=model='{models}':log_fmt=json:log_path=log.json"
    argv = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", "dist.png", "-i", "ref.png", "-lavfi", graph]
    subprocess.run([*argv, "-f", "null", "-"], cwd=tmp_path, capture_output=True, timeout=60, check=True)
    expected = json.loads((tmp_path / "log.json").read_text())["frames"][0]["metrics"]
    scores = vmaf_scores(kodim01, distorted)  # 4:4:4 there, 4:2:0 here: the models read luma only
    assert float(scores["vmaf"][0]) == pytest.approx(expected["vmaf"], abs=1e-6)
    assert float(scores["vmaf_neg"][0]) == pytest.approx(expected["vmaf_neg"], abs=1e-6)


@needs_butteraugli
@needs_vmaf
def test_external_metrics_batch_of_two_equals_one_at_a_time():
    reference = torch.cat([scene(0), scene(1)])
    distorted = torch.cat([jpeg(scene(0), 20), jpeg(scene(1), 60)])
    for scores in (butteraugli_scores, vmaf_scores):
        batch = scores(reference, distorted)
        for key, values in batch.items():
            singles = [float(scores(reference[i : i + 1], distorted[i : i + 1])[key][0]) for i in range(2)]
            assert values.shape == (2,)
            assert values.tolist() == singles
            assert singles[0] != singles[1]


@needs_butteraugli
@needs_vmaf
def test_external_metrics_single_functions_equal_the_scores():
    x, y = scene(0), jpeg(scene(0), 30)
    assert butteraugli_max(x, y).tolist() == butteraugli_scores(x, y)["butteraugli"].tolist()
    assert butteraugli_pnorm(x, y).tolist() == butteraugli_scores(x, y)["butteraugli_3norm"].tolist()
    assert vmaf(x, y).tolist() == vmaf_scores(x, y)["vmaf"].tolist()
    assert vmaf_neg(x, y).tolist() == vmaf_scores(x, y)["vmaf_neg"].tolist()


@needs_butteraugli
@needs_vmaf
def test_external_metrics_odd_size_works():
    x = scene(2, height=131, width=97)
    y = jpeg(x, 10)
    assert vmaf_scores(x, x)["vmaf"].item() == pytest.approx(VMAF_IDENTICAL, abs=0.05)
    assert vmaf_scores(x, y)["vmaf"].item() < VMAF_IDENTICAL - 5.0
    assert butteraugli_scores(x, y)["butteraugli"].item() > 1.0


@needs_butteraugli
@needs_vmaf
def test_external_metrics_refuse_images_below_the_tool_minimum():
    # butteraugli_main answers 0 for any pair under 8 px a side and libvmaf crashes under 17 px.
    with pytest.raises(ValueError, match="at least 8x8"):
        butteraugli_scores(torch.zeros(1, 3, 7, 64), torch.ones(1, 3, 7, 64))
    with pytest.raises(ValueError, match="at least 17x17"):
        vmaf_scores(torch.zeros(1, 3, 64, 16), torch.zeros(1, 3, 64, 16))
    x = scene(3, height=17, width=17)  # the smallest accepted sizes give real answers
    assert butteraugli_scores(x[..., :8, :8], (x[..., :8, :8] + 0.1).clamp(0, 1))["butteraugli"].item() > 1.0
    assert vmaf_scores(x, (x + 0.1).clamp(0, 1))["vmaf"].item() < VMAF_IDENTICAL - 5.0


def test_butteraugli_missing_binary_names_libjxl_devtools(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not butteraugli_available()
    with pytest.raises(MetricToolUnavailable, match="apt-get install libjxl-devtools"):
        butteraugli_scores(scene(0), scene(0))


def test_vmaf_ffmpeg_without_libvmaf_is_unavailable(monkeypatch):
    monkeypatch.setattr(external, "ffmpeg_exe", lambda: "/opt/ffmpeg/bin/ffmpeg")
    monkeypatch.setattr(external, "ffmpeg_listing", lambda kind: " .. scale  V->V  Scale the input video.\n")
    assert not vmaf_available()
    with pytest.raises(MetricToolUnavailable, match="no libvmaf filter"):
        vmaf_scores(scene(0), scene(0))


@posix_only
@pytest.mark.parametrize("metric", [butteraugli_scores, vmaf_scores])
def test_external_metrics_timeout_raises_a_clear_error(metric, monkeypatch, tmp_path):
    tool = fake_tool(tmp_path, "butteraugli_main", "exec sleep 30")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(external, "_vmaf_ffmpeg", lambda: tool)
    with pytest.raises(MetricToolError, match=r"took over 0\.5 s and was stopped \(pass a larger `timeout`\)"):
        metric(scene(0), scene(0), timeout=0.5)


@posix_only
@needs_butteraugli
@needs_vmaf
def test_external_metrics_remove_their_temporary_files(monkeypatch, tmp_path):
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp_root))
    x, y = scene(0), jpeg(scene(0), 30)
    assert butteraugli_scores(x, y)["butteraugli"].item() > 0 and vmaf_scores(x, y)["vmaf"].item() > 0
    assert list(temp_root.iterdir()) == []
    # ... and when the tool fails, with its stderr in the message.
    tools = tmp_path / "bin"
    tools.mkdir()
    tool = fake_tool(tools, "butteraugli_main", "echo 'cannot read dist.png' >&2; exit 3")
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(external, "_vmaf_ffmpeg", lambda: tool)
    for metric in (butteraugli_scores, vmaf_scores):
        with pytest.raises(MetricToolError, match="failed \\(exit 3\\): cannot read dist.png"):
            metric(x, y)
    assert list(temp_root.iterdir()) == []


@posix_only
def test_butteraugli_unreadable_output_raises(monkeypatch, tmp_path):
    fake_tool(tmp_path, "butteraugli_main", "echo 'Usage: butteraugli_main <reference> <distorted>'")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MetricToolError, match="could not read the distances"):
        butteraugli_scores(scene(0), scene(0))
