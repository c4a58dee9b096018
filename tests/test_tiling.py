"""Reflect padding to a multiple, crop back, and tiled processing with blended overlaps."""

import pytest
import torch
import torch.nn.functional as F

from rp_diffusers.utils.tiling import (
    blend_weights_1d,
    crop_to_size,
    pad_to_multiple,
    padded_size,
    tile_starts,
    tiled_apply,
)


def test_padded_size_rounds_up_to_multiple():
    assert padded_size(30, 64, 16) == (32, 64)
    assert padded_size(1, 1, 64) == (64, 64)
    with pytest.raises(ValueError, match="positive"):
        padded_size(10, 10, 0)


def test_pad_to_multiple_reflects_and_crop_restores():
    image = torch.rand(2, 3, 30, 50)
    padded, size = pad_to_multiple(image, 16)
    assert padded.shape == (2, 3, 32, 64) and size == (30, 50)
    assert torch.equal(crop_to_size(padded, size), image)
    # reflection (not replication): row 30 mirrors row 28, column 50 mirrors column 48
    assert torch.equal(padded[:, :, 30, :50], image[:, :, 28])
    assert torch.equal(padded[:, :, :30, 50], image[:, :, :, 48])


def test_pad_to_multiple_matches_torch_reflect_when_small_enough():
    image = torch.rand(1, 3, 20, 21)
    padded, _ = pad_to_multiple(image, 8)
    assert torch.equal(padded, F.pad(image, (0, 3, 0, 4), mode="reflect"))


def test_pad_to_multiple_tiny_images_repeat_reflection():
    image = torch.rand(1, 3, 3, 1)  # padding far larger than the image; a 1-pixel side can only be replicated
    padded, size = pad_to_multiple(image, 16)
    assert padded.shape == (1, 3, 16, 16)
    assert torch.equal(crop_to_size(padded, size), image)
    assert torch.equal(padded[0, :, 3, 0], image[0, :, 1, 0])  # first padded row reflects row 1
    assert torch.equal(padded[0, :, :3, 15], image[0, :, :, 0])


def test_pad_to_multiple_rejects_non_4d():
    with pytest.raises(ValueError, match="N, C, H, W"):
        pad_to_multiple(torch.rand(3, 8, 8), 4)


def test_tile_starts_cover_with_overlap_and_alignment():
    starts = tile_starts(1536, 512, 64, align=64)
    assert starts[0] == 0 and starts[-1] == 1536 - 512
    assert all(s % 64 == 0 for s in starts)
    assert all(b - a <= 512 - 64 for a, b in zip(starts, starts[1:]))  # neighbours share at least 64 px
    assert tile_starts(300, 512, 64) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(1000, 100, 100)


def test_blend_weights_form_partition_of_unity_with_full_weight_at_borders():
    starts = tile_starts(640, 256, 64, align=64)
    weights = blend_weights_1d(starts, 256)
    total = torch.zeros(640)
    for start, weight in zip(starts, weights):
        total[start : start + 256] += weight
        assert weight.min() > 0
    normalised = [w / total[s : s + 256] for s, w in zip(starts, weights)]
    coverage = torch.zeros(640)
    for start, weight in zip(starts, normalised):
        coverage[start : start + 256] += weight
    assert torch.allclose(coverage, torch.ones(640), atol=1e-6)
    assert weights[0][0] == 1 and weights[-1][-1] == 1  # no ramp at the image border


def test_tiled_apply_pointwise_function_equals_whole_image():
    image = torch.rand(2, 3, 192, 320)
    out = tiled_apply(lambda t: torch.sigmoid(3 * t) - t**2, image, tile_size=96, overlap=32, align=16, batch_size=3)
    assert out.shape == image.shape
    torch.testing.assert_close(out, torch.sigmoid(3 * image) - image**2, atol=1e-5, rtol=0)


def test_tiled_apply_blends_seamlessly_between_tile_dependent_outputs():
    # Each tile adds its own constant; the blend must vary smoothly (no jump larger than one ramp step).
    image = torch.zeros(1, 1, 64, 256)
    counter = iter(range(100))
    out = tiled_apply(lambda t: t + float(next(counter)), image, tile_size=64, overlap=32, align=8, batch_size=1)
    row = out[0, 0, 0]
    assert row[0] == 0 and row[-1] == float(len(tile_starts(256, 64, 32, 8)) - 1)
    assert (row[1:] - row[:-1]).abs().max() < 0.1


def test_tiled_apply_counts_progress_and_changes_channels():
    image = torch.rand(1, 3, 128, 128)
    done = []
    out = tiled_apply(lambda t: t.mean(1, keepdim=True), image, 64, 16, align=16, batch_size=2, progress=done.append)
    assert out.shape == (1, 1, 128, 128)
    assert sum(done) == len(tile_starts(128, 64, 16, 16)) ** 2
    torch.testing.assert_close(out, image.mean(1, keepdim=True), atol=1e-6, rtol=0)


def test_tiled_apply_rejects_unaligned_image():
    with pytest.raises(ValueError, match="pad_to_multiple"):
        tiled_apply(lambda t: t, torch.rand(1, 3, 30, 32), 16, 4, align=8)
