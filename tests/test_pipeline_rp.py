"""RPPreprocessPipeline: loading, the pipeline contract, equivalence with plain diffusers, adapters, tiling."""

import copy
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rp_diffusers.adapters import (
    choose_adapter,
    format_adapter_name,
    normalize_adapter_name,
    parse_adapter_name,
    rp_lora_config,
    save_rp_adapter,
    saved_adapter_infos,
    validation_table,
)
from rp_diffusers.models.subpixel_upsample import SubpixelUpsample2D
from rp_diffusers.pipelines import RPPreprocessPipeline, RPPreprocessPipelineOutput
from rp_diffusers.utils import ImageLoadError
from rp_diffusers.utils.testing import save_tiny_sd

ADAPTER_A = "rp_jpeg_lambda_0p5"
ADAPTER_B = "rp_jpeg_lambda_2"


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    smooth = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), np.sin((xx + yy) / 11.0)], axis=-1) * 0.4 + 0.5
    noisy = smooth + rng.normal(0, 0.05, smooth.shape)
    return Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8))


def _np(pipe, image, **kwargs) -> np.ndarray:
    return pipe(image, output_type="np", **kwargs).images


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, stock_dir):
    """Two rank-4 adapters with random (non-identity) weights, saved by save_rp_adapter."""
    pipe = RPPreprocessPipeline.from_pretrained(stock_dir)
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for seed, name in enumerate((ADAPTER_A, ADAPTER_B)):
        torch.manual_seed(seed + 10)
        pipe.unet.add_adapter(rp_lora_config(rank=4, init_lora_weights=False), adapter_name=name)
        dirs[name] = save_rp_adapter(pipe.unet, root / name, name, extra={"base_model": "tiny"})
    return dirs


