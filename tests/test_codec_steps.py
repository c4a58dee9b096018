"""The JPEG dead zone (rp_diffusers.codecs.prequantize): what libjpeg codes after it, its measured effect, the
codec that applies it, and how a model stores it and the policy, the CLI and the sweep use it."""

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rp_diffusers.adapters import choose_adapter
from rp_diffusers.codecs import get_codec
from rp_diffusers.codecs.prequantize import JPEGDeadzone, SteppedCodec, codec_step_from_config, with_codec_step
from rp_diffusers.evaluation import EXAMPLES_DIR, bd_table, evaluate
from rp_diffusers.surrogates import get_surrogate
from rp_diffusers.utils import load_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINS = {"bd_rate": {"ssimulacra2": -6.0}, "headline": ["ssimulacra2"], "wins": True, "images": "val-set14"}


@pytest.fixture(scope="module")
def chalet():
    return load_image(EXAMPLES_DIR / "chalet.png")


def _coefficients(image, quality):
    """libjpeg's own quantised luma and chroma coefficients of ``image`` at ``quality`` (DiffJPEG is bit-exact)."""
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    analysis = get_surrogate("jpeg").analyze(tensor, torch.tensor([float(quality)]))
    return analysis.luma_scaled[0].detach(), analysis.luma_exact[0], analysis.chroma_exact[0]


@pytest.mark.parametrize("quality, share", [(20, 0.98), (50, 0.97), (80, 0.94)])
def test_the_encoder_codes_the_dead_zone_as_zero_and_leaves_the_rest(chalet, quality, share):
    """At high qualities the steps are a few grey levels, and the 8-bit rounding of RGB moves some back."""
    scaled, before, chroma_before = _coefficients(chalet, quality)
    _, after, chroma_after = _coefficients(JPEGDeadzone(threshold=0.75)(chalet, quality), quality)
    magnitude = scaled.abs()
    ac = torch.zeros(64, dtype=torch.bool)
    ac[1:] = True
    dead = (magnitude >= 0.5) & (magnitude < 0.75) & ac
    assert dead.sum() > 100  # the photograph has such coefficients at every quality here
    assert (after[dead] == 0).float().mean() > share  # the encoder rounds them to zero now
    kept = ~dead & ((magnitude < 0.45) | (magnitude > 0.8))  # away from both edges of the band
    assert (after[kept] == before[kept]).float().mean() > 0.985  # and codes everything else as before
    dc_moved = (after[:, :, 0] - before[:, :, 0]).abs()
    assert dc_moved.max() <= 1 and (dc_moved == 0).float().mean() > 0.97  # DC: only the 8-bit rounding's flips
    assert (chroma_after == chroma_before).float().mean() > 0.995  # the step moves luma only


def test_the_tail_codes_each_blocks_last_small_coefficients_as_zero(chalet):
    scaled, _, _ = _coefficients(chalet, 40)  # zigzag order, as libjpeg codes it
    _, flat, _ = _coefficients(JPEGDeadzone(threshold=0.75)(chalet, 40), 40)
    _, tail, _ = _coefficients(JPEGDeadzone(threshold=0.75, tail_threshold=1.0)(chalet, 40), 40)
    assert (tail != 0).sum() < (flat != 0).sum()  # fewer coded coefficients than the dead zone alone
    order = torch.arange(64)
    last = torch.where(tail != 0, order, torch.full_like(order, -1)).amax(-1)  # zigzag index of each block's last
    inside = last > 0
    ends = scaled.abs().gather(-1, last.clamp(min=0)[..., None])[..., 0][inside]
    assert (ends >= 0.95).float().mean() > 0.97  # a block now ends on a coefficient over the tail threshold


def test_the_smallest_threshold_changes_nothing(chalet):
    same = JPEGDeadzone(threshold=0.5)(chalet, 40)
    assert np.array_equal(np.asarray(same), np.asarray(chalet))


