"""The compact default model shipped in rp_diffusers/assets/default_model, and its recipe run on tiny settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rp_diffusers.adapters import adapter_record, saved_adapter_infos
from rp_diffusers.default_model import has_default_model, resolve_model
from rp_diffusers.metrics import psnr
from rp_diffusers.pipelines import RPPreprocessPipeline
from rp_diffusers.utils.image import load_image, pil_to_tensor

REPO = Path(__file__).resolve().parents[1]
# Base model (adapters off) on a 193x161 crop of val-set14 "monarch": 45.27 dB measured; the bound keeps 1.5 dB.
MIN_BASE_PSNR_MEASURED = 45.27
MIN_BASE_PSNR = MIN_BASE_PSNR_MEASURED - 1.5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    pipeline = RPPreprocessPipeline.from_pretrained(resolve_model("default"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def val_crop(val_dir):
    image = load_image(Path(val_dir) / "monarch.png")
    return image.crop((100, 100, 100 + 193, 100 + 161))  # odd width, MS-SSIM-sized


def test_default_model_is_shipped():
    # a missing shipped model is a packaging bug: fail, do not skip
    assert has_default_model(), "rp_diffusers/assets/default_model/model_index.json is missing from the package"


def test_default_model_loads_with_its_adapters(pipe):
    folder = Path(resolve_model("default"))
    # each adapter's rp_adapter.json is its one record: model_index.json lists none
    assert "adapters" not in json.loads((folder / "model_index.json").read_text())
    adapters = {name: adapter_record(name, info) for name, info in saved_adapter_infos(folder).items()}
    codecs = {record["codec"] for record in adapters.values()}
    assert "jpeg" in codecs and len(codecs) >= 2
    for codec in codecs:
        lambdas = [r["lambda"] for r in adapters.values() if r["codec"] == codec]
        assert len(lambdas) >= 2, f"{codec} has fewer than two operating points"
    assert all(name.startswith(f"rp_{r['codec']}_lambda_") for name, r in adapters.items())
    assert set(pipe.available_adapters()) == set(adapters)
    assert pipe.available_adapters() == adapters  # what the pipeline reports is what the files say


def test_default_model_keeps_odd_sizes(pipe):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = pipe(image, output_type="np").images
    assert out.shape == (1, 37, 53, 3)


def test_default_model_adapters_change_output(pipe, val_crop):
    pipe.disable_adapters()
    base = pipe(val_crop, output_type="pt").images
    for name in pipe.available_adapters():
        adapted = pipe(val_crop, adapter_name=name, output_type="pt").images
        assert (adapted - base).abs().mean() > 1e-4, f"{name} does not change the output"
    pipe.disable_adapters()


def test_default_model_base_stays_close_to_input(pipe, val_crop):
    pipe.disable_adapters()
    out = pipe(val_crop, output_type="pt").images
    value = float(psnr(pil_to_tensor(val_crop), out))
    assert value > MIN_BASE_PSNR


@pytest.mark.slow
def test_compact_recipe_runs_shortened(tmp_path, train_dir, val_dir):
    dest = tmp_path / "model"
    val = tmp_path / "val"  # two held-out crops: the validation step runs for real, on little
    val.mkdir()
    for name in ("monarch.png", "zebra.png"):
        load_image(Path(val_dir) / name).crop((0, 0, 176, 168)).save(val / name)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "PYTHON": sys.executable,
        "TRAIN": str(train_dir),
        "VAL": str(val),
        "WORK": str(tmp_path / "work"),
        "DEST": str(dest),
        "VAE_CHANNELS": "8",
        "UNET_CHANNELS": "8 16",
        "UNET_STEPS": "1",
        "UNET_RES": "32",
        "UNET_BATCH": "2",
        "RP_STEPS": "1",
        "RP_RES": "32",
        "RP_PERCEPTUAL": "0",  # MS-SSIM needs 161+ pixels a side: the tiny run trains on rate + MSE
        "LAMBDAS": "1 2",
        "VALIDATE": "1",
        "VAL_QUALITIES": "jpeg=20,40,60,80 webp=20,40,60,80",
        "DEADZONE_THRESHOLDS": "0.7,0.75/0.85",
        "DEADZONE_QUALITIES": "20,40,60,80",
    }
    subprocess.run(["bash", "training/compact_recipe.sh"], cwd=REPO, env=env, check=True, capture_output=True)
    assert "adapters" not in json.loads((dest / "model_index.json").read_text())  # rp_adapter.json: the record
    model = RPPreprocessPipeline.from_pretrained(dest)
    for name in model.available_adapters():  # every adapter carries its held-out verdict, and the policy obeys it
        verdict = model.adapter_info(name)["validation"]
        assert verdict["images"] == "val (2 photographs)" and verdict["qualities"] == [20, 40, 60, 80]
        assert verdict["trained_on"] is None and verdict["headline"] == [
            "ssimulacra2",
            "butteraugli-3norm",
            "vmaf-neg",
        ]
        assert verdict["wins"] == all(  # all three, over overlapping curves
            verdict["bd_rate"][m] < 0 and verdict["overlap"][m] >= 0.75 for m in verdict["headline"]
        )
    step = model.config.codec_steps["jpeg"]  # the dead zone, chosen on VAL, with its verdict
    assert step["step"] == "jpeg_deadzone" and (step["threshold"], step["tail_threshold"]) in (
        (0.7, None),
        (0.75, 0.85),
    )
    validation = step["validation"]
    assert validation["images"] == "val (2 photographs)" and validation["qualities"] == [20, 40, 60, 80]
    assert (model.adapter_for("jpeg").codec_step is not None) == validation["wins"]
    assert "webp" not in model.config.codec_steps
    for codec in ("jpeg", "webp"):
        choice = model.adapter_for(codec)
        names = [n for n in model.available_adapters() if n.startswith(f"rp_{codec}_")]
        winners = [n for n in names if model.adapter_info(n)["validation"]["wins"]]
        base = model.base_validation(codec)
        assert set(base["headline"]) == {"butteraugli-3norm", "vmaf-neg", "ssimulacra2"}  # trained on none of them
        if winners:
            assert choice.preprocess and choice.adapter in winners
        else:
            assert choice.adapter is None and choice.preprocess == base["wins"]
    assert (
        set(model.available_adapters())
        == set(saved_adapter_infos(dest))
        == {
            "rp_jpeg_lambda_1",
            "rp_jpeg_lambda_2",
            "rp_webp_lambda_1",
            "rp_webp_lambda_2",
        }
    )
    assert model.config.residual and type(model.vae).__name__ == "AutoencoderTiny"
    assert list(model.vae.config.block_out_channels) == [8] and model.config.vae_scale_factor == 1
    out = model(np.zeros((21, 19, 3), dtype=np.uint8), output_type="np").images
    assert out.shape == (1, 21, 19, 3)


def test_default_model_tiled_matches_untiled(pipe, val_dir):
    """Trained weights: 256-px tiles (overlap 64) vs the whole image. Measured on val-set14 barbara (720x576):
    52 dB PSNR between the two (max difference 0.048); this 400x300 crop must stay above 45 dB."""
    image = load_image(Path(val_dir) / "barbara.png").crop((0, 0, 400, 300))
    pipe.enable_adapters()
    pipe.set_adapters([next(iter(pipe.available_adapters()))])
    whole = pipe(image, output_type="pt").images
    pipe.enable_tiling(tile_size=256, overlap=64)
    try:
        tiled = pipe(image, output_type="pt").images
    finally:
        pipe.disable_tiling()
        pipe.disable_adapters()
    assert tiled.shape == whole.shape == (1, 3, 300, 400)
    assert float(psnr(whole.clamp(0, 1), tiled.clamp(0, 1))) > 45.0


def test_training_readme_validation_table_is_the_generated_one():
    """training/README.md's table of held-out verdicts is what the command it names prints from the model folder."""
    result = subprocess.run(
        [sys.executable, "benchmarks/compact_model.py", "--validation_table"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        text=True,
    )
    table = result.stdout.strip()
    lines = table.splitlines()
    assert lines[0].startswith("| configuration | trained on |") and len(lines) == 2 + 2 + 4  # 2 codecs, 4 adapters
    assert "| base + webp |" in table and "| rp_jpeg_lambda_1 + jpeg |" in table
    readme = (REPO / "training" / "README.md").read_text()
    assert table in readme, "training/README.md: paste `python benchmarks/compact_model.py --validation_table`"
    card = (Path(resolve_model("default")) / "README.md").read_text()
    assert table in card  # the model card renders the same table (benchmarks/compact_model.py --card_dir)
