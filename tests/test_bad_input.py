"""Bad input never costs the user a file and never runs code from one (issue 19).

Every input is generated in ``tmp_path``: tiny random models, small random images, hand-written results JSON and
pickles that would leave a marker file behind if anything unpickled them.
"""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rp_diffusers.cli import main
from rp_diffusers.utils import ImageLoadError, load_image
from rp_diffusers.utils.files import atomic_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADAPTER = "rp_jpeg_lambda_0p5"


def _image(path: Path, size=(24, 20), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


class _Payload:
    """Unpickling this creates ``marker``: proof that a file's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Payload(marker)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from rp_diffusers.pipelines.testing import build_tiny_random_model

    return build_tiny_random_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def pipe(model_dir):
    from rp_diffusers.pipelines import RPPreprocessPipeline

    pipe = RPPreprocessPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _error(capsys) -> str:
    """The CLI's one error line (loading progress bars may precede it), checked to be its only message."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rp-diffusers ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------ atomic writes
def test_atomic_path_interrupted_keeps_the_earlier_file(tmp_path):
    target = tmp_path / "a.jpg"
    target.write_bytes(b"earlier")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half writ")
            raise KeyboardInterrupt  # a killed run
    assert target.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]  # no temporary file left behind


def test_atomic_path_without_overwrite_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    """A parallel run that published first keeps its file; this run fails clearly and leaves no temporary."""
    target = tmp_path / "a.jpg"
    with pytest.raises(FileExistsError, match="appeared while this run was writing"):
        with atomic_path(target, overwrite=False) as temporary:
            temporary.write_bytes(b"this run")
            target.write_bytes(b"the other run")  # published by another process in the meantime
    assert target.read_bytes() == b"the other run"
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]
    with atomic_path(tmp_path / "b.jpg", overwrite=False) as temporary:
        temporary.write_bytes(b"new")
    assert (tmp_path / "b.jpg").read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.jpg",
        "b.jpg",
    ]


# ------------------------------------------------------------------------------------------------- image input
@pytest.mark.parametrize("size", [(0, 0), (5, 0), (-1, 4), (3,), "ab", (2.5, 3), 7])
def test_decode_refuses_a_size_that_is_not_two_positive_integers(size):
    from rp_diffusers.codecs import get_codec

    codec = get_codec("jpeg")
    data = codec.encode(Image.new("RGB", (9, 7)), 50)
    with pytest.raises(ValueError, match="size must be"):
        codec.decode(data, size=size)
    assert codec.decode(data, size=(np.int64(5), 4)).size == (5, 4)


def test_max_pixels_governs_pillows_own_bomb_limit(tmp_path, monkeypatch):
    """``max_pixels=None`` (or a limit above Pillow's) opens an image Pillow alone would refuse as a bomb."""
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # stands for Pillow's 89-megapixel default
    assert load_image(path, max_pixels=None).size == (100, 100)
    assert load_image(path, max_pixels=20_000).size == (100, 100)
    with pytest.raises(ImageLoadError, match="over the limit of"):
        load_image(path, max_pixels=5_000)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


# ------------------------------------------------------------------------------------------------------ compress
def _compress(model_dir, images, out, *extra) -> list[str]:
    argv = ["compress", *map(str, images), "--model", str(model_dir), "--quality", "50", "--metrics", "psnr"]
    return [*argv, "--out", str(out), *extra]


@pytest.mark.parametrize("existing", ["img.jpg", "img.rp.jpg"])
def test_compress_existing_output_is_refused_before_writing(model_dir, tmp_path, capsys, existing):
    source = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_bytes(b"the user's file")
    assert main(_compress(model_dir, [source], out)) == 2
    err = _error(capsys)
    assert str(out / existing) in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == [existing] and (out / existing).read_bytes() == b"the user's file"


