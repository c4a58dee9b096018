"""``benchmarks/adapters_in_the_loop.py``: the base it trains from, and which adapters it reuses."""

import json
import shutil
from pathlib import Path

import pytest

from rp_diffusers.utils.assets import ASSETS_DIR
from rp_diffusers.utils.testing import load_script

REPO = Path(__file__).resolve().parents[1]
MODEL = ASSETS_DIR / "default_model"


def load_benchmark():
    return load_script(REPO / "benchmarks" / "adapters_in_the_loop.py", "adapters_in_the_loop")


def test_the_base_is_the_model_without_adapters_or_codec_steps(tmp_path):
    bench = load_benchmark()
    base = bench.extract_base(MODEL, tmp_path / "base")
    assert not (base / "adapters").exists()
    index = json.loads((base / "model_index.json").read_text())
    assert "codec_steps" not in index and index["_class_name"] == "RPPreprocessPipeline"
    shipped = json.loads((MODEL / "model_index.json").read_text())
    assert {k: v for k, v in shipped.items() if k != "codec_steps"} == index
    assert (base / "unet").is_dir() and (base / "vae").is_dir()
    assert bench.extract_base(MODEL, base) == base  # already there: kept


def test_reuse_of_trained_and_shipped_adapters_and_the_recipe_flags(tmp_path):
    bench = load_benchmark()
    args = bench.parse_args(["--model", str(MODEL), "--train_data_dir", "x", "--images", "y", "--reuse_shipped"])
    out = tmp_path / "surrogate" / "rp_webp_lambda_1"
    got = bench.train_adapter(args, tmp_path / "base", tmp_path / "train", "surrogate", "1", out)
    assert got["source"].startswith("shipped") and (out / "pytorch_lora_weights.safetensors").is_file()
    reused = bench.train_adapter(args, tmp_path, tmp_path, "surrogate", "1", out)
    assert reused["source"] == "reused" and reused["record"]["train_steps"] == 600
    with pytest.raises(SystemExit, match="surrogate forward, not 'rp_webp_lambda_1' with the real forward"):
        bench.train_adapter(args, tmp_path, tmp_path, "real", "1", out)  # not a loop-trained adapter
    # an adapter trained with the real codec in the loop is never taken for a proxy-trained one
    fake = tmp_path / "model"
    shutil.copytree(MODEL, fake, ignore=shutil.ignore_patterns("*.png"))
    record = fake / "adapters" / "rp_webp_lambda_2" / "rp_adapter.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "surrogate_forward": "real"}))
    args.model = str(fake)
    with pytest.raises(SystemExit, match="surrogate alone"):
        bench.train_adapter(args, tmp_path, tmp_path, "surrogate", "2", tmp_path / "s2")
    # the flags are the recipe's stage 2 (only --surrogate_forward differs between the two ways)
    recipe = (REPO / "training" / "compact_recipe.sh").read_text()
    for flag in (
        "--rate_weighting codec_slope",
        "--surrogate_rounding soft",
        "--perceptual_loss ms_ssim",
        "--quality_range 10 80",
        "--lora_target_modules to_q to_k to_v to_out.0 conv1 conv2 conv_out",
    ):
        assert flag in recipe and flag in " ".join(bench.RECIPE_FLAGS), flag  # fmt: skip