def test_the_file_is_an_ordinary_smaller_jpeg_of_the_same_size(chalet):
    plain, stepped = get_codec("jpeg"), with_codec_step(get_codec("jpeg"), JPEGDeadzone())
    alone, result = plain.run(chalet, 40), stepped.run(chalet, 40)
    assert result.bpp < 0.95 * alone.bpp
    decoded = Image.open(io.BytesIO(result.data))
    assert decoded.format == "JPEG" and decoded.size == chalet.size
    assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(result.reconstruction))
    assert result.settings["before_encoding"] == JPEGDeadzone().config()
    assert "dead zone" in stepped.description and stepped.extension == ".jpg"


def test_it_wins_per_bit_in_ssimulacra2_on_the_bundled_photographs():
    """The measured effect, small: BD-rate in SSIMULACRA2 (weight-free, not a training target) against JPEG
    alone in the same run, real files, on the two bundled photographs (the README's numbers: val-set14 and Kodak)."""
    common = dict(metrics=["psnr", "ssimulacra2"], workers=0, progress=False)
    alone = evaluate(EXAMPLES_DIR, "jpeg", "20,35,50,65,80", **common).to_dict()
    stepped = evaluate(EXAMPLES_DIR, "jpeg", "20,35,50,65,80", codec_step=JPEGDeadzone(), **common).to_dict()
    table = bd_table(alone, stepped)
    assert table["ssimulacra2"] < -2.0, table
    assert stepped["meta"]["codec_step"] == JPEGDeadzone().config()
    assert all(a > b for a, b in zip(alone["results"]["bpp"], stepped["results"]["bpp"]))


