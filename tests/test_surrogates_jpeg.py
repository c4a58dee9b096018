"""DiffJPEG against its oracle, Pillow/libjpeg-turbo with the project's ``jpeg`` settings (4:2:0, baseline)."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rp_diffusers.surrogates import DiffJPEG, JPEGRateModel, available_surrogates, get_surrogate
from rp_diffusers.surrogates import jpeg_tables as tables
from rp_diffusers.surrogates.jpeg_rate import DEFAULT_CALIBRATION, coding_order, entropy_units
from rp_diffusers.surrogates.jpeg_tables import huffman_lookup
from rp_diffusers.utils.image import load_image, pil_to_tensor


def pillow_jpeg(array: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """The real codec: Pillow with the project's settings -> (file bytes, decoded uint8 (H, W, 3))."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    data = buffer.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def crops(folder: Path, shapes: list[tuple[int, int]], count: int) -> list[np.ndarray]:
    """Deterministic crops of the first ``count`` photographs of ``folder``, one per shape."""
    rng = np.random.default_rng(0)
    out = []
    for path in sorted(folder.iterdir())[:count]:
        array = np.asarray(load_image(path))
        for h, w in shapes:
            y, x = rng.integers(0, array.shape[0] - h + 1), rng.integers(0, array.shape[1] - w + 1)
            out.append(np.ascontiguousarray(array[y : y + h, x : x + w]))
    return out


@pytest.fixture(scope="module")
def jpeg() -> DiffJPEG:
    torch.manual_seed(0)
    return get_surrogate("jpeg")


def test_registry_builds_diffjpeg_and_rejects_unknown_names():
    assert "jpeg" in available_surrogates()
    assert isinstance(get_surrogate("jpeg", rounding="cubic"), DiffJPEG)
    with pytest.raises(ValueError, match="unknown surrogate"):
        get_surrogate("no-such-codec")


@pytest.mark.parametrize("quality", [1, 10, 15, 24, 49, 50, 51, 75, 85, 98, 100])
def test_qtables_equal_the_tables_pillow_writes(quality):
    data, _ = pillow_jpeg(np.zeros((8, 8, 3), np.uint8), quality)
    written = Image.open(io.BytesIO(data)).quantization
    ours = tables.qtables(torch.tensor([float(quality)]))[0]
    assert ours.long().tolist() == [list(written[0]), list(written[1])]
    assert tables.scaled_qtable(tables.STD_LUMA_QTABLE, quality) == list(written[0])


def test_huffman_tables_and_header_size_equal_what_pillow_writes():
    data, _ = pillow_jpeg(np.zeros((1, 1, 3), np.uint8), 50)
    segments, i = [], 2
    while data[i + 1] != 0xDA:  # up to the start of scan
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        segments.append((data[i + 1], data[i + 4 : i + 2 + length]))
        i += 2 + length
    header = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big") + 2  # + SOS + EOI
    dht = {}
    for marker, payload in segments:
        j = 0
        while marker == 0xC4 and j < len(payload):
            counts = tuple(payload[j + 1 : j + 17])
            dht[payload[j]] = (counts, tuple(payload[j + 17 : j + 17 + sum(counts)]))
            j += 17 + sum(counts)
    assert dht == {
        0x00: tables.DC_LUMA_HUFFMAN,
        0x10: tables.AC_LUMA_HUFFMAN,
        0x01: tables.DC_CHROMA_HUFFMAN,
        0x11: tables.AC_CHROMA_HUFFMAN,
    }
    assert header == tables.HEADER_BYTES


@pytest.mark.parametrize("quality", [15, 50, 85])
def test_diffjpeg_reconstruction_equals_pillow_decode(jpeg, val_dir, kodak_dir, quality):
    shapes = [(1, 1), (7, 13), (33, 17), (40, 72)]
    for array in crops(val_dir, shapes, 2) + crops(kodak_dir, [(48, 80)], 1):
        _, reference = pillow_jpeg(array, quality)
        with torch.no_grad():
            out = jpeg(to_tensor(array), quality).reconstruction
        ours = (out[0] * 255).round().byte().permute(1, 2, 0).numpy()
        assert psnr(ours, reference) >= 45.0
        assert np.array_equal(ours, reference), f"not bit-exact at {array.shape}, q={quality}"


def test_diffjpeg_exact_bits_equal_the_file_size(jpeg, val_dir):
    for array in crops(val_dir, [(1, 1), (9, 24), (33, 17), (57, 90)], 2):
        for quality in (1, 15, 50, 85, 100):
            data, _ = pillow_jpeg(array, quality)
            assert jpeg.exact_bits(to_tensor(array), quality).item() == 8 * len(data)


def test_rate_model_value_is_the_exact_huffman_count(jpeg, val_dir):
    lut = huffman_lookup()
    for array in crops(val_dir, [(33, 17), (64, 72)], 2):
        for quality in (5, 50, 95):
            a = jpeg.analyze(to_tensor(array), torch.tensor([float(quality)]))
            luma, chroma = coding_order(a.luma_exact, a.chroma_exact, a.size)
            count = entropy_units(luma, 0, lut)[1].sum() + entropy_units(chroma, 1, lut)[1].sum()
            soft = jpeg.rate_model.entropy_bits(a.luma_scaled, a.chroma_scaled, a.size, a.luma_exact, a.chroma_exact)
            assert soft.item() == pytest.approx(count.item(), abs=1e-2)