def test_compress_overwrite_replaces_the_files(model_dir, tmp_path, capsys):
    source = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "img.jpg").write_bytes(b"old")
    assert main(_compress(model_dir, [source], out, "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img.jpg", "img.rp.jpg"]  # no temporary files left
    for name in ("img.jpg", "img.rp.jpg"):
        assert (out / name).read_bytes()[:2] == b"\xff\xd8"  # a real JPEG
        assert Image.open(out / name).size == (24, 20)


def test_compress_inputs_with_one_stem_are_refused(model_dir, tmp_path, capsys):
    first, second = _image(tmp_path / "ok.png"), _image(tmp_path / "ok.tiff", seed=1)
    out = tmp_path / "out"
    assert main(_compress(model_dir, [first, second], out)) == 2
    err = _error(capsys)
    assert f"{first} and {second} would both write {out / 'ok.jpg'}" in err
    assert not out.exists()


def test_compress_existing_json_is_refused(model_dir, tmp_path, capsys):
    source = _image(tmp_path / "img.png")
    table = tmp_path / "table.json"
    table.write_text("the user's notes")
    out = tmp_path / "out"
    assert main(_compress(model_dir, [source], out, "--json", str(table))) == 2
    assert str(table) in _error(capsys)
    assert table.read_text() == "the user's notes" and not out.exists()
    assert main(_compress(model_dir, [source], out, "--json", str(table), "--overwrite")) == 0
    assert [row["file"] for row in json.loads(table.read_text())["per_image"]] == [
        str(out / "img.jpg"),
        str(out / "img.rp.jpg"),
    ]


def test_compress_codec_alone_policy_leaves_an_rp_named_file_alone(model_dir, tmp_path, capsys):
    """A model whose validation says "jpeg alone" writes only NAME.jpg: a NAME.rp.jpg there is not in the way."""
    model = shutil.copytree(model_dir, tmp_path / "model")
    info_path = model / "adapters" / ADAPTER / "rp_adapter.json"
    info = json.loads(info_path.read_text())
    info["validation"] = {"wins": False, "bd_rate": {"psnr-rgb": 3.0}, "headline": ["psnr-rgb"]}
    info_path.write_text(json.dumps(info))
    source = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "img.rp.jpg").write_bytes(b"the user's file")
    assert main(_compress(model, [source], out)) == 0
    assert "jpeg alone" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["img.jpg", "img.rp.jpg"]
    assert (out / "img.rp.jpg").read_bytes() == b"the user's file"


# ------------------------------------------------------------------------------------------------------- enhance
def test_enhance_existing_png_and_shared_stems_are_refused_before_loading(tmp_path, capsys):
    first, second = _image(tmp_path / "in" / "a.jpg"), _image(tmp_path / "in" / "a.webp", seed=1)
    out = tmp_path / "out"
    missing_model = str(tmp_path / "no_model")  # the checks come before the model would load
    assert main(["enhance", str(first), str(second), "--model", missing_model, "--out", str(out)]) == 2
    assert f"{first} and {second} would both write {out / 'a.png'}" in _error(capsys)
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's file")
    assert main(["enhance", str(first), "--model", missing_model, "--out", str(out)]) == 2
    err = _error(capsys)
    assert str(out / "a.png") in err and "--overwrite" in err
    assert (out / "a.png").read_bytes() == b"the user's file"


def test_enhance_overwrite_replaces_the_png(tmp_path, capsys):
    from diffusers import CMStochasticIterativeScheduler, UNet2DModel

    from rp_diffusers.pipelines import PerceptualDecodePipeline

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    PerceptualDecodePipeline(unet=unet, scheduler=CMStochasticIterativeScheduler()).save_pretrained(tmp_path / "cm")
    source = _image(tmp_path / "in" / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"old")
    argv = ["enhance", str(source), "--model", str(tmp_path / "cm"), "--sigma", "0.4", "--device", "cpu"]
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert [p.name for p in out.iterdir()] == ["a.png"]
    with Image.open(out / "a.png") as png:
        assert png.format == "PNG" and png.size == (24, 20)


# ------------------------------------------------------------------------------------------------------ evaluate
def _evaluate(images: Path, out: Path, codecs: str, *extra) -> list[str]:
    argv = ["evaluate", "--images", str(images), "--codec", codecs, "--qualities", "30,60", "--metrics", "psnr"]
    return [*argv, "--output", str(out), "--workers", "0", "--no-progress", *extra]