def test_a_stepped_codec_finds_qualities_and_travels_to_worker_processes(chalet):
    stepped = with_codec_step(get_codec("jpeg"), JPEGDeadzone(threshold=0.7))
    target = get_codec("jpeg").run(chalet, 50).bpp
    found = stepped.find_quality(chalet, target)
    assert found.bpp <= target and found.quality >= 50  # fewer bits per quality: the same budget buys more
    copy = pickle.loads(pickle.dumps(stepped))
    assert copy.run(chalet, 30).data == stepped.run(chalet, 30).data
    assert with_codec_step(get_codec("jpeg"), None).__class__ is not SteppedCodec


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 0.3}, "threshold must lie in"),
        ({"threshold": float("nan")}, "finite"),
        ({"target": 0.5}, "target must lie in"),
        ({"passes": 0}, "passes must be"),
        ({"tail_threshold": 0.6}, "tail_threshold must be None or lie in"),
        ({"tail_threshold": 2.0}, "tail_threshold must be None or lie in"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JPEGDeadzone(**kwargs)


def test_bad_calls_are_refused(chalet):
    with pytest.raises(ValueError, match="quality must be an integer"):
        JPEGDeadzone()(chalet, 40.5)
    with pytest.raises(ValueError, match="made for jpeg, not webp"):
        with_codec_step(get_codec("webp"), JPEGDeadzone())
    with pytest.raises(ValueError, match="a codec step needs 'step'"):
        codec_step_from_config({"step": "no-such-step"})
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['thresold'\]"):
        codec_step_from_config({"step": "jpeg_deadzone", "thresold": 1.2})
    with pytest.raises(ValueError, match="boolean 'wins'"):
        codec_step_from_config({"step": "jpeg_deadzone", "validation": {"wins": "false"}})
    with pytest.raises(ValueError, match="frequency_ramp must be true or false"):
        JPEGDeadzone(frequency_ramp="false")
    with pytest.raises(ValueError, match="already runs a step"):
        with_codec_step(with_codec_step(get_codec("jpeg"), JPEGDeadzone()), JPEGDeadzone())
    with pytest.raises(ValueError, match="made for no codec"):
        with_codec_step(get_codec("jpeg"), object())
    assert JPEGDeadzone()(chalet, 40.0).size == chalet.size  # an integral float, as Codec.run accepts
    assert codec_step_from_config({**JPEGDeadzone(0.7).config(), "validation": WINS}) == JPEGDeadzone(0.7)


def test_odd_sizes_and_tiny_images_come_back_whole():
    rng = np.random.default_rng(0)
    for size in [(1, 1), (13, 7), (35, 21)]:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        out = JPEGDeadzone()(image, 30)
        assert out.size == image.size and out.mode == "RGB"
        assert with_codec_step(get_codec("jpeg"), JPEGDeadzone()).run(image, 30).reconstruction.size == image.size


# ------------------------------------------------------------------------------------------ the model and policy
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rp_diffusers.pipelines.testing import build_tiny_random_model

    return build_tiny_random_model(tmp_path_factory.mktemp("model") / "tiny")


def _model_with_step(model_dir, folder, validation, network_wins=False):
    """A copy of the tiny model whose jpeg adapter lost in validation, with a JPEG dead zone stored in its config."""
    from rp_diffusers.pipelines import RPPreprocessPipeline

    model = shutil.copytree(model_dir, folder)
    for info_path in (model / "adapters").glob("*/rp_adapter.json"):
        info = json.loads(info_path.read_text())
        info["validation"] = {"wins": network_wins, "bd_rate": {"psnr-rgb": 3.0}, "headline": ["psnr-rgb"]}
        info_path.write_text(json.dumps(info))
    pipe = RPPreprocessPipeline.from_pretrained(model)
    pipe.set_codec_step("jpeg", JPEGDeadzone(threshold=0.7), validation)
    pipe.save_config(model)
    return model


@pytest.mark.parametrize(
    "validation, runs, words",
    [(WINS, True, "ssimulacra2 -6.0%"), (None, True, "not validated"), ({**WINS, "wins": False}, False, "")],
)
def test_the_policy_runs_a_stored_step_only_where_it_won(model_dir, tmp_path, validation, runs, words):
    from rp_diffusers.pipelines import RPPreprocessPipeline

    pipe = RPPreprocessPipeline.from_pretrained(_model_with_step(model_dir, tmp_path / "m", validation))
    choice = pipe.adapter_for("jpeg")
    assert not choice.preprocess  # the network lost: it never runs by default
    assert (choice.codec_step == JPEGDeadzone(threshold=0.7)) is runs
    assert choice.codec_alone is (not runs)
    assert words in choice.reason and ("no network" in choice.reason) is runs
    assert pipe.adapter_for("webp").codec_step is None  # a step is per codec
    asked = choose_adapter(pipe, "jpeg", "rp_jpeg_lambda_0p5")
    assert asked.preprocess and asked.codec_step is None  # an adapter asked for runs alone: not validated with it


@pytest.mark.parametrize("step_mean, runs_step", [(-6.0, True), (-0.5, False), (None, False)])
def test_where_a_network_and_a_step_both_won_the_better_one_runs_alone(model_dir, tmp_path, step_mean, runs_step):
    from rp_diffusers.pipelines import RPPreprocessPipeline

    validation = None if step_mean is None else {**WINS, "bd_rate": {"ssimulacra2": step_mean}}  # None: unvalidated
    pipe = RPPreprocessPipeline.from_pretrained(_model_with_step(model_dir, tmp_path / "m", validation, True))
    name = "rp_jpeg_lambda_0p5"
    info = pipe.adapter_info(name)
    assert info["validation"]["wins"]
    pipe.update_adapter_info(name, validation={**info["validation"], "bd_rate": {"psnr-rgb": -1.0}})  # mean -1.0
    choice = pipe.adapter_for("jpeg")
    assert choice.preprocess is not runs_step and (choice.codec_step is not None) is runs_step
    assert ("scored less" in choice.reason or "not validated" in choice.reason) and not (
        choice.preprocess and choice.codec_step is not None
    )


def test_a_bad_stored_step_is_refused_when_the_model_loads(model_dir, tmp_path):
    from rp_diffusers.pipelines import RPPreprocessPipeline

    model = shutil.copytree(model_dir, tmp_path / "m")
    index = json.loads((model / "model_index.json").read_text())
    index["codec_steps"] = {"webp": JPEGDeadzone().config()}
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="made for jpeg"):
        RPPreprocessPipeline.from_pretrained(model)
    index["codec_steps"] = {"jpeg": {**JPEGDeadzone().config(), "validation": "yes"}}
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"codec_steps\['jpeg'\] \(model_index.json\): .*boolean 'wins'"):
        RPPreprocessPipeline.from_pretrained(model)


