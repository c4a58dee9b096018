"""The Space: model choice, uploads within limits, the codec-alone / rp + codec comparison, and the running app
through gradio_client (files, table, bad inputs, 10 concurrent requests). Tiny random model, small crops."""

import json
import math
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rp_diffusers.codecs import get_codec
from rp_diffusers.evaluation.compare import compare
from rp_diffusers.evaluation.sweep import EXAMPLES_DIR
from rp_diffusers.pipelines.testing import RANDOM_MARKER, build_tiny_random_model
from rp_diffusers.utils import ImageLoadError
from rp_diffusers.utils.testing import load_script

SPACE_DIR = Path(__file__).resolve().parents[1] / "space"
sys.path.insert(0, str(SPACE_DIR))  # the Space's own module, beside app.py (not part of the package)
import space_support  # noqa: E402
from space_support import (  # noqa: E402
    MAX_PIXELS,
    MODEL_ENV,
    NO_ADAPTER,
    NO_PREPROCESS,
    RANDOM_LABEL,
    SPACE_MODEL_ID,
    RequestFolders,
    adapter_choice_value,
    load_space_model,
    open_upload,
    safe_stem,
    write_files,
)

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

ADAPTER = "rp_jpeg_lambda_0p5"


def _photo(width: int = 128, height: int = 96, left: int = 160, top: int = 120) -> Image.Image:
    """A crop of a bundled example photograph."""
    with Image.open(EXAMPLES_DIR / "chalet.png") as image:
        return image.convert("RGB").crop((left, top, left + width, top + height))


def _psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / mse)


def load_app():
    """Import space/app.py (not a package: the Space runs it as a script)."""
    module = load_script(SPACE_DIR / "app.py", "rp_space_app")
    return module


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_random_model(tmp_path_factory.mktemp("tiny-rp"))


@pytest.fixture(scope="module")
def model(model_dir):
    return load_space_model(str(model_dir))


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def server(app, model):
    """The demo launched on 127.0.0.1 (free port) with the Space's queue and launch settings."""
    demo = app.build_demo(model, metrics=("psnr", "ms_ssim"))
    demo.queue(default_concurrency_limit=app.CONCURRENCY, max_size=app.QUEUE_SIZE)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_kwargs())
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[1], verbose=False)


def _predict(client, path, codec="jpeg", match="bpp", quality=40, target_bpp=0.5, adapter=ADAPTER, strength=1.0):
    return client.predict(
        gradio_client.handle_file(str(path)),
        codec,
        match,
        quality,
        target_bpp,
        adapter,
        strength,
        api_name="/compare",
    )


def _table(result) -> dict[str, dict]:
    table = result[4]
    return {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}


# ------------------------------------------------------------------------------------------------ model choice
def test_space_model_from_env_variable(model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_ENV, str(model_dir))
    model = load_space_model()
    assert model.source == str(model_dir) and model.notes == []
    assert model.is_random and "RANDOM" in model.label  # build_tiny_random_model marks its folder
    assert model.pipe.available_adapters() == {ADAPTER: {"codec": "jpeg", "lambda": 0.5, "rank": 4, "lora_alpha": 4.0}}
    unmarked = shutil.copytree(model_dir, tmp_path / "model", ignore=shutil.ignore_patterns(RANDOM_MARKER))
    monkeypatch.setenv(MODEL_ENV, str(unmarked))
    model = load_space_model()
    assert (model.source, model.label, model.is_random) == (str(unmarked), f"`{unmarked}`", False)


def test_space_model_falls_back_to_labelled_tiny_random(tmp_path, monkeypatch):
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(space_support, "has_default_model", lambda: False)
    model = load_space_model()
    assert model.is_random and model.label == RANDOM_LABEL
    assert len(model.notes) == 1 and "missing" in model.notes[0]
    assert model.pipe(_photo(20, 12)).images[0].size == (20, 12)


