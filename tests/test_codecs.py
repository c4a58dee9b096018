"""Tests of the real codecs: round trips, rates, ordinary decoders, odd sizes, errors, registry, JPEG oracle."""

import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rp_diffusers.codecs import (
    Codec,
    CodecError,
    CodecResult,
    PillowCodec,
    UnknownCodecError,
    all_codecs,
    available_codecs,
    get_codec,
    register_codec,
    unregister_codec,
)
from rp_diffusers.codecs.ffmpeg_codecs import ffmpeg_exe
from rp_diffusers.utils import load_image

CODECS = [
    name for name in available_codecs() if name != "corrdiff"
]  # CorrDiff (a learned codec, seconds per image) is tested in test_corrdiff.py
FFMPEG_CODECS = [name for name in ("hevc", "vvc") if name in CODECS]
PILLOW_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "jxl": "JXL", "heic": "HEIF"}
# Highest quality that every codec can code on a detailed crop (ffmpeg's libvvenc wrapper caps a picture at
# 8 bpp, which qp 0 exceeds on textured content: qp 8 is used for vvc).
HIGH = {"vvc": 55}


def psnr(reference: Image.Image, test: Image.Image) -> float:
    mse = np.mean((np.asarray(reference, np.float64) - np.asarray(test, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def high_quality(codec: Codec) -> int:
    return HIGH.get(codec.name, codec.quality_range[1])


def synthetic(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gentle colour ramps (a few levels per pixel) plus mild noise: compressible, but not flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([80 + 4 * x, 120 + 3 * y, 200 - 2 * x - y], axis=-1)
    noisy = np.clip(base + rng.normal(0, 3, base.shape), 0, 255)
    return Image.fromarray(np.round(noisy).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def photo(kodak_dir) -> Image.Image:
    """A 96x64 crop of a real photograph (kodim19: fence, grass and sky), for evaluation only."""
    return load_image(kodak_dir / "kodim19.png").crop((200, 300, 296, 364))


def test_registry_all_codecs_lists_the_seven_formats():
    assert {"jpeg", "webp", "avif", "jxl", "heic", "hevc", "vvc"} <= set(all_codecs())
    assert set(CODECS) <= set(all_codecs())


@pytest.mark.parametrize("name", CODECS)
def test_codec_round_trip_keeps_size_and_is_close_at_high_quality(name, photo):
    codec = get_codec(name)
    result = codec.run(photo, quality=high_quality(codec))
    assert isinstance(result, CodecResult)
    assert result.reconstruction.size == photo.size and result.reconstruction.mode == "RGB"
    assert psnr(photo, result.reconstruction) > 40.0
    assert (result.codec, result.quality, result.extension) == (name, high_quality(codec), codec.extension)
    assert result.encode_seconds > 0 and result.decode_seconds > 0


@pytest.mark.parametrize("name", CODECS)
def test_codec_bpp_counts_every_byte_over_original_pixels(name, photo):
    codec = get_codec(name)
    result = codec.run(photo)
    assert result.quality == codec.default_quality
    assert result.bpp == pytest.approx(8 * len(result.data) / (photo.width * photo.height), rel=1e-12)
    assert codec.encode(photo) == result.data  # deterministic: the product is reproducible


@pytest.mark.parametrize("name", CODECS)
def test_codec_higher_quality_gives_more_bits_and_better_psnr(name, photo):
    codec = get_codec(name)
    sweep = codec.sweep_qualities
    results = [codec.run(photo, quality) for quality in (sweep[0], sweep[2], sweep[-1])]
    rates = [result.bpp for result in results]
    scores = [psnr(photo, result.reconstruction) for result in results]
    assert rates[0] < rates[1] < rates[2], rates
    assert scores[0] < scores[1] < scores[2], scores


@pytest.mark.parametrize("name", [name for name in CODECS if name in PILLOW_FORMATS])
def test_codec_data_decodes_with_pillow(name, photo, tmp_path):
    result = get_codec(name).run(photo)
    path = tmp_path / f"image{result.extension}"
    path.write_bytes(result.data)
    with Image.open(path) as opened:  # plain Pillow with the plugins registered, no format hint
        assert opened.format == PILLOW_FORMATS[name]
        decoded = opened.convert("RGB")
    assert decoded.size == photo.size
    assert np.array_equal(np.asarray(decoded), np.asarray(result.reconstruction))


@pytest.mark.parametrize("name", FFMPEG_CODECS)
def test_codec_data_decodes_with_a_separate_ffmpeg_call(name, photo, tmp_path):
    result = get_codec(name).run(photo)
    path = tmp_path / f"image{result.extension}"  # ffmpeg picks the raw demuxer from the extension
    path.write_bytes(result.data)
    out = tmp_path / "decoded.png"
    process = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1", "-pix_fmt", "rgb24", str(out)],
        capture_output=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr.decode()
    with Image.open(out) as decoded:
        assert decoded.size == photo.size  # 96x64 needs no padding
        # ffmpeg's default YUV->RGB (read from the VUI tags) differs from ours only in chroma filtering.
        assert psnr(result.reconstruction, decoded.convert("RGB")) > 35.0


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (17, 9)])
@pytest.mark.parametrize("name", CODECS)
def test_codec_odd_sizes_come_back_same_size(name, size):
    image = synthetic(*size)
    codec = get_codec(name)
    result = codec.run(image)
    assert result.reconstruction.size == size
    assert result.bpp == pytest.approx(8 * len(result.data) / (size[0] * size[1]))
    # A smooth image at the default quality stays close (catches a shifted or mis-cropped decode).
    assert np.abs(np.asarray(result.reconstruction, float) - np.asarray(image, float)).mean() < 8


@pytest.mark.parametrize("name", CODECS)
def test_codec_decode_rejects_corrupt_and_truncated_data(name, photo):
    codec = get_codec(name)
    data = codec.encode(photo)
    for bad in (b"", data[: len(data) // 2], data[:12], bytes(np.random.default_rng(0).integers(0, 256, 300))):
        with pytest.raises(CodecError, match=name):
            codec.decode(bad)


@pytest.mark.parametrize("name", FFMPEG_CODECS)
def test_ffmpeg_codec_decode_error_includes_tool_stderr(name):
    codec = get_codec(name)
    garbage = b"\x00\x00\x01" + bytes(range(7, 200)) + codec.end_of_bitstream_nal
    with pytest.raises(CodecError, match="decoder rejected") as error:
        codec.decode(garbage)
    assert "[" in str(error.value) and len(str(error.value)) > 80  # ffmpeg's "[hevc @ 0x...] ..." lines


@pytest.mark.parametrize("name", FFMPEG_CODECS)
def test_ffmpeg_codec_decode_without_end_nal_says_what_to_do(name, photo):
    data = get_codec(name, end_of_bitstream=False).encode(photo)
    with pytest.raises(CodecError, match="end_of_bitstream=False"):
        get_codec(name).decode(data)
    assert get_codec(name, end_of_bitstream=False).decode(data).size == photo.size


def test_get_codec_unknown_name_lists_available_codecs():
    with pytest.raises(UnknownCodecError) as error:
        get_codec("nosuchcodec")
    assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)
    for name in CODECS:
        assert name in str(error.value)
    with pytest.raises(UnknownCodecError, match="hevc"):
        get_codec("bpg")


@pytest.mark.parametrize("name", CODECS)
def test_codec_quality_out_of_range_raises_value_error_naming_the_range(name):
    codec = get_codec(name)
    lo, hi = codec.quality_range
    image = synthetic(16, 16)
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ValueError, match=rf"\[{lo}, {hi}\]"):
            codec.encode(image, quality=bad)
    with pytest.raises(ValueError, match="integer"):
        codec.run(image, quality=2.5)


def test_codec_unknown_setting_raises_value_error_listing_allowed():
    with pytest.raises(ValueError, match="subsampling"):
        get_codec("jpeg", quality_tables=1)
    with pytest.raises(ValueError, match="matrix"):
        get_codec("hevc", matrix="bt2020")


def test_jpeg_bytes_equal_pillow_save(photo):
    for quality, subsampling in ((10, 2), (50, 2), (75, 2), (95, 2), (75, 0)):
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
        assert get_codec("jpeg", subsampling=subsampling).encode(photo, quality) == buffer.getvalue()


def test_codec_settings_record_the_exact_library_arguments(photo):
    assert get_codec("jpeg").run(photo, 40).settings == {
        "quality": 40,
        "subsampling": 2,
        "optimize": False,
        "progressive": False,
    }
    assert get_codec("jpeg", subsampling="4:4:4", optimize=True).encoder_settings(40)["subsampling"] == 0
    if "hevc" in CODECS:
        settings = get_codec("hevc").encoder_settings(30)
        assert settings["qp"] == 21 and "keyint=1" in settings["x265-params"] and settings["preset"] == "medium"
    if "vvc" in CODECS:
        settings = get_codec("vvc").encoder_settings(30)
        assert settings["qp"] == 33 and settings["pix_fmt"] == "yuv420p10le"


@pytest.mark.parametrize("name", CODECS)
def test_codec_description_names_versions_and_settings(name):
    description = get_codec(name).description
    assert any(char.isdigit() for char in description) and "bit" in description
    assert any(word in description for word in ("4:2:0", "preset", "effort", "method"))


def _mode_images() -> dict[str, Image.Image]:
    rgb = synthetic(20, 12)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 20, dtype=np.uint8), (12, 1))))
    gray16 = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    return {
        "RGBA": rgba,
        "LA": rgba.convert("LA"),
        "P": rgb.convert("P"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": gray16,
        "L": rgb.convert("L"),
    }


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "L"])
def test_codec_accepts_any_image_mode_through_load_image(mode):
    image = _mode_images()[mode]
    assert image.mode == mode
    codec = get_codec("jpeg")
    result = codec.run(image, quality=90)
    assert result.reconstruction.size == (20, 12) and result.reconstruction.mode == "RGB"
    assert result.data == codec.encode(load_image(image), quality=90)