def _pipe(stock_dir, **kwargs) -> RPPreprocessPipeline:
    pipe = RPPreprocessPipeline.from_pretrained(stock_dir, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(stock_dir):
    return _pipe(stock_dir)


@pytest.fixture
def lora_pipe(stock_dir, adapter_dirs):
    pipe = _pipe(stock_dir)
    for path in adapter_dirs.values():
        pipe.load_lora_weights(path)
    return pipe


# ----------------------------------------------------------------------------------------------------- loading
def test_pipeline_from_stock_folder_ignores_extra_components(stock_dir):
    index = json.loads((stock_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and "safety_checker" in index
    pipe = RPPreprocessPipeline.from_pretrained(stock_dir)
    assert pipe.text_encoder is not None and not hasattr(pipe, "safety_checker")
    assert (pipe.config.timestep, pipe.config.prompt, pipe.config.vae_scale_factor) == (999, "", 2)
    assert pipe.pad_multiple == 4 and pipe.model_cpu_offload_seq == "text_encoder->unet->vae"


def test_pipeline_top_level_lazy_export():
    import rp_diffusers

    assert rp_diffusers.RPPreprocessPipeline is RPPreprocessPipeline
    assert rp_diffusers.RPPreprocessPipelineOutput is RPPreprocessPipelineOutput


def test_pipeline_stock_folder_without_text_encoder_errors_clearly(stock_dir):
    with pytest.raises(ValueError, match="text encoder and tokenizer are needed"):
        RPPreprocessPipeline.from_pretrained(stock_dir, text_encoder=None, tokenizer=None)


def test_pipeline_timestep_config_changes_output_and_is_checked(stock_dir):
    image = _image(16, 20)
    base = _np(_pipe(stock_dir), image)
    sid = _pipe(stock_dir, timestep=625)
    assert sid.config.timestep == 625
    assert np.abs(_np(sid, image) - base).max() > 1e-3
    with pytest.raises(ValueError, match="timestep"):
        RPPreprocessPipeline.from_pretrained(stock_dir, timestep=1000)


def test_pipeline_add_noise_follows_generator(stock_dir):
    image = _image(16, 20)
    clean = _np(_pipe(stock_dir), image)
    noisy = _pipe(stock_dir, add_noise=True)
    first = _np(noisy, image, generator=torch.Generator().manual_seed(1))
    again = _np(noisy, image, generator=torch.Generator().manual_seed(1))
    other = _np(noisy, image, generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3 and np.abs(first - clean).max() > 1e-3


# ------------------------------------------------------------------------------------------ pipeline contract
@pytest.mark.parametrize("size", [(37, 53), (1, 1), (5, 3), (64, 16)])
def test_pipeline_odd_sizes_come_back_unchanged(pipe, size):
    width, height = size
    out = pipe(_image(height, width)).images
    assert len(out) == 1 and out[0].size == (width, height) and out[0].mode == "RGB"


def test_pipeline_output_types_agree(pipe):
    image = _image(18, 22)
    pil = pipe(image, output_type="pil").images
    arr = pipe(image, output_type="np").images
    ten = pipe(image, output_type="pt").images
    assert isinstance(pil, list) and isinstance(pil[0], Image.Image)
    assert arr.shape == (1, 18, 22, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    assert ten.shape == (1, 3, 18, 22)
    np.testing.assert_array_equal(ten.permute(0, 2, 3, 1).numpy(), arr)
    np.testing.assert_array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match="output_type"):
        pipe(image, output_type="latent")


def test_pipeline_mixed_size_list_keeps_sizes_and_order(pipe):
    images = [_image(12, 20, 1), np.asarray(_image(9, 7, 2)), _image(12, 20, 3), torch.rand(3, 10, 6)]
    out = pipe(images, output_type="np").images
    assert [a.shape for a in out] == [(12, 20, 3), (9, 7, 3), (12, 20, 3), (10, 6, 3)]
    np.testing.assert_allclose(out[1], _np(pipe, images[1])[0], atol=1e-6)
    np.testing.assert_allclose(out[2], _np(pipe, images[2])[0], atol=1e-5)


def test_pipeline_batching_equals_one_by_one(pipe):
    images = [_image(16, 24, seed) for seed in range(3)]
    batched = _np(pipe, images, batch_size=3)
    single = np.concatenate([_np(pipe, image) for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_pipeline_dict_and_tuple_outputs_match(pipe):
    image = _image(16, 16)
    as_dict = pipe(image, output_type="np")
    as_tuple = pipe(image, output_type="np", return_dict=False)
    assert isinstance(as_dict, RPPreprocessPipelineOutput) and isinstance(as_tuple, tuple) and len(as_tuple) == 1
    np.testing.assert_array_equal(as_dict.images, as_tuple[0])


def test_pipeline_bf16_close_to_fp32(stock_dir):
    image = _image(20, 28)
    fp32 = _np(_pipe(stock_dir), image)
    bf16_pipe = _pipe(stock_dir, torch_dtype=torch.bfloat16)
    assert bf16_pipe.unet.dtype == torch.bfloat16
    bf16 = _np(bf16_pipe, image)
    assert np.abs(bf16 - fp32).mean() < 0.01 and np.abs(bf16 - fp32).max() < 0.1


def test_pipeline_fp16_close_to_fp32(stock_dir):
    image = _image(20, 28)
    fp32 = _np(_pipe(stock_dir), image)
    fp16_pipe = _pipe(stock_dir, torch_dtype=torch.float16)
    assert fp16_pipe.unet.dtype == torch.float16 and fp16_pipe.vae.dtype == torch.float16
    fp16 = _np(fp16_pipe, image)
    assert fp16.dtype == np.float32 and np.isfinite(fp16).all()
    assert np.abs(fp16 - fp32).mean() < 0.005 and np.abs(fp16 - fp32).max() < 0.05


def test_pipeline_accepts_a_tiny_autoencoder(stock_dir, tmp_path):
    """Swapping in diffusers' AutoencoderTiny (TAESD's class, no posterior) works and survives save/load."""
    from diffusers import AutoencoderTiny

    pipe = _pipe(stock_dir)
    torch.manual_seed(0)
    pipe.vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=pipe.unet.config.in_channels,
    )
    pipe.register_modules(vae=pipe.vae)
    image = _image(13, 22)
    out = _np(pipe, image)
    assert out.shape == (1, 13, 22, 3) and np.isfinite(out).all()
    pipe.save_pretrained(tmp_path / "tiny-vae")
    again = _pipe(tmp_path / "tiny-vae")
    assert type(again.vae).__name__ == "AutoencoderTiny"
    np.testing.assert_allclose(_np(again, image), out, atol=1e-6)


def test_pipeline_model_cpu_offload_keeps_output(stock_dir):
    image = _image(16, 20)
    expected = _np(_pipe(stock_dir), image)
    pipe = _pipe(stock_dir)
    pipe.enable_model_cpu_offload(device="cpu")
    np.testing.assert_allclose(_np(pipe, image), expected, atol=1e-6)


def test_pipeline_bad_inputs_raise_clear_errors(pipe):
    with pytest.raises(ImageLoadError, match="empty list"):
        pipe([])
    with pytest.raises(ImageLoadError, match="cannot read an image from int"):
        pipe(3)
    with pytest.raises(ImageLoadError, match="no such image file"):
        pipe("does/not/exist.png")
    with pytest.raises(ValueError, match="batch_size"):
        pipe(_image(8, 8), batch_size=0)
    with pytest.raises(ValueError, match="adapter_weights needs adapter_name"):
        pipe(_image(8, 8), adapter_weights=[0.5])


def test_pipeline_optimize_for_cpu_exact_and_bf16_modes(stock_dir):
    image = _image(20, 28)
    expected = _np(_pipe(stock_dir), image)
    exact = _pipe(stock_dir)
    exact.optimize_for_cpu(vae_dtype=None)  # channels-last and sub-pixel upsampling, both exact up to rounding
    assert exact.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    switched = [m for m in exact.components.values() if isinstance(m, torch.nn.Module) for m in m.modules()]
    assert sum(isinstance(m, SubpixelUpsample2D) for m in switched) >= 2  # the VAE's and the UNet's upsamplers
    np.testing.assert_allclose(_np(exact, image), expected, atol=1e-5)
    fast = _pipe(stock_dir)
    fast.optimize_for_cpu()
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert fast.vae.dtype == torch.bfloat16 and fast.unet.dtype == torch.float32
    difference = np.abs(_np(fast, image) - expected)
    assert difference.mean() < 0.01 and difference.max() < 0.1


def test_pipeline_prompt_embeds_setter_and_set_prompt(pipe):
    image = _image(12, 16)
    empty = _np(pipe, image)
    pipe.set_prompt("the")
    assert pipe.config.prompt == "the"
    assert not torch.equal(pipe.prompt_embeds, pipe.encode_prompt(""))
    assert np.abs(_np(pipe, image) - empty).max() > 1e-4
    pipe.prompt_embeds = pipe.encode_prompt("")
    np.testing.assert_array_equal(_np(pipe, image), empty)
    with pytest.raises(ValueError, match=r"\(1, L, D\)"):
        pipe.prompt_embeds = torch.zeros(2, 3)


# ---------------------------------------------------------------------------------------------- save / load
def test_pipeline_save_load_round_trip_is_identical(pipe, tmp_path):
    image = _image(20, 24)
    before = _np(pipe, image)
    pipe.drop_text_encoder()
    assert pipe.text_encoder is None and pipe.tokenizer is None
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "prompt_embeds.safetensors").is_file() and not (tmp_path / "text_encoder").exists()
    loaded = _pipe(tmp_path)
    assert loaded.text_encoder is None
    torch.testing.assert_close(loaded.prompt_embeds, pipe.prompt_embeds, rtol=0, atol=0)
    np.testing.assert_array_equal(_np(loaded, image), before)


def test_pipeline_round_trip_keeps_config(stock_dir, tmp_path):
    pipe = _pipe(stock_dir, timestep=625, residual=True)
    pipe.save_pretrained(tmp_path)
    loaded = _pipe(tmp_path)
    assert (loaded.config.timestep, loaded.config.residual, loaded.text_encoder is not None) == (625, True, True)
    np.testing.assert_array_equal(_np(loaded, _image(12, 12)), _np(pipe, _image(12, 12)))


# ------------------------------------------------------------------------------ equivalence with plain diffusers
def test_pipeline_fixed_output_slice(pipe):
    """diffusers-style regression check: the tiny seed-0 model's output corner and mean, recorded once."""
    out = _np(pipe, _image(24, 32))
    assert out.shape == (1, 24, 32, 3)
    expected = np.array([0.4081, 0.4242, 0.5115, 0.4634, 0.4450, 0.4107, 0.4657, 0.4551, 0.4313])
    np.testing.assert_allclose(out[0, -3:, -3:, -1].flatten(), expected, atol=1e-3)
    assert float(out.mean()) == pytest.approx(0.45835, abs=1e-3)


def test_pipeline_equals_plain_diffusers_path(stock_dir):
    """vae.encode -> unet at t=999 -> DDPMScheduler's x0 -> vae.decode with diffusers' own SD pipeline parts."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(stock_dir, safety_checker=None)
    image = _image(24, 32)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        embeds, _ = sd.encode_prompt("", "cpu", 1, do_classifier_free_guidance=False)
        latents = sd.vae.encode(x * 2 - 1).latent_dist.mode() * sd.vae.config.scaling_factor
        eps = sd.unet(latents, 999, encoder_hidden_states=embeds).sample
        scheduler = DDPMScheduler.from_config(sd.scheduler.config, clip_sample=False)
        x0 = scheduler.step(eps, 999, latents).pred_original_sample
        plain = (sd.vae.decode(x0 / sd.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    ours = RPPreprocessPipeline.from_pretrained(stock_dir)(image, output_type="pt").images
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- adapters
def test_adapters_name_format_and_parse_round_trip():
    assert format_adapter_name("BPG", 0.5) == "rp_bpg_lambda_0p5"
    assert format_adapter_name("jpeg", 1e-5) == "rp_jpeg_lambda_1em05"
    assert parse_adapter_name("rp_jpeg_lambda_1em05") == ("jpeg", 1e-5)
    assert parse_adapter_name("rp_webp_lambda_0.25") == ("webp", 0.25)
    assert parse_adapter_name("rp_jpeg_xl_lambda_2") == ("jpeg_xl", 2.0)
    assert normalize_adapter_name("rp_bpg_lambda_0.5") == "rp_bpg_lambda_0p5"
    assert normalize_adapter_name("my_lora") == "my_lora"
    with pytest.raises(ValueError, match="not an rp adapter name"):
        parse_adapter_name("jpeg_0.5")
    with pytest.raises(ValueError, match="non-negative"):
        format_adapter_name("jpeg", -1)


def test_adapters_saved_folder_holds_weights_and_info(adapter_dirs):
    from safetensors import safe_open

    folder = adapter_dirs[ADAPTER_A]
    info = json.loads((folder / "rp_adapter.json").read_text())
    assert info["codec"] == "jpeg" and info["lambda"] == 0.5 and info["rank"] == 4 and info["base_model"] == "tiny"
    assert info["target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]
    with safe_open(folder / "pytorch_lora_weights.safetensors", "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("unet.") and "lora" in key for key in keys)


def test_pipeline_load_lora_records_adapters_and_changes_output(stock_dir, lora_pipe):
    assert lora_pipe.available_adapters() == {
        ADAPTER_A: {"codec": "jpeg", "lambda": 0.5, "rank": 4, "lora_alpha": 4.0},
        ADAPTER_B: {"codec": "jpeg", "lambda": 2.0, "rank": 4, "lora_alpha": 4.0},
    }
    image = _image(16, 20)
    base = _np(_pipe(stock_dir), image)
    out_a = _np(lora_pipe, image, adapter_name="rp_jpeg_lambda_0.5")  # the dotted spelling works too
    assert np.abs(out_a - base).max() > 0.01


def test_pipeline_call_adapter_selection_is_scoped_to_the_call(stock_dir, lora_pipe):
    image = _image(16, 20)
    base = _np(_pipe(stock_dir), image)
    lora_pipe.set_adapters(ADAPTER_B, 0.5)
    before = _np(lora_pipe, image)
    out_a = _np(lora_pipe, image, adapter_name=ADAPTER_A)
    assert np.abs(out_a - before).max() > 0.01
    assert lora_pipe.get_active_adapters() == [ADAPTER_B]  # restored, weight included
    np.testing.assert_array_equal(_np(lora_pipe, image), before)
    np.testing.assert_array_equal(_np(lora_pipe, image, adapter_name=[]), base)  # [] = base model, this call
    np.testing.assert_array_equal(_np(lora_pipe, image), before)
    lora_pipe.disable_adapters()
    np.testing.assert_array_equal(_np(lora_pipe, image, adapter_name=ADAPTER_A), out_a)
    np.testing.assert_array_equal(_np(lora_pipe, image), base)  # still disabled after the call
    with pytest.raises(ValueError, match="adapter_weights needs adapter_name"):
        lora_pipe(image, adapter_weights=0.5)


def test_pipeline_concurrent_calls_each_run_their_own_adapters(stock_dir, lora_pipe, monkeypatch):
    """Threads that call one pipeline with different adapters take turns (``adapter_lock``): each call's output is
    the one it gets alone. The pause inside each call gives another thread time to change the selection, which
    it could do without the lock."""
    image = _image(16, 20)
    choices = {"a": ADAPTER_A, "b": ADAPTER_B, "base": []}
    alone = {key: _np(lora_pipe, image, adapter_name=name) for key, name in choices.items()}
    assert np.abs(alone["a"] - alone["b"]).max() > 0.01
    run = lora_pipe._run

    def slow_run(*args, **kwargs):
        time.sleep(0.05)
        return run(*args, **kwargs)

    monkeypatch.setattr(lora_pipe, "_run", slow_run)
    start = threading.Barrier(6)
    outputs: dict[tuple[str, int], np.ndarray] = {}

    def call(key: str, index: int) -> None:
        start.wait()
        outputs[key, index] = _np(lora_pipe, image, adapter_name=choices[key])

    threads = [threading.Thread(target=call, args=(key, i), daemon=True) for i in range(2) for key in choices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outputs) == 6
    for (key, _), out in outputs.items():
        np.testing.assert_array_equal(out, alone[key])
    lora_pipe.set_adapters(ADAPTER_B)  # set_adapters takes the same (re-entrant) lock
    with lora_pipe.adapter_lock:
        lora_pipe.set_adapters(ADAPTER_A)
    assert lora_pipe.get_active_adapters() == [ADAPTER_A]
    copied = copy.deepcopy(lora_pipe)  # the lock lives outside the pipeline: a used pipeline still copies
    assert copied.adapter_lock is not lora_pipe.adapter_lock  # its own UNet, its own lock
    sharing = RPPreprocessPipeline(**lora_pipe.components)
    assert sharing.adapter_lock is lora_pipe.adapter_lock  # one UNet, one lock


def _with_validation(folder, verdicts: dict) -> None:
    for name, (rate, wins) in verdicts.items():
        path = folder / "adapters" / name / "rp_adapter.json"
        data = json.loads(path.read_text())
        data["validation"] = {"bd_rate": {"vmaf-neg": rate}, "headline": ["vmaf-neg"], "wins": wins, "images": "v"}
        path.write_text(json.dumps(data))


def test_pipeline_adapter_for_picks_only_validated_winners_else_the_codec_alone(lora_pipe, tmp_path):
    lora_pipe.drop_text_encoder()
    lora_pipe.save_pretrained(tmp_path)
    unvalidated = _pipe(tmp_path)
    first = unvalidated.adapter_for("jpeg")  # no records: the first adapter for the codec, by name, flagged
    assert (first.adapter, first.preprocess) == (ADAPTER_A, True) and "not validated" in first.reason
    assert unvalidated.adapter_for("webp").adapter is None and unvalidated.adapter_for("webp").preprocess

    _with_validation(tmp_path, {ADAPTER_A: (-1.0, True), ADAPTER_B: (-4.0, True)})
    both = _pipe(tmp_path).adapter_for("jpeg")
    assert (both.adapter, both.preprocess) == (ADAPTER_B, True) and "vmaf-neg -4.0%" in both.reason  # the best
    _with_validation(tmp_path, {ADAPTER_A: (-1.0, True), ADAPTER_B: (3.0, False)})
    assert _pipe(tmp_path).adapter_for("jpeg").adapter == ADAPTER_A  # a loser is never picked
    _with_validation(tmp_path, {ADAPTER_A: (2.0, False), ADAPTER_B: (3.0, False)})
    loaded = _pipe(tmp_path)
    choice = loaded.adapter_for("jpeg")
    assert (choice.adapter, choice.preprocess) == (None, False)
    assert choice.reason == (
        "jpeg alone: on v rp_jpeg_lambda_0p5, rp_jpeg_lambda_2 did not beat it; --adapter NAME runs one anyway"
    )
    assert loaded.adapter_for("webp").preprocess is False  # a validated model: nothing shown to help webp

    # the base model's own verdict (adapters/base_validation.json) is the fallback before the codec alone
    loaded.set_base_validation("jpeg", {"bd_rate": {"vmaf-neg": -0.5}, "headline": ["vmaf-neg"], "wins": True})
    loaded.set_base_validation("webp", {"bd_rate": {"vmaf-neg": 0.5}, "headline": ["vmaf-neg"], "wins": False})
    base = loaded.adapter_for("jpeg")
    assert (base.adapter, base.preprocess) == (None, True) and base.reason.startswith("the base model")
    webp = loaded.adapter_for("webp")
    assert webp.preprocess is False and webp.reason.startswith("webp alone: on the validation photographs the base")

    # rp_adapter.json is the one record: saving the pipeline again keeps the verdict and the training record
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "adapters" / ADAPTER_A / "rp_adapter.json").read_text())
    assert again["validation"]["wins"] is False and again["base_model"] == "tiny"
    reloaded = _pipe(tmp_path / "again")
    assert reloaded.base_validation() == loaded.base_validation()
    assert reloaded.adapter_for("jpeg").preprocess is True and reloaded.adapter_for("webp").preprocess is False


def test_pipeline_rp_adapter_json_is_the_one_record_the_policy_follows(lora_pipe, tmp_path):
    """Metadata changed only in an adapter's rp_adapter.json is what the pipeline reports, decides from and saves."""
    lora_pipe.drop_text_encoder()
    lora_pipe.save_pretrained(tmp_path)
    assert "adapters" not in json.loads((tmp_path / "model_index.json").read_text())  # no second copy
    assert saved_adapter_infos(tmp_path)[ADAPTER_B]["lambda"] == 2.0
    path = tmp_path / "adapters" / ADAPTER_B / "rp_adapter.json"
    info = json.loads(path.read_text())
    info.update(codec="webp", **{"lambda": 3.0})
    info["validation"] = {"bd_rate": {"vmaf-neg": -2.0}, "headline": ["vmaf-neg"], "wins": True, "images": "v"}
    path.write_text(json.dumps(info))

    loaded = _pipe(tmp_path)
    assert loaded.available_adapters() == {
        ADAPTER_A: {"codec": "jpeg", "lambda": 0.5, "rank": 4, "lora_alpha": 4.0},
        ADAPTER_B: {"codec": "webp", "lambda": 3.0, "rank": 4, "lora_alpha": 4.0},
    }
    webp = loaded.adapter_for("webp")
    assert (webp.adapter, webp.preprocess) == (ADAPTER_B, True) and "vmaf-neg -2.0%" in webp.reason
    jpeg = loaded.adapter_for("jpeg")  # B is no longer a jpeg adapter; A, unvalidated, is not picked
    assert (jpeg.adapter, jpeg.preprocess) == (None, False) and f"{ADAPTER_A} was not validated" in jpeg.reason
    assert choose_adapter(loaded, "webp").adapter == ADAPTER_B

    loaded.save_pretrained(tmp_path / "again")  # the edited record is written back, not regenerated from the name
    again = json.loads((tmp_path / "again" / "adapters" / ADAPTER_B / "rp_adapter.json").read_text())
    assert (again["codec"], again["lambda"], again["validation"]["wins"]) == ("webp", 3.0, True)
    assert _pipe(tmp_path / "again").adapter_for("webp").adapter == ADAPTER_B


def test_pipeline_old_model_index_adapters_list_is_ignored(lora_pipe, tmp_path):
    """A folder saved before rp_adapter.json became the one record lists its adapters in model_index.json: that
    copy is not read (here it is stale: one adapter, another codec); saving again drops it."""
    lora_pipe.drop_text_encoder()
    lora_pipe.save_pretrained(tmp_path)
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    index["adapters"] = {ADAPTER_A: {"codec": "avif", "lambda": 9.0, "rank": 4}}
    index_path.write_text(json.dumps(index))
    loaded = _pipe(tmp_path)
    assert loaded.available_adapters() == lora_pipe.available_adapters()
    assert loaded.available_adapters()[ADAPTER_A]["codec"] == "jpeg"
    assert loaded.adapter_for("avif").adapter is None and loaded.adapter_for("jpeg").adapter == ADAPTER_A
    loaded.save_pretrained(tmp_path / "again")
    assert "adapters" not in json.loads((tmp_path / "again" / "model_index.json").read_text())


def test_pipeline_saved_adapters_are_the_folders_in_adapters(lora_pipe, adapter_dirs, tmp_path):
    """from_pretrained loads every adapters/<name>/ folder; saving leaves exactly the loaded adapters there."""
    import shutil

    lora_pipe.drop_text_encoder()
    lora_pipe.delete_adapters(ADAPTER_B)
    lora_pipe.save_pretrained(tmp_path)
    assert set(_pipe(tmp_path).available_adapters()) == {ADAPTER_A}
    shutil.copytree(adapter_dirs[ADAPTER_B], tmp_path / "adapters" / ADAPTER_B)  # an adapter added by hand
    (tmp_path / "adapters" / ADAPTER_B / "notes.txt").write_text("the user's file")
    both = _pipe(tmp_path)
    assert set(both.available_adapters()) == {ADAPTER_A, ADAPTER_B}
    assert both.adapter_info(ADAPTER_B)["base_model"] == "tiny"

    both.delete_adapters(ADAPTER_A)
    both.save_pretrained(tmp_path)  # in place: ADAPTER_A's files go, so it does not come back on loading
    assert not (tmp_path / "adapters" / ADAPTER_A).exists()
    assert set(saved_adapter_infos(tmp_path)) == set(_pipe(tmp_path).available_adapters()) == {ADAPTER_B}
    both.delete_adapters(ADAPTER_B)
    both.save_pretrained(tmp_path)
    assert (tmp_path / "adapters" / ADAPTER_B / "notes.txt").read_text() == "the user's file"  # left alone
    assert not (tmp_path / "adapters" / ADAPTER_B / "rp_adapter.json").exists()
    assert not (tmp_path / "adapters" / "active_adapters.json").exists()
    assert _pipe(tmp_path).available_adapters() == {}

    (tmp_path / "adapters" / ADAPTER_B / "rp_adapter.json").write_text(json.dumps({"adapter_name": ADAPTER_B}))
    with pytest.raises(ValueError, match=f"no adapters/{ADAPTER_B}/pytorch_lora_weights.safetensors"):
        _pipe(tmp_path)


def test_saved_adapter_records_of_a_hub_repo_come_from_its_adapter_files(lora_pipe, tmp_path, monkeypatch):
    """A Hub repo's adapters are found the same way: its adapters/ JSON and weights files are downloaded."""
    import huggingface_hub

    lora_pipe.drop_text_encoder()
    lora_pipe.save_pretrained(tmp_path)
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    infos = saved_adapter_infos("org/rp-model", revision="main")
    assert list(infos) == [ADAPTER_A, ADAPTER_B] and infos[ADAPTER_A]["base_model"] == "tiny"
    assert calls == [
        (
            "org/rp-model",
            ["adapters/*.json", "adapters/*/pytorch_lora_weights.safetensors"],
            {"revision": "main"},
        )
    ]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path / "nothing"))
    assert saved_adapter_infos("org/no-adapters") == {} and validation_table("org/no-adapters").count("\n") == 1


def test_validation_table_reads_the_recorded_verdicts(lora_pipe, tmp_path):
    lora_pipe.drop_text_encoder()
    lora_pipe.set_base_validation("jpeg", {"bd_rate": {"psnr-rgb": -1.0}, "wins": True})
    lora_pipe.update_adapter_info(
        ADAPTER_A,
        validation={"bd_rate": {"ssimulacra2": 2.5}, "codec": "jpeg", "trained_on": "ms_ssim", "wins": False},
    )
    lora_pipe.save_pretrained(tmp_path)
    assert validation_table(tmp_path, "(stage 1)").splitlines()[2:] == [
        "| base + jpeg | (stage 1) | - | - | - | -1.00% | **wins (default)** |",
        f"| {ADAPTER_A} + jpeg | ms_ssim | +2.50% | - | - | - | loses |",
    ]


def test_pipeline_weighted_adapter_mix_lies_between(lora_pipe):
    image = _image(16, 20)
    out_a = _np(lora_pipe, image, adapter_name=ADAPTER_A)
    out_b = _np(lora_pipe, image, adapter_name=ADAPTER_B)
    mix = _np(lora_pipe, image, adapter_name=[ADAPTER_A, ADAPTER_B], adapter_weights=[0.5, 0.5])
    spread = np.abs(out_a - out_b).mean()
    assert spread > 0.005
    assert np.abs(mix - out_a).mean() < spread and np.abs(mix - out_b).mean() < spread
    half = _np(lora_pipe, image, adapter_name=ADAPTER_A, adapter_weights=0.5)
    lora_pipe.disable_adapters()
    base = _np(lora_pipe, image)
    assert np.abs(half - base).mean() < np.abs(out_a - base).mean() and np.abs(half - out_a).mean() > 0


def test_pipeline_disable_adapters_restores_base_exactly(stock_dir, lora_pipe):
    image = _image(16, 20)
    base = _np(_pipe(stock_dir), image)
    _np(lora_pipe, image, adapter_name=ADAPTER_A)
    lora_pipe.disable_adapters()
    np.testing.assert_array_equal(_np(lora_pipe, image), base)
    lora_pipe.enable_adapters()
    assert np.abs(_np(lora_pipe, image) - base).max() > 0.01


def test_pipeline_fuse_lora_matches_unfused(lora_pipe):
    image = _image(16, 20)
    lora_pipe.set_adapters([ADAPTER_A, ADAPTER_B], [0.7, 0.3])
    unfused = _np(lora_pipe, image)
    lora_pipe.fuse_lora()
    fused = _np(lora_pipe, image)
    np.testing.assert_allclose(fused, unfused, atol=1e-4)
    with pytest.raises(ValueError, match="unfuse_lora"):
        lora_pipe.save_pretrained("unused")
    lora_pipe.unfuse_lora()
    np.testing.assert_allclose(_np(lora_pipe, image), unfused, atol=1e-5)


def test_pipeline_save_load_with_adapters_round_trip(lora_pipe, tmp_path):
    image = _image(16, 20)
    lora_pipe.set_adapters([ADAPTER_A, ADAPTER_B], [0.25, 1.0])  # the selection is saved with the pipeline
    expected = _np(lora_pipe, image)
    lora_pipe.drop_text_encoder()
    lora_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "adapters" / ADAPTER_B / "pytorch_lora_weights.safetensors").is_file()
    loaded = _pipe(tmp_path)
    assert loaded.available_adapters() == lora_pipe.available_adapters()
    np.testing.assert_array_equal(_np(loaded, image), expected)
    # The saved base UNet holds no LoRA tensors: disabling adapters gives the stock model's output.
    loaded.disable_adapters()
    lora_pipe.disable_adapters()
    np.testing.assert_array_equal(_np(loaded, image), _np(lora_pipe, image))


def test_pipeline_loads_bare_save_lora_adapter_folder(stock_dir, tmp_path, adapter_dirs, lora_pipe):
    """Folders from unet.save_lora_adapter (keys without the 'unet.' prefix) load too."""
    lora_pipe.unet.save_lora_adapter(tmp_path / "bare", adapter_name=ADAPTER_A)
    pipe = _pipe(stock_dir)
    pipe.load_lora_weights(tmp_path / "bare", adapter_name=ADAPTER_A)
    image = _image(16, 20)
    np.testing.assert_array_equal(
        _np(pipe, image, adapter_name=ADAPTER_A), _np(lora_pipe, image, adapter_name=ADAPTER_A)
    )
    with pytest.raises(ValueError, match="not in the list of present adapters"):
        pipe(image, adapter_name="rp_jpeg_lambda_9")


# ------------------------------------------------------------------------------------------------------ tiling
def test_pipeline_tiled_output_close_to_untiled(stock_dir):
    image = _image(96, 136, seed=4)
    pipe = _pipe(stock_dir)
    pipe.disable_tiling()
    whole = _np(pipe, image)[0].mean(-1)
    pipe.enable_tiling(tile_size=96, overlap=32)
    assert pipe._num_tiles(96, 136) == 2
    difference = np.abs(_np(pipe, image)[0].mean(-1) - whole)
    # Measured on this tiny random model: max 0.144, mean 0.018. The gap is spread over the image (GroupNorm and
    # attention see one tile, not the whole), not concentrated where the tiles meet (columns 40-96).
    assert difference.max() < 0.25 and difference.mean() < 0.03
    assert difference[:, 40:96].mean() < 2 * difference.mean()


def test_pipeline_large_image_tiled_keeps_size_without_seams(stock_dir):
    from diffusers import AutoencoderKL

    from rp_diffusers.utils.testing import tiny_sd_components
    from rp_diffusers.utils.tiling import tile_starts

    assert _pipe(stock_dir)._num_tiles(1100, 1500) == 6  # the SD default: 768 px tiles sharing at least 128 px
    # A cheaper VAE (factor 4, no attention) keeps this 1.6-megapixel test fast; the pipeline is built in code.
    components = tiny_sd_components()
    torch.manual_seed(0)
    components["vae"] = AutoencoderKL(
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        mid_block_add_attention=False,
    ).eval()
    pipe = RPPreprocessPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_tiling(tile_size=384, overlap=64)
    out = pipe(_image(1100, 1500, seed=5), output_type="np").images[0]
    assert out.shape == (1100, 1500, 3)
    # No seams: column-to-column steps where tiles overlap are no larger than anywhere else.
    steps = np.abs(np.diff(out, axis=1)).mean(axis=(0, 2))
    in_band = np.zeros_like(steps, dtype=bool)
    for start in tile_starts(1504, 384, 64, align=pipe.pad_multiple)[1:]:
        in_band[start - 1 : start + 64] = True
    in_band[:8] = in_band[-8:] = False
    outside = ~in_band
    outside[:8] = outside[-8:] = False  # the image border has its own (padding) statistics
    assert steps[in_band].max() <= 1.2 * steps[outside].max()


# ---------------------------------------------------------------------------------------------------------- CLI
def test_compress_cli_writes_both_files_and_table(stock_dir, tmp_path, capsys):
    from rp_diffusers.cli import main

    paths = []
    for seed, (height, width) in enumerate([(40, 48), (30, 36)]):
        paths.append(tmp_path / f"img{seed}.png")
        _image(height, width, seed).save(paths[-1])
    out, table = tmp_path / "out", tmp_path / "table.json"
    argv = ["compress", *map(str, paths), "--codec", "jpeg", "--quality", "40", "--model", str(stock_dir)]
    assert main([*argv, "--metrics", "psnr", "--out", str(out), "--json", str(table)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0.jpg", "img0.rp.jpg", "img1.jpg", "img1.rp.jpg"]
    report = json.loads(table.read_text())
    rows = report["per_image"]
    assert report["results"]["variant"] == ["codec alone", "rp + codec"]  # CompressAI's schema: means per variant
    alone = [r["bpp"] for r in rows if r["variant"] == "codec alone"]
    assert report["results"]["bpp"][0] == pytest.approx(sum(alone) / len(alone))
    assert [(r["image"], r["variant"]) for r in rows][:2] == [("img0.png", "codec alone"), ("img0.png", "rp + codec")]
    for row in rows:
        width, height = Image.open(row["file"]).size
        assert row["bpp"] == pytest.approx(8 * Path(row["file"]).stat().st_size / (width * height))
        assert row["quality"] == 40 and 10 < row["psnr-rgb"] < 60  # CompressAI's keys, as the results files
    printed = capsys.readouterr().out
    assert "rp + codec" in printed and "codec alone" in printed and "psnr" in printed


def test_compress_cli_default_model_absent_says_what_to_do(tmp_path, capsys, monkeypatch):
    from rp_diffusers import default_model
    from rp_diffusers.cli import main

    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", tmp_path / "no_model")  # an install without it
    _image(16, 16).save(tmp_path / "a.png")
    assert main(["compress", str(tmp_path / "a.png"), "--out", str(tmp_path / "out")]) == 2
    assert "pass --model" in capsys.readouterr().err