def test_space_menu_follows_the_pipelines_policy_and_codec_alone_means_no_preprocessing(tmp_path):
    folder = build_tiny_random_model(tmp_path / "m", adapters=(("jpeg", 1), ("webp", 1)))
    for name, wins in (("rp_jpeg_lambda_1", True), ("rp_webp_lambda_1", False)):
        info = folder / "adapters" / name / "rp_adapter.json"
        data = json.loads(info.read_text())
        data["validation"] = {
            "bd_rate": {"ssimulacra2": -3.0 if wins else 4.0},
            "headline": ["ssimulacra2"],
            "wins": wins,
        }
        info.write_text(json.dumps(data))
    pipe = load_space_model(folder).pipe
    assert adapter_choice_value(pipe, "jpeg") == "rp_jpeg_lambda_1"
    assert adapter_choice_value(pipe, "webp") == NO_PREPROCESS  # its adapter lost in validation
    assert adapter_choice_value(pipe, "avif") == NO_PREPROCESS  # validated model, nothing for avif
    image = _photo()
    alone = compare(pipe, image, "webp", quality=50, match="quality", pre_process=False)
    assert np.array_equal(np.asarray(alone.preprocessed), np.asarray(image))
    assert alone.rp.data == alone.codec_alone.data
    unvalidated = load_space_model(build_tiny_random_model(tmp_path / "u", adapters=(("jpeg", 1),))).pipe
    assert adapter_choice_value(unvalidated, "jpeg") == "rp_jpeg_lambda_1"
    assert adapter_choice_value(unvalidated, "webp") == NO_ADAPTER  # no record at all: the base model


# ------------------------------------------------------------------------------------------------- comparison
def test_space_compare_same_bpp_gives_codec_alone_the_highest_quality_within_the_rate(model):
    image = _photo()
    result = compare(model.pipe, image, "jpeg", quality=40, adapter_name=ADAPTER)
    codec = get_codec("jpeg")
    assert result.rp.quality == 40 and result.rp.bpp == 8 * len(result.rp.data) / (128 * 96)
    assert result.codec_alone.bpp <= result.rp.bpp
    assert codec.run(image, result.codec_alone.quality + 1).bpp > result.rp.bpp
    assert result.preprocessed.size == image.size == result.rp.reconstruction.size
    for variant, coded in result.results().items():
        assert result.metrics[variant]["psnr-rgb"] == pytest.approx(_psnr(image, coded.reconstruction), abs=1e-3)
        assert "ms-ssim-rgb" not in result.metrics[variant]  # 96 px < 161 px: MS-SSIM cannot run


def test_space_compare_same_quality_and_target_bpp_modes(model):
    image = _photo(176, 168)
    same = compare(model.pipe, image, "webp", quality=30, match="quality", adapter_name=ADAPTER)
    assert same.codec_alone.quality == same.rp.quality == 30
    assert 0 < same.metrics["codec alone"]["ms-ssim-rgb"] <= 1
    budget = compare(model.pipe, image, "jpeg", target_bpp=0.8, match="target_bpp", adapter_name=ADAPTER)
    assert budget.codec_alone.bpp <= 0.8 and budget.rp.bpp <= 0.8
    with pytest.raises(ValueError, match="target bpp"):
        compare(model.pipe, image, "jpeg", target_bpp=-1, match="target_bpp")
    with pytest.raises(ValueError, match="quality must lie"):
        compare(model.pipe, image, "jpeg", quality=101)


def test_space_compare_adapter_strength_zero_is_the_base_model(model):
    image = _photo(48, 32)
    base = compare(model.pipe, image, "jpeg", quality=90, match="quality").preprocessed
    zero = compare(model.pipe, image, "jpeg", quality=90, match="quality", adapter_name=ADAPTER, adapter_weight=0.0)
    full = compare(model.pipe, image, "jpeg", quality=90, match="quality", adapter_name=ADAPTER, adapter_weight=1.0)
    assert np.array_equal(np.asarray(zero.preprocessed), np.asarray(base))
    assert np.abs(np.asarray(full.preprocessed, dtype=int) - np.asarray(base, dtype=int)).max() > 0
    with pytest.raises(ValueError, match="strength"):
        compare(model.pipe, image, "jpeg", adapter_name=ADAPTER, adapter_weight=1.5)


def test_space_write_files_are_the_bitstreams(model, tmp_path):
    result = compare(model.pipe, _photo(), "jpeg", quality=50, match="quality")
    alone, rp = write_files(result, tmp_path, safe_stem("/up/my photo (1).PNG"))
    assert (alone.name, rp.name) == ("my_photo_1.jpg", "my_photo_1.rp.jpg")
    assert alone.read_bytes() == result.codec_alone.data and rp.read_bytes() == result.rp.data
    assert safe_stem("/up/...png") == "image"