def test_codec_accepts_arrays_tensors_paths_and_bytes(tmp_path):
    image = synthetic(20, 12)
    path = tmp_path / "in.png"
    image.save(path)
    array = np.array(image)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
    codec = get_codec("jpeg")
    expected = codec.encode(image, 80)
    for source in (array, tensor, path, str(path), path.read_bytes()):
        assert codec.encode(source, 80) == expected


def test_codec_applies_exif_orientation(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)  # left half red
    pixels[:, 16:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    for name in [n for n in ("jpeg", "hevc") if n in CODECS]:
        reconstruction = np.asarray(
            get_codec(name).run(path, quality=get_codec(name).sweep_qualities[-1]).reconstruction
        )
        assert reconstruction.shape == (32, 16, 3)  # displayed 16 wide, 32 tall
        assert reconstruction[4:12, 4:12, 0].mean() > 200 and reconstruction[4:12, 4:12, 2].mean() < 60  # top red
        assert reconstruction[20:28, 4:12, 2].mean() > 200 and reconstruction[20:28, 4:12, 0].mean() < 60


@pytest.mark.parametrize("name", [name for name in ("jpeg", "hevc") if name in CODECS])
def test_find_quality_returns_highest_quality_within_target(name, photo):
    codec = get_codec(name)
    target = 1.0
    result = codec.find_quality(photo, target)
    assert result.bpp <= target
    assert result.quality == codec.quality_range[1] or codec.run(photo, result.quality + 1).bpp > target
    lowest = codec.find_quality(photo, 1e-3)  # no quality fits: the lowest is returned
    assert lowest.quality == codec.quality_range[0] and lowest.bpp > 1e-3


@pytest.fixture
def recorded_tempdirs(tmp_path, monkeypatch) -> list[str]:
    """Send the codecs' temporary directories to an empty scratch folder and record their names."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    created: list[str] = []

    class Recording(tempfile.TemporaryDirectory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self.name)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Recording)
    return created


@pytest.mark.parametrize("name", FFMPEG_CODECS)
def test_ffmpeg_codec_removes_its_temporary_files(name, photo, recorded_tempdirs):
    codec = get_codec(name)
    assert codec.run(photo).reconstruction.size == photo.size
    with pytest.raises(CodecError):
        codec.decode(b"not a video" + codec.end_of_bitstream_nal)
    assert len(recorded_tempdirs) == 3  # encode, decode, failed decode
    assert all(path.startswith(tempfile.tempdir) for path in recorded_tempdirs)
    assert list(Path(tempfile.tempdir).iterdir()) == []


@pytest.mark.parametrize("name", FFMPEG_CODECS)
def test_ffmpeg_codec_timeout_raises_codec_error(name, photo, recorded_tempdirs):
    with pytest.raises(CodecError, match="timeout"):
        get_codec(name, timeout=0.001).encode(photo)
    assert len(recorded_tempdirs) == 1 and list(Path(tempfile.tempdir).iterdir()) == []


def test_vvc_over_8_bpp_fails_with_a_clear_message():
    if "vvc" not in CODECS:
        pytest.skip("vvc (ffmpeg with libvvenc) is not available here")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with pytest.raises(CodecError, match="8 bits per pixel"):
        get_codec("vvc").encode(noise, quality=63)


def test_register_codec_adds_a_new_codec_class():
    @register_codec("test-png")
    class PNGCodec(PillowCodec):
        extension = ".png"
        quality_range = (0, 9)
        default_quality = 6
        save_format = open_format = "PNG"

        def _save_kwargs(self, quality):
            return {"compress_level": 9 - quality}

    try:
        assert "test-png" in all_codecs() and "test-png" in available_codecs()
        image = synthetic(9, 7)
        result = get_codec("test-png").run(image)
        assert result.codec == "test-png" and np.array_equal(np.asarray(result.reconstruction), np.asarray(image))
        with pytest.raises(ValueError, match="already registered"):
            register_codec("test-png")(type("Other", (PNGCodec,), {}))
    finally:
        unregister_codec("test-png")
    assert "test-png" not in all_codecs()