def test_evaluate_rerun_is_refused_then_overwrite_removes_only_stale_results(tmp_path, capsys):
    images = _image(tmp_path / "images" / "a.png", size=(48, 40)).parent
    out = tmp_path / "out"
    assert main(_evaluate(images, out, "jpeg,webp")) == 0
    assert {p.name for p in out.iterdir()} == {"jpeg.json", "webp.json", "rd.png", "bd_rate.json"}
    json.loads((out / "bd_rate.json").read_text(), parse_constant=pytest.fail)  # strict JSON: NaN written as null
    user_files = {
        "notes.txt": "the user's notes",
        "mine.json": json.dumps({"name": "mine", "results": {"bpp": [0.1]}}),  # a CompressAI file of the user's
        "jpeg_copy.json": (out / "jpeg.json").read_text(),  # its name says it is not this folder's jpeg curve
    }
    for name, text in user_files.items():
        (out / name).write_text(text)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    assert main(_evaluate(images, out, "jpeg")) == 2
    err = _error(capsys)
    assert "--overwrite" in err and "webp.json" in err and "notes.txt" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    assert main(_evaluate(images, out, "jpeg", "--overwrite")) == 0
    assert "removed the earlier run's bd_rate.json, webp.json" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"jpeg.json", "rd.png", *user_files}
    assert all((out / name).read_text() == text for name, text in user_files.items())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--codec", "jpeg,JPEG"], "--codec lists jpeg more than once"),
        (["--limit", "0"], "--limit must be a number of images >= 1, got 0"),
        (["--limit", "-1"], "--limit must be a number of images >= 1, got -1"),
        (["--codec", "jpeg,webp", "--anchor", "avif"], "--anchor 'avif' is not one of the curves: jpeg, webp"),
        (["--model", "MODEL", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--model", "MODEL", "--device", "nodevice"], "unknown device 'nodevice'"),
        pytest.param(
            ["--model", "MODEL", "--device", "cuda"],
            "device 'cuda' is not available on this machine (no CUDA): use cpu or leave it unset",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_evaluate_refuses_bad_arguments_before_writing(tmp_path, capsys, model_dir, extra, message):
    images = _image(tmp_path / "images" / "a.png").parent
    out = tmp_path / "out"
    extra = [str(model_dir) if arg == "MODEL" else arg for arg in extra]
    assert main(_evaluate(images, out, "jpeg", *extra)) == 2
    assert message in _error(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------- bd-rate
def _curve(path: Path, name, results) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "results": results}))
    return path


BPP = [0.2, 0.4, 0.8, 1.6]


def test_bd_rate_tests_sharing_a_name_are_labelled_by_file(tmp_path, capsys):
    anchor = _curve(tmp_path / "jpeg.json", "jpeg", {"bpp": BPP, "psnr-rgb": [28, 31, 34, 37]})
    first = _curve(tmp_path / "a" / "webp.json", "webp", {"bpp": BPP, "psnr-rgb": [28.5, 31.5, 34.5, 37.5]})
    second = _curve(tmp_path / "b" / "webp.json", "webp", {"bpp": BPP, "psnr-rgb": [29, 32, 35, 38]})
    assert main(["bd-rate", str(anchor), str(first), str(second), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["bd_rate"]
    assert set(rows) == {f"webp ({first})", f"webp ({second})"}
    assert rows[f"webp ({second})"]["psnr-rgb"] < rows[f"webp ({first})"]["psnr-rgb"] < 0
    assert main(["bd-rate", str(anchor), str(first), str(first)]) == 2
    assert "given more than once" in _error(capsys)


def test_bd_rate_json_is_strict_with_null_for_undefined(tmp_path, capsys):
    anchor = _curve(tmp_path / "jpeg.json", "jpeg", {"bpp": BPP, "psnr-rgb": [28, 31, 34, 37]})
    short = _curve(tmp_path / "webp.json", "webp", {"bpp": BPP[:3], "psnr-rgb": [29, 32, 35]})  # under 4 points
    assert main(["bd-rate", str(anchor), str(short), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)  # NaN / Infinity would fail here
    assert printed["bd_rate"] == {"webp": {"psnr-rgb": None}}


@pytest.mark.parametrize(
    "name, results, field",
    [
        ("webp", {"bpp": 0.5, "psnr-rgb": [30]}, "results.bpp must be a list of numbers, got a number"),
        ("webp", {"bpp": BPP, "psnr-rgb": "high"}, "results.psnr-rgb must be a list of numbers, got a string"),
        ("webp", {"bpp": BPP, "psnr-rgb": {"q10": 30}}, "results.psnr-rgb must be a list of numbers, got an object"),
        ("webp", {"bpp": BPP, "psnr-rgb": [[29], [32], [35], [38]]}, "results.psnr-rgb[0] must be a number or null"),
        ("webp", {"bpp": BPP, "psnr-rgb": [29, 32, 35]}, "results.psnr-rgb has 3 values but results.bpp has 4"),
        ("webp", 7, "field results must be an object"),
        ("webp", "bpp", "field results must be an object"),
        ({"first": "webp"}, {"bpp": BPP, "psnr-rgb": [29, 32, 35, 38]}, "field name must be a string, got an object"),
    ],
)
@pytest.mark.parametrize("role", ["anchor", "test"])
def test_bd_rate_wrong_shape_names_file_and_field(tmp_path, capsys, name, results, field, role):
    good = _curve(tmp_path / "jpeg.json", "jpeg", {"bpp": BPP, "psnr-rgb": [28, 31, 34, 37]})
    bad = _curve(tmp_path / "bad.json", name, results)
    files = [bad, good] if role == "anchor" else [good, bad]
    assert main(["bd-rate", *map(str, files)]) == 2
    err = _error(capsys)
    assert f"{bad}: " in err and field in err


# ------------------------------------------------------------------------------------------- pickles never load
def test_from_pretrained_refuses_a_pickled_component(model_dir, tmp_path):
    from rp_diffusers.pipelines import RPPreprocessPipeline

    model = shutil.copytree(model_dir, tmp_path / "model")
    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "code_ran"
    _write_pickle(model / "unet" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(ValueError, match=r"pickled weights \(diffusion_pytorch_model.bin\)") as caught:
        RPPreprocessPipeline.from_pretrained(model)
    assert "safetensors.torch.save_file" in str(caught.value) and str(model / "unet") in str(caught.value)
    with pytest.raises(ValueError, match="safetensors weights only"):
        RPPreprocessPipeline.from_pretrained(model_dir, use_safetensors=False)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["folder", "file", "weight_name"])
def test_load_lora_weights_refuses_a_pickled_file(pipe, tmp_path, how):
    marker = tmp_path / "code_ran"
    weights = tmp_path / "lora" / "pytorch_lora_weights.bin"
    _write_pickle(weights, marker)
    source, kwargs = {
        "folder": (weights.parent, {}),
        "file": (weights, {}),
        "weight_name": (weights.parent, {"weight_name": weights.name}),
    }[how]
    before = set(pipe.available_adapters())
    with pytest.raises(ValueError, match="is not a .safetensors file") as caught:
        pipe.load_lora_weights(str(source), adapter_name="from_pickle", **kwargs)
    assert str(weights) in str(caught.value) and "safetensors.torch.save_file" in str(caught.value)
    assert not marker.exists() and set(pipe.available_adapters()) == before


# ------------------------------------------------------------------------------------------------ pipeline input
@pytest.mark.parametrize(
    "weights, message",
    [
        (float("nan"), "must be finite numbers"),
        (float("inf"), "must be finite numbers"),
        ([float("-inf")], "must be finite numbers"),
        ([0.5, 0.5], "has 2 values for 1 adapter"),
        ("1.0", "must be numbers"),
    ],
)
def test_pipeline_refuses_bad_adapter_weights(pipe, weights, message):
    with pytest.raises(ValueError, match=message):
        pipe(Image.new("RGB", (16, 16)), adapter_name=ADAPTER, adapter_weights=weights)


def test_pipeline_negative_adapter_weight_runs_and_differs(pipe):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    plus = pipe(image, adapter_name=ADAPTER, adapter_weights=1.0, output_type="np").images
    minus = pipe(image, adapter_name=ADAPTER, adapter_weights=-1.0, output_type="np").images
    assert np.isfinite(minus).all() and np.abs(plus - minus).max() > 1e-4


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.full((3, 8, 8), float("nan")), "NaN or infinite"),
        (torch.full((1, 3, 8, 8), 2.0), r"must lie in \[0, 1\], got values in \[2, 2\]"),
        (torch.full((3, 8, 8), -0.5), r"must lie in \[0, 1\]"),
        ([torch.zeros(3, 8, 8), torch.full((3, 8, 8), float("inf"))], "NaN or infinite"),
        (torch.zeros((3, 8, 8), dtype=torch.int64), "unsupported tensor dtype"),
    ],
)
def test_pipeline_refuses_bad_tensors_like_arrays(pipe, tensor, message):
    with pytest.raises(ValueError, match=message):
        pipe(tensor)
    with pytest.raises(ImageLoadError, match="NaN or infinite"):  # arrays: the same rule
        pipe(np.full((8, 8, 3), np.nan, dtype=np.float32))


def test_uint8_and_float_tensors_load_as_the_same_image():
    array = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    as_uint8 = torch.from_numpy(array).permute(2, 0, 1)
    expected = np.asarray(load_image(array))
    assert np.array_equal(np.asarray(load_image(as_uint8)), expected)
    assert np.array_equal(np.asarray(load_image(as_uint8.float() / 255)), expected)