# ----------------------------------------------------------------------------------------------------- uploads
@pytest.mark.parametrize(
    "mode, array, expected, note",
    [
        ("RGBA", np.array([[[255, 0, 0, 255], [0, 0, 255, 0]]], np.uint8), [[255, 0, 0], [255, 255, 255]], "white"),
        ("I;16", np.array([[65535, 257]], np.uint16), [[255, 255, 255], [1, 1, 1]], "16-bit"),
        ("L", np.array([[7, 200]], np.uint8), [[7, 7, 7], [200, 200, 200]], "grayscale"),
    ],
)
def test_space_open_upload_converts_odd_modes_with_a_note(tmp_path, mode, array, expected, note):
    path = tmp_path / f"odd_{mode.replace(';', '')}.png"
    Image.fromarray(array, mode).save(path)
    image, message = open_upload(path)
    assert image.mode == "RGB" and np.asarray(image)[0].tolist() == expected
    assert note in message


def test_space_open_upload_refuses_oversized_and_corrupt_files(tmp_path):
    assert MAX_PIXELS == 4_000_000
    big = tmp_path / "big.png"
    Image.new("RGB", (60, 50)).save(big)
    with pytest.raises(ImageLoadError, match=r"big.png is 60x50 = 0.0 megapixels; this demo takes images up to"):
        open_upload(big, max_pixels=2999)
    assert open_upload(big, max_pixels=3000)[0].size == (60, 50)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(big.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="corrupt") as info:
        open_upload(corrupt)
    assert str(tmp_path) not in str(info.value)  # the user sees the file name, not the server's folders


def test_space_request_folders_purge_stale_ones(tmp_path):
    folders = RequestFolders(max_age=60, root=tmp_path)
    old, fresh = folders.new(), folders.new()
    os.utime(old, (time.time() - 120, time.time() - 120))
    newest = folders.new()
    assert not old.exists() and fresh.exists() and newest.exists()
    assert folders.purge(max_age=-1) == 2 and list(tmp_path.iterdir()) == []


def test_space_readme_front_matter_and_requirements():
    text = (SPACE_DIR / "README.md").read_text()
    front = text.split("---")[1]
    fields = dict(re.findall(r"^(\w+): *(.*)$", front, flags=re.M))
    assert fields["sdk"] == "gradio" and fields["sdk_version"] == gradio.__version__ == "6.31.0"
    assert fields["app_file"] == "app.py" and fields["python_version"] == '"3.11"' and fields["license"]
    assert f"  - {SPACE_MODEL_ID}" in front
    requirements = (SPACE_DIR / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("rp-diffusers==") for line in requirements)
    assert not any(line.startswith("gradio") for line in requirements)  # the Hub installs sdk_version
    assert not (SPACE_DIR / "packages.txt").exists()


# ---------------------------------------------------------------------------------------------- the running app
def test_space_app_compare_returns_images_table_and_real_files(client, server, app, tmp_path):
    path = tmp_path / "crop.png"
    _photo().save(path)
    result = _predict(client, path, quality=40)
    slider, alone_image, rp_image, summary, _, alone_file, rp_file = result
    rows = _table(result)
    assert list(rows) == ["codec alone", "rp + codec"]
    for variant, file, image in (("codec alone", alone_file, alone_image), ("rp + codec", rp_file, rp_image)):
        data = Path(file).read_bytes()
        assert rows[variant]["bytes"] == len(data)
        assert float(rows[variant]["bpp"]) == pytest.approx(8 * len(data) / (128 * 96), abs=1e-4)
        decoded = Image.open(file)
        assert decoded.format == "JPEG" and decoded.size == (128, 96)
        psnr = _psnr(_photo(), decoded.convert("RGB"))
        assert float(rows[variant]["PSNR (dB)"]) == pytest.approx(psnr, abs=0.01)
        assert np.array_equal(np.asarray(Image.open(image)), np.asarray(decoded.convert("RGB")))  # lossless PNG
        assert rows[variant]["MS-SSIM"] == "n/a"
    assert Path(alone_file).name == "crop.jpg" and Path(rp_file).name == "crop.rp.jpg"
    assert rows["rp + codec"]["quality"] == 40 and float(rows["codec alone"]["bpp"]) <= float(
        rows["rp + codec"]["bpp"]
    )
    assert [Path(p).read_bytes() for p in slider] == [Path(alone_image).read_bytes(), Path(rp_image).read_bytes()]
    assert "rp + codec" in summary and "MS-SSIM needs at least 161 pixels" in summary
    assert server[0].delete_cache == app.DELETE_CACHE


