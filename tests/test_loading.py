"""The one pipeline loader (``rp_diffusers.utils.loading``) behind ``load_preprocessor`` and ``load_pipeline``."""

from __future__ import annotations

import pytest
import torch

from rp_diffusers.default_model import DEFAULT_MODEL_DIR, has_default_model, load_preprocessor, resolve_model
from rp_diffusers.pipelines import RPPreprocessPipeline
from rp_diffusers.pipelines.perceptual_decode import (
    DEFAULT_DECODE_MODEL_DIR,
    PerceptualDecodePipeline,
    load_pipeline,
    resolve_decode_model,
)
from rp_diffusers.utils.loading import ModelLoadError, load_pretrained, resolve_device, resolve_packaged


@pytest.mark.parametrize("loader", [load_preprocessor, load_pipeline], ids=["preprocessor", "decoder"])
def test_a_missing_model_says_how_to_get_it(loader, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "not-a-model"
    with pytest.raises(ModelLoadError, match="huggingface-cli download .* --local-dir DIR") as caught:
        loader(str(missing), "cpu")
    # One error type for both loaders, and it is what each raised before (OSError; RuntimeError for decoding).
    assert isinstance(caught.value, OSError) and isinstance(caught.value, RuntimeError)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize("loader", [load_preprocessor, load_pipeline], ids=["preprocessor", "decoder"])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"dtype": "float64"}, "dtype must be one of float32, float16, bfloat16"), ({"device": "nonsense"}, "device")],
)
def test_bad_device_or_dtype_is_refused_before_loading(loader, kwargs, message, tmp_path):
    # The folder does not exist: the argument checks come first, so the error is about them, not about the model.
    with pytest.raises(ValueError, match=message):
        loader(str(tmp_path / "absent"), **{"device": "cpu", **kwargs})


def test_packaged_names_resolve_to_the_shipped_folders_and_others_pass_through(tmp_path):
    assert resolve_model("some/hub-id") == "some/hub-id"
    assert resolve_decode_model(str(tmp_path)) == str(tmp_path)
    if has_default_model():
        assert resolve_model("default") == resolve_model("rp-compact") == resolve_model(None) == str(DEFAULT_MODEL_DIR)
    if (DEFAULT_DECODE_MODEL_DIR / "model_index.json").is_file():
        assert resolve_decode_model("default") == str(DEFAULT_DECODE_MODEL_DIR)
    with pytest.raises(FileNotFoundError, match="reinstall rp-diffusers, or pass --model PATH_OR_HUB_ID"):
        resolve_packaged("default", tmp_path / "empty", ("default",), "test model", "RPPreprocessPipeline")


def test_the_shipped_models_load_through_the_one_loader():
    if not has_default_model():
        pytest.fail(f"the package ships the compact default model, but {DEFAULT_MODEL_DIR} has none")
    pipe = load_preprocessor("default", "cpu", "bfloat16")
    assert isinstance(pipe, RPPreprocessPipeline)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    decoder = load_pipeline("default", "cpu")
    assert isinstance(decoder, PerceptualDecodePipeline) and decoder.device.type == "cpu"
    # The generic form is what both call.
    again = load_pretrained(RPPreprocessPipeline, resolve_model("default"), "cpu")
    assert again.unet.dtype == torch.float32


def test_resolve_device_defaults_to_what_exists():
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