def test_compress_and_evaluate_run_the_step_without_the_network(model_dir, tmp_path, capsys):
    from rp_diffusers.cli import main

    model = _model_with_step(model_dir, tmp_path / "m", WINS)
    image = tmp_path / "chalet.png"
    load_image(EXAMPLES_DIR / "chalet.png").crop((0, 0, 160, 120)).save(image)
    out, table = tmp_path / "out", tmp_path / "t.json"
    argv = ["compress", str(image), "--codec", "jpeg", "--quality", "40", "--model", str(model), "--metrics", "psnr"]
    assert main([*argv, "--out", str(out), "--json", str(table)]) == 0
    assert "JPEG dead zone" in capsys.readouterr().out
    report = json.loads(table.read_text())
    assert report["meta"]["codec_step"]["threshold"] == 0.7 and report["meta"]["preprocess"] is False
    rp = (out / "chalet.rp.jpg").read_bytes()
    stepped = with_codec_step(get_codec("jpeg"), JPEGDeadzone(threshold=0.7)).encode(load_image(image), 40)
    assert rp == stepped  # no network ran: exactly the step, then libjpeg
    assert len(rp) < (out / "chalet.jpg").stat().st_size

    results = tmp_path / "eval"
    argv = ["evaluate", "--images", str(tmp_path / "chalet.png"), "--codec", "jpeg", "--qualities", "30,60"]
    argv += ["--model", str(model), "--metrics", "psnr", "--output", str(results), "--no-progress", "--workers", "0"]
    assert main(argv) == 0
    curve = json.loads((results / "rp+jpeg[deadzone].json").read_text())
    assert curve["meta"]["codec_step"]["threshold"] == 0.7
    alone = json.loads((results / "jpeg.json").read_text())
    assert curve["results"]["bpp"][0] < alone["results"]["bpp"][0]


def test_compare_and_the_space_menu_run_the_step_without_the_network(model_dir, tmp_path, chalet):
    from rp_diffusers.evaluation.compare import compare
    from rp_diffusers.pipelines import RPPreprocessPipeline
    from rp_diffusers.utils.testing import load_script

    space = load_script(Path(__file__).resolve().parents[1] / "space" / "space_support.py", "rp_space_support")
    NO_NETWORK, adapter_choice_value = space.NO_NETWORK, space.adapter_choice_value

    pipe = RPPreprocessPipeline.from_pretrained(_model_with_step(model_dir, tmp_path / "m", WINS))
    assert adapter_choice_value(pipe, "jpeg") == NO_NETWORK and adapter_choice_value(pipe, "webp") != NO_NETWORK
    step = pipe.adapter_for("jpeg").codec_step
    result = compare(pipe, chalet, "jpeg", quality=40, match="quality", pre_process=False, codec_step=step)
    assert np.array_equal(np.asarray(result.preprocessed), np.asarray(step(chalet, 40)))  # what the encoder got
    assert result.rp.bpp < result.codec_alone.bpp and result.rp.quality == result.codec_alone.quality == 40
    assert result.rp.settings["before_encoding"]["tail_threshold"] is None  # the tiny model's step: no tail