def test_space_app_odd_modes_are_processed_with_a_note(client, tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray((np.asarray(_photo().convert("L"), dtype=np.uint16) * 257), "I;16").save(path)
    result = _predict(client, path, match="quality", quality=60, adapter="none")
    assert "16-bit grayscale" in result[3]
    assert Image.open(result[5]).size == (128, 96)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("corrupt", "corrupt.png is truncated or corrupt"),
        ("huge", "megapixels; this demo takes images up to 4.0 megapixels"),
        ("text", "is not an image Pillow can read"),
        ("quality", "jpeg quality must lie in"),
        ("fractional", "jpeg quality must be an integer"),
        ("codec", "unknown codec 'gif'"),
    ],
)
def test_space_app_bad_inputs_get_a_message_not_a_traceback(client, tmp_path, kind, message):
    good = tmp_path / "good.png"
    _photo(40, 30).save(good)
    path, kwargs = good, {}
    if kind == "corrupt":
        path = tmp_path / "corrupt.png"
        path.write_bytes(good.read_bytes()[:100])
    elif kind == "huge":
        path = tmp_path / "huge.png"
        Image.new("L", (2100, 2000)).save(path)  # 4.2 MP, a few kB on disk
    elif kind == "text":
        path = tmp_path / "notes.png"
        path.write_text("not an image")
    elif kind == "quality":
        kwargs = {"quality": 150, "match": "quality"}
    elif kind == "fractional":
        kwargs = {"quality": 40.5, "match": "quality"}  # refused, not truncated to 40
    else:
        kwargs = {"codec": "gif"}
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        _predict(client, path, **kwargs)
    assert message in str(info.value) and "Traceback" not in str(info.value)


def test_space_app_refuses_uploads_over_the_size_limit(client, server, app, tmp_path):
    assert app.launch_kwargs()["max_file_size"] == "20mb" and server[0].max_file_size == 20 * 1024 * 1024
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG" + os.urandom(21 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20971520 bytes"):
        _predict(client, path)  # the client reads the limit from the app's config
    import httpx

    with path.open("rb") as file:  # and the server refuses it from any other client
        response = httpx.post(f"{server[1]}gradio_api/upload", files={"files": ("big.png", file)}, timeout=60)
    assert response.status_code == 413


def test_space_app_ten_concurrent_requests_all_succeed(client, tmp_path):
    jobs, sizes = [], []
    for index in range(10):
        width, height = 64 + 8 * index, 48 + 4 * index
        path = tmp_path / f"photo{index}.png"
        _photo(width, height, left=20 * index, top=10 * index).save(path)
        codec, quality = ("jpeg", 30 + 5 * index) if index % 2 else ("webp", 20 + 5 * index)
        arguments = (gradio_client.handle_file(str(path)), codec, "bpp", quality, 0.5, ADAPTER, index / 9)
        jobs.append(client.submit(*arguments, api_name="/compare"))
        sizes.append((width, height, codec))
    for job, (width, height, codec) in zip(jobs, sizes):
        result = job.result(timeout=120)
        rows = _table(result)
        assert Image.open(result[1]).size == (width, height) == Image.open(result[2]).size
        assert Path(result[6]).suffix == get_codec(codec).extension
        for row in rows.values():
            assert 0 < float(row["bpp"]) < 24 and 5 < float(row["PSNR (dB)"]) < 100


def test_space_app_target_bpp_below_the_codecs_floor_is_flagged(client, tmp_path):
    path = tmp_path / "crop.png"
    _photo().save(path)
    result = _predict(client, path, match="target_bpp", target_bpp=0.01)
    rows = _table(result)
    assert [rows[v]["quality"] for v in rows] == [get_codec("jpeg").quality_range[0]] * 2
    assert "codec alone and rp + codec: even the lowest quality exceeds 0.010 bpp" in result[3]