def test_diffjpeg_bits_are_close_to_the_real_file_size(jpeg, val_dir):
    errors = []
    for path in sorted(val_dir.iterdir())[:4]:
        image = load_image(path)
        for quality in (15, 50, 85):
            data, _ = pillow_jpeg(np.asarray(image), quality)
            with torch.no_grad():
                bits = jpeg(pil_to_tensor(image), quality).bits.item()
            errors.append(abs(bits / (8 * len(data)) - 1))
    assert np.median(errors) < 0.01, errors
    assert max(errors) < 0.04, errors


def test_diffjpeg_gradients_reach_image_and_quality(jpeg):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 24, 40, requires_grad=True)
    quality = torch.tensor([20.0, 70.0], requires_grad=True)
    out = jpeg(image, quality)
    (out.bits.sum() / 1e4 + out.reconstruction.square().mean()).backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert torch.isfinite(quality.grad).all() and (quality.grad != 0).all()


def test_diffjpeg_rate_gradient_lowers_the_real_file_size(jpeg, val_dir):
    array = crops(val_dir, [(64, 64)], 1)[0]
    image = to_tensor(array).requires_grad_(True)
    jpeg(image, 50).bits.sum().backward()
    stepped = (image - 4 / 255 * image.grad.sign()).clamp(0, 1).detach()
    assert jpeg.exact_bits(stepped, 50).item() < jpeg.exact_bits(image.detach(), 50).item()


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 17)])
def test_diffjpeg_odd_shapes_are_kept(jpeg, shape):
    image = torch.rand(1, 3, *shape)
    out = jpeg(image, 50)
    assert out.reconstruction.shape == image.shape and out.bits.shape == (1,)
    assert out.reconstruction.min() >= 0 and out.reconstruction.max() <= 1
    assert out.bits.item() > 8 * tables.HEADER_BYTES


def test_diffjpeg_bfloat16_in_bfloat16_out(jpeg):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 20, 28).to(torch.bfloat16).requires_grad_(True)
    out = jpeg(image, 50)
    assert out.reconstruction.dtype == torch.bfloat16
    reference = jpeg(image.detach().float(), 50)
    assert torch.allclose(out.reconstruction.float(), reference.reconstruction, atol=4e-3)
    assert torch.allclose(out.bits, reference.bits)
    out.reconstruction.float().sum().backward()
    assert image.grad.dtype == torch.bfloat16 and torch.isfinite(image.grad.float()).all()


def test_diffjpeg_batch_with_per_image_quality_equals_single_runs(jpeg):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 18, 30)
    batch = jpeg(image, torch.tensor([15.0, 85.0]))
    for i, quality in enumerate((15, 85)):
        single = jpeg(image[i : i + 1], quality)
        assert torch.equal(batch.reconstruction[i], single.reconstruction[0])
        assert torch.allclose(batch.bits[i], single.bits[0], rtol=1e-5)
    assert batch.bits[0] < batch.bits[1]


@pytest.mark.parametrize("quality", [0, 100.5, -3, float("nan"), torch.tensor([50.0, 50.0, 50.0])])
def test_diffjpeg_rejects_bad_quality(jpeg, quality):
    with pytest.raises(ValueError, match="quality"):
        jpeg(torch.rand(2, 3, 8, 8), quality)


def test_diffjpeg_soft_roundings_approximate_the_real_decode(val_dir):
    array = crops(val_dir, [(32, 48)], 1)[0]
    _, reference = pillow_jpeg(array, 50)
    for rounding in ("soft", "cubic"):
        image = to_tensor(array).requires_grad_(True)
        out = get_surrogate("jpeg", rounding=rounding)(image, 50)
        out.reconstruction.sum().backward()
        ours = (out.reconstruction[0].detach() * 255).round().byte().permute(1, 2, 0).numpy()
        assert 30.0 < psnr(ours, reference) < math.inf
        assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_diffjpeg_exact_rate_mode_returns_the_file_size_with_gradients(val_dir):
    array = crops(val_dir, [(33, 41)], 1)[0]
    data, _ = pillow_jpeg(array, 85)
    image = to_tensor(array).requires_grad_(True)
    bits = get_surrogate("jpeg", rate="exact")(image, 85).bits
    assert bits.item() == 8 * len(data)
    bits.sum().backward()
    assert image.grad.abs().sum() > 0


def test_rate_calibration_is_packaged_and_missing_files_say_what_to_do(tmp_path):
    model = JPEGRateModel.from_json()
    assert DEFAULT_CALIBRATION.is_file()
    assert model.knots[0] <= 1 and model.knots[-1] >= 100
    with pytest.raises(FileNotFoundError, match="calibrate_jpeg_rate.py"):
        JPEGRateModel.from_json(tmp_path / "missing.json")
