"""Image input: every kind of image becomes 8-bit RGB, bad input gives a clear ImageLoadError."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rp_diffusers.utils import ImageLoadError, load_image, pil_to_tensor, tensor_to_pil, to_pil_list


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_load_image_rgba_composited_on_white():
    rgba = Image.new("RGBA", (5, 3), (255, 0, 0, 0))  # fully transparent red
    out = load_image(rgba)
    assert out.mode == "RGB" and out.size == (5, 3)
    assert np.asarray(out)[0, 0].tolist() == [255, 255, 255]


def test_load_image_half_alpha_blends():
    out = load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 128)))
    assert abs(int(np.asarray(out)[0, 0, 0]) - 127) <= 1


def test_load_image_grayscale_replicated():
    out = load_image(Image.new("L", (4, 4), 77))
    assert np.asarray(out)[1, 1].tolist() == [77, 77, 77]


def test_load_image_16bit_png_scaled_to_8bit(tmp_path):
    array = np.full((6, 7), 65535, dtype=np.uint16)
    array[0, 0] = 257 * 10
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    out = np.asarray(load_image(path))
    assert out.dtype == np.uint8 and out.shape == (6, 7, 3)
    assert out[1, 1, 0] == 255 and out[0, 0, 0] == 10


def test_load_image_palette_and_cmyk():
    palette = Image.new("P", (3, 3), 5)
    assert load_image(palette).mode == "RGB"
    cmyk = Image.new("CMYK", (3, 3), (0, 0, 0, 0))
    assert np.asarray(load_image(cmyk))[0, 0].tolist() == [255, 255, 255]


def test_load_image_applies_exif_rotation():
    image = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert load_image(buffer.getvalue()).size == (4, 8)


def test_load_image_truncated_file_raises(tmp_path):
    rng = np.random.default_rng(0)
    data = _png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(path)


def test_load_image_garbage_bytes_raises():
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"this is not an image at all")


def test_load_image_missing_file_raises(tmp_path):
    with pytest.raises(ImageLoadError, match="no such image file"):
        load_image(tmp_path / "nothing.png")


def test_load_image_pixel_limit_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(path, max_pixels=10_000)
    assert load_image(path, max_pixels=None).size == (300, 200)


def test_load_image_wrong_type_raises():
    with pytest.raises(ImageLoadError, match="cannot read an image from int"):
        load_image(3)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((3, 5), np.uint8),
        np.zeros((3, 5, 1), np.uint8),
        np.zeros((3, 5, 3), np.float32),
        np.full((3, 5, 4), 65535, np.uint16),
    ],
)
def test_load_image_numpy_shapes(array):
    assert load_image(array).size == (5, 3)


def test_load_image_numpy_rejects_bad_values():
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2, 3), 2.0, np.float32))
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((2, 2, 5), np.uint8))


def test_tensor_round_trip_exact_for_8bit():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    tensor = pil_to_tensor(image)
    assert tensor.shape == (1, 3, 9, 11) and tensor.dtype == torch.float32
    assert np.array_equal(np.asarray(tensor_to_pil(tensor)[0]), np.asarray(image))


def test_to_pil_list_mixed_sizes():
    images = to_pil_list([Image.new("RGB", (3, 4)), np.zeros((5, 6, 3), np.uint8), torch.zeros(3, 2, 2)])
    assert [im.size for im in images] == [(3, 4), (6, 5), (2, 2)]


def test_to_pil_list_empty_raises():
    with pytest.raises(ImageLoadError, match="empty"):
        to_pil_list([])
