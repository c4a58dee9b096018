"""Tests of CorrDiff (arXiv:2404.04916): integer entropy tables, bit-exact bitstreams, correction, training resume."""

import copy
import dataclasses
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import constriction
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from rp_diffusers.codecs import CodecError, get_codec
from rp_diffusers.corrdiff import BitstreamError, CorrDiffCodec, CorrDiffConfig, CorrDiffModel, bitstream
from rp_diffusers.corrdiff.bitstream import HEADER_SIZE
from rp_diffusers.corrdiff.diffusion import build_unet
from rp_diffusers.corrdiff.entropy import PRECISION, decode_choices, encode_choices
from rp_diffusers.corrdiff.loading import save_model
from rp_diffusers.evaluation import EXAMPLES_DIR
from rp_diffusers.utils.image import load_image
from rp_diffusers.utils.testing import load_script

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = EXAMPLES_DIR / "canal_urban.png"


def tiny_model(seed: int = 0) -> CorrDiffModel:
    """Random tiny model; large gains so that the untrained y gives non-trivial symbols."""
    torch.manual_seed(seed)
    config = CorrDiffConfig(
        channels=16, latent_channels=16, hyper_channels=8, gains=(4.0, 16.0, 64.0), block_size=32,
        num_inference_steps=2, distortion_weight=1.0,
    )  # fmt: skip
    model = CorrDiffModel(config)
    model.unet = build_unet((16, 32), 1)
    model.update()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> CorrDiffModel:
    return tiny_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corrdiff") / "model"
    CorrDiffCodec(model=model).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A 60x50 crop of a bundled photograph (not a multiple of 64: exercises padding)."""
    return load_image(EXAMPLE).crop((40, 30, 100, 80))


@pytest.fixture(scope="module")
def encoding(model, image):
    """One encode (quality 1, seed 0) shared by the tests that only read it."""
    return CorrDiffCodec(model=model).encode_details(image, quality=1)


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


def test_entropy_tables_are_integers(model, saved):
    state = load_file(str(saved / "codec.safetensors"))
    for key in ("entropy_bottleneck.freqs", "gaussian_conditional.freqs", "integer_h_s.layer0_weight"):
        assert state[key].dtype in (torch.int32, torch.int64), key
    assert state["integer_h_s.thresholds"].dtype == torch.int64
    gaussian = model.gaussian_conditional
    for row, half in zip(gaussian.freqs, gaussian.halves.tolist()):
        used = row[: 2 * half + 2]
        assert int(used.sum()) == 2**PRECISION and int(used.min()) >= 1 and not row[2 * half + 2 :].any()
    assert torch.all(model.entropy_bottleneck.freqs.sum(1) == 2**PRECISION)


def test_gaussian_conditional_round_trip_with_escapes(model):
    generator = torch.Generator().manual_seed(1)
    indexes = torch.randint(0, model.config.num_scales, (1, 16, 4, 6), generator=generator)
    symbols = torch.round(torch.randn(indexes.shape, generator=generator) * 3)
    symbols[0, 0, 0, :3] = torch.tensor([500.0, -32767.0, 32767.0])  # far outside every row: escaped
    encoder = constriction.stream.queue.RangeEncoder()
    model.gaussian_conditional.compress(encoder, symbols, indexes)
    decoder = constriction.stream.queue.RangeDecoder(encoder.get_compressed())
    assert torch.equal(model.gaussian_conditional.decompress(decoder, indexes), symbols)


def test_entropy_bottleneck_round_trip(model):
    z = torch.round(torch.randn(1, 8, 3, 5, generator=torch.Generator().manual_seed(2)) * 20)
    z[0, 1, 0, 0] = 1000.0
    encoder = constriction.stream.queue.RangeEncoder()
    model.entropy_bottleneck.compress(encoder, z)
    decoder = constriction.stream.queue.RangeDecoder(encoder.get_compressed())
    assert torch.equal(model.entropy_bottleneck.decompress(decoder, (3, 5)), z)


def test_choices_round_trip_with_adaptive_counts():
    choices = np.random.default_rng(3).integers(0, 5, size=(3, 4, 7))
    choices[1] = 4  # a constant step costs far less than log2(5) bits per choice
    encoder = constriction.stream.queue.RangeEncoder()
    encode_choices(encoder, choices, 5)
    decoder = constriction.stream.queue.RangeDecoder(encoder.get_compressed())
    assert np.array_equal(decode_choices(decoder, choices.shape, 5), choices)


def test_integer_hyper_synthesis_is_independent_of_summation_order(model):
    """Permuting z's channels (and the weights' input channels) reorders every sum: the result must not move."""
    net = model.integer_h_s
    z = torch.round(torch.randn(1, 8, 3, 4, generator=torch.Generator().manual_seed(4)) * 4)
    reference = net(z)
    permutation = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    original = net.layer0_weight.clone()
    try:
        net.layer0_weight.copy_(original[permutation])  # ConvTranspose2d weight: (in, out, k, k)
        assert torch.equal(net(z[:, permutation]), reference)
    finally:
        net.layer0_weight.copy_(original)
    assert torch.equal(reference, torch.round(reference))


def test_integer_hyper_synthesis_matches_float_indexes(model):
    z = torch.round(torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(6)) * 4)
    scales = model.h_s(z).double() * model.config.gains[1]
    table = model.gaussian_conditional.scale_values
    float_index = (scales.unsqueeze(-1) >= table[1:]).sum(-1)
    integer_index = model.integer_h_s.indexes(z, 1)
    assert (float_index - integer_index).abs().max() <= 1
    assert (float_index == integer_index).double().mean() > 0.98


def test_codec_round_trip_in_second_process_is_pixel_identical(saved, encoding, tmp_path):
    codec = CorrDiffCodec.from_pretrained(saved)
    (tmp_path / "image.crdf").write_bytes(encoding.data)
    script = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[3])); "
        "from rp_diffusers.corrdiff import CorrDiffCodec; "
        "codec = CorrDiffCodec.from_pretrained(sys.argv[1]); "
        "codec.decompress(open(sys.argv[2], 'rb').read()).save(sys.argv[2] + '.png')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-c", script, str(saved), str(tmp_path / "image.crdf"), str(torch.get_num_threads())]
    subprocess.run(args, check=True, cwd=REPO, env=env, timeout=120)
    other = np.asarray(Image.open(tmp_path / "image.crdf.png"))
    here = np.asarray(codec.decompress(encoding.data))
    assert other.shape == (50, 60, 3)
    assert np.array_equal(other, here)
    encoder_side = np.round(encoding.reconstruction[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(here, encoder_side)


def test_codec_bpp_equals_file_size(model, image, encoding):
    codec = CorrDiffCodec(model=model, num_inference_steps=0)  # the rate does not depend on the decoder
    result = codec.run(image, quality=2)
    assert result.bpp == 8 * len(result.data) / (60 * 50)
    assert sum(encoding.bits.values()) == 8 * len(encoding.data)
    assert encoding.bits["header"] == 8 * HEADER_SIZE and encoding.bits["side"] > 0
    assert codec.run(image, quality=0).bpp < result.bpp  # higher quality, more bits


def test_correction_never_increases_mse_over_uncorrected_sampling(model, image):
    target = torch.from_numpy(as_array(image)).permute(2, 0, 1)[None]
    for seed in (1, 2):
        codec = CorrDiffCodec(model=model, seed=seed, distortion_weight=1.0)
        encoding = codec.encode_details(image, quality=1)
        corrected, plain = mse(encoding.reconstruction, target), mse(encoding.uncorrected, target)
        assert corrected <= plain
        assert corrected <= mse(torch.round(encoding.x_e2e * 255) / 255, target)  # w = 0 is in the codebook
        assert corrected < plain or torch.equal(encoding.reconstruction, encoding.uncorrected)


def test_codec_e2e_decoder_skips_the_diffusion(model, encoding):
    codec = CorrDiffCodec(model=model)
    assert encoding.choices.shape == (2, 2, 2)  # steps x ceil(50 / 32) x ceil(60 / 32)
    e2e = np.asarray(codec.decompress(encoding.data, decoder="e2e"))
    assert np.array_equal(e2e, np.round(encoding.x_e2e[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def test_bitstream_rejects_corrupt_and_truncated_files(model, encoding):
    codec, data = CorrDiffCodec(model=model), encoding.data
    with pytest.raises(BitstreamError, match="truncated"):
        codec.decompress(data[:-3])
    with pytest.raises(BitstreamError, match="truncated"):
        codec.decompress(data[:20])
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    with pytest.raises(BitstreamError, match="CRC"):
        codec.decompress(bytes(flipped))
    with pytest.raises(BitstreamError, match="not a CorrDiff file"):
        codec.decompress(b"JUNK" + data[4:])
    with pytest.raises(CodecError, match="corrdiff"):
        codec.decode(data[:-1])


def test_small_images_round_trip_with_blocks_larger_than_the_image(model):
    codec = CorrDiffCodec(model=model)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    assert codec.decompress(codec.compress(image, quality=0)).size == (24, 20)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_steps": 255, "flags": 1}, "asks for 255 diffusion steps; this reader decodes 1 to 64"),
        ({"block_size": 0, "flags": 1}, "correction block size 0"),
        ({"block_size": 4096, "flags": 1}, "correction block size 4096"),
        ({"height": 0}, "sizes must be >= 1"),
        ({"height": 60000, "width": 60000}, "at most 64 megapixels"),
        ({"pad_h": 200}, "padding 200x"),
    ],
)
def test_bitstream_refuses_crafted_headers_with_a_valid_crc_before_any_work(encoding, fields, message):
    header, streams = bitstream.unpack(encoding.data)
    crafted = bitstream.pack(dataclasses.replace(header, **fields), streams)  # pack writes a fresh, valid CRC
    with pytest.raises(BitstreamError, match=message):
        bitstream.unpack(crafted)


def test_bitstream_rejects_a_file_from_another_model(model, image):
    data = CorrDiffCodec(model=tiny_model(seed=1), num_inference_steps=0).compress(image, quality=1)
    with pytest.raises(BitstreamError, match="load the model that wrote it"):
        CorrDiffCodec(model=model).decompress(data)


def with_other_unet(model: CorrDiffModel, seed: int) -> CorrDiffModel:
    """The same codec (tables, g_a, g_s) with another diffusion decoder, as two phase-2 runs make them."""
    other = copy.deepcopy(model)
    torch.manual_seed(seed)
    other.unet = build_unet((16, 32), 1)
    return other.eval()


def test_a_file_names_its_diffusion_decoder_not_only_the_codec(model, encoding):
    other = with_other_unet(model, seed=5)
    assert other.table_hash() == model.table_hash()  # what version 1 of the format checked
    assert other.decoder_id(False) == model.decoder_id(False) and other.decoder_id(True) != model.decoder_id(True)
    codec = CorrDiffCodec(model=other)
    with pytest.raises(BitstreamError, match="diffusion decoder .* UNet, strength, sigma_data or codebook differ"):
        codec.decompress(encoding.data)
    with pytest.raises(CodecError, match="diffusion decoder"):
        codec.decode(encoding.data)
    # the end-to-end image needs only the codec, which the file names too
    e2e = CorrDiffCodec(model=model).decompress(encoding.data, decoder="e2e")
    assert np.array_equal(np.asarray(codec.decompress(encoding.data, decoder="e2e")), np.asarray(e2e))
    resampled = with_other_unet(model, seed=0)  # the same UNet weights, another sampling setting
    resampled.unet.load_state_dict(model.unet.state_dict())
    assert resampled.decoder_id(True) == model.decoder_id(True)
    resampled.config = dataclasses.replace(model.config, strength=0.5)
    with pytest.raises(BitstreamError, match="diffusion decoder"):
        CorrDiffCodec(model=resampled).decompress(encoding.data)
    # the settings that evaluation records (and caches by) tell the two decoders apart
    assert CorrDiffCodec(model=model).encoder_settings(1)["model"] != codec.encoder_settings(1)["model"]


def test_a_file_names_its_synthesis_transform(model, image):
    other = with_other_unet(model, seed=0)
    other.unet.load_state_dict(model.unet.state_dict())
    with torch.no_grad():
        other.g_s[0].weight.mul_(1.01)  # fine-tuned synthesis, same entropy tables
    assert other.table_hash() == model.table_hash()
    data = CorrDiffCodec(model=model, num_inference_steps=0).compress(image, quality=1)
    with pytest.raises(BitstreamError, match="end-to-end decoder"):
        CorrDiffCodec(model=other).decompress(data)


def as_version_1(data: bytes, model: CorrDiffModel) -> bytes:
    """Rewrite a file as rp-diffusers 0.1.0 wrote it: version 1, model_hash = the table hash, fresh CRC."""
    header, streams = bitstream.unpack(data)
    old = dataclasses.replace(header, version=1, model_hash=model.table_hash(), crc32=0)
    payload = b"".join(streams)
    crc = zlib.crc32(struct.pack(bitstream.HEADER_FORMAT, *dataclasses.astuple(old)) + payload)
    return struct.pack(bitstream.HEADER_FORMAT, *dataclasses.astuple(dataclasses.replace(old, crc32=crc))) + payload


def test_version_1_files_still_decode_with_a_warning_where_they_cannot_name_the_decoder(model, image, encoding):
    codec = CorrDiffCodec(model=model)
    e2e_only = CorrDiffCodec(model=model, num_inference_steps=0).compress(image, quality=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an e2e file names everything it needs: no warning
        assert np.array_equal(
            np.asarray(codec.decompress(as_version_1(e2e_only, model))), np.asarray(codec.decompress(e2e_only))
        )
    with pytest.warns(UserWarning, match="version 1, which does not name its diffusion decoder"):
        old = codec.decompress(as_version_1(encoding.data, model))
    assert np.array_equal(np.asarray(old), np.asarray(codec.decompress(encoding.data)))
    with pytest.raises(BitstreamError, match="load the model that wrote it"):
        CorrDiffCodec(model=tiny_model(seed=1)).decompress(as_version_1(e2e_only, model))
    with pytest.raises(BitstreamError, match="version 3 is not supported by this reader .versions 1, 2."):
        bitstream.unpack(e2e_only[:4] + bytes([3]) + e2e_only[5:])


def test_gdn_weights_below_their_bound_still_learn_upwards():
    """GDN's lower bound passes the gradients that would raise a weight stuck under it (Balle's
    reparametrisation); a plain clamp would freeze the off-diagonal gammas that start at the bound."""
    from rp_diffusers.corrdiff.models import GDN, _LowerBound

    x = torch.tensor([0.5, -1.0, -1.0], requires_grad=True)
    (_LowerBound.apply(x, 0.0) * torch.tensor([1.0, 1.0, -1.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, -1.0]  # above: passes; below and pushed down: 0; below, pushed up: passes
    torch.manual_seed(0)
    gdn = GDN(4)
    with torch.no_grad():
        gdn.gamma.fill_(-1e-3)  # every gamma under its bound, as after an Adam step that pushed them down
    optimizer = torch.optim.Adam([gdn.gamma], lr=1e-3)  # Adam: the bound's small gradient still makes lr steps
    x = torch.randn(8, 4, 6, 6)
    for _ in range(3):  # a larger output needs a smaller normaliser: descent raises no gamma ...
        optimizer.zero_grad()
        (-gdn(x).square().mean()).backward()
        optimizer.step()
    assert gdn.gamma.max() < 0
    for _ in range(3):  # ... a smaller output needs a larger one: every gamma comes back above the bound
        optimizer.zero_grad()
        gdn(x).square().mean().backward()
        optimizer.step()
    assert gdn.gamma.min() > 0


def test_diagnose_benchmark_separates_transform_and_quantiser(tmp_path):
    """``benchmarks/corrdiff_diagnose.py`` on a saved run: one row per gain, rates growing with the gain, and the
    quantiser's loss shrinking as the gain (finer quantisation) grows."""
    diagnose = load_script(REPO / "benchmarks" / "corrdiff_diagnose.py", "diagnose")
    torch.manual_seed(0)
    config = CorrDiffConfig(channels=8, latent_channels=8, hyper_channels=8, gains=(1.0, 8.0, 64.0))
    run = tmp_path / "run"
    model = CorrDiffModel(config)
    with torch.no_grad():
        model.g_a[-1].weight.mul_(30)  # latents of a few units, so that rounding at gain 1 costs something
    model.update()
    CorrDiffCodec(model=model).save_pretrained(run)
    (run / "args.json").write_text(json.dumps({"channels": 8, "latent_channels": 8, "hyper_channels": 8,
                                               "gains": "1.0,8.0,64.0"}))  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    load_image(EXAMPLE).crop((0, 0, 128, 128)).save(photos / "a.png")
    report = diagnose.main(diagnose.parse_args(["--run", str(run), "--images", str(photos)]))
    rows = report["checkpoints"]["final"]
    assert [row["gain"] for row in rows] == [1.0, 8.0, 64.0]
    assert rows[0]["bpp"] < rows[1]["bpp"] < rows[2]["bpp"]
    assert abs(rows[2]["quantiser-loss-db"]) < 0.1 * abs(rows[0]["quantiser-loss-db"])
    with pytest.raises(SystemExit):
        diagnose.parse_args(["--run", str(run), "--images", "/data/kodak"])
    # a run in progress that started from a model (--pretrained_model_name_or_path): its flags keep the default
    # widths, so the widths come from that model's config
    started = tmp_path / "continued"
    (started / "checkpoint-5").mkdir(parents=True)
    save_file(model.state_dict(), str(started / "checkpoint-5" / "model.safetensors"))
    (started / "args.json").write_text(json.dumps({"pretrained_model_name_or_path": str(run), "channels": 128,
                                                   "latent_channels": 192, "hyper_channels": 128,
                                                   "gains": "0.5,1.0"}))  # fmt: skip
    continued = diagnose.main(diagnose.parse_args(["--run", str(started), "--images", str(photos)]))
    assert continued["checkpoints"]["checkpoint-5"] == rows


def test_get_codec_corrdiff_loads_a_saved_model(saved, image):
    codec = get_codec("corrdiff", model=str(saved), num_inference_steps=0)
    assert isinstance(codec, CorrDiffCodec) and codec.quality_range == (0, 2)
    result = codec.run(image)
    assert result.reconstruction.size == image.size and result.extension == ".crdf"
    assert result.settings["num_inference_steps"] == 0


def test_get_codec_corrdiff_without_a_model_uses_the_shipped_one(image, monkeypatch, tmp_path):
    """The package ships a CorrDiff codec with its diffusion decoder: ``get_codec("corrdiff")`` codes for the end-to-end
    decoder by default (the diffusion decoder measured worse on val-set14), the diffusion decoder on request, and
    decodes both (in a second reader too); without its files the error says what to do."""
    from rp_diffusers.corrdiff import codec as codec_module

    codec = get_codec("corrdiff")
    weights = [
        *codec_module.DEFAULT_MODEL_DIR.glob("*.safetensors"),
        *codec_module.DEFAULT_MODEL_DIR.glob("*/*.safetensors"),
    ]
    assert len(weights) == 2 and sum(p.stat().st_size for p in weights) < 11 * 2**20
    assert codec.model.unet is not None and codec.settings["model"] is None
    assert not codec.model.config.diffusion_by_default and codec.encoder_settings(0)["num_inference_steps"] == 0
    result = codec.run(image, codec.default_quality)
    assert result.reconstruction.size == image.size and result.settings["model"].startswith("default:")
    assert codec.encode_details(image, 1).bits["side"] == 0  # no side information: the e2e decoder
    diffusion = get_codec("corrdiff", num_inference_steps=4, distortion_weight=0.0)
    encoding = diffusion.encode_details(image, 1)
    assert encoding.bits["side"] > 0 and encoding.uncorrected is not None
    decoded = np.asarray(get_codec("corrdiff").decompress(encoding.data))
    assert np.array_equal(decoded, np.round(encoding.reconstruction[0].permute(1, 2, 0).numpy() * 255))
    assert get_codec("corrdiff").decode(result.data).tobytes() == result.reconstruction.tobytes()
    low, high = (codec.run(image, q) for q in codec.quality_range)
    assert low.bpp < high.bpp
    monkeypatch.setattr(codec_module, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(ValueError, match="shipped CorrDiff model is missing"):
        get_codec("corrdiff")


def test_from_pretrained_offline_repo_id_raises_a_clear_error():
    with pytest.raises(OSError, match="download"):
        CorrDiffCodec.from_pretrained("no-such-org/no-such-corrdiff")


def test_root_package_exports_corrdiff_codec():
    import rp_diffusers

    assert rp_diffusers.CorrDiffCodec is CorrDiffCodec


def training_script_and_photos(tmp_path: Path, count: int, prefix: str):
    """``training/train_corrdiff.py`` loaded from its file (not through a sys.path edit) and a folder of ``count``
    random 96x80 photographs named ``{prefix}_{i}.png``."""
    pytest.importorskip("accelerate")
    train = load_script(REPO / "training" / "train_corrdiff.py", "train_corrdiff")
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(data / f"{prefix}_{i}.png")
    return train, data


@pytest.mark.slow
def test_train_corrdiff_resume_is_exact(tmp_path):
    train, data = training_script_and_photos(tmp_path, 4, "train")
    common = [
        "--phase", "codec", "--train_data_dir", str(data), "--resolution", "64", "--train_batch_size", "2",
        "--max_train_steps", "4", "--checkpointing_steps", "3", "--channels", "8", "--latent_channels", "8",
        "--hyper_channels", "8", "--learning_rate", "1e-3", "--logging_steps", "100",
    ]  # fmt: skip
    train.main(train.parse_args([*common, "--output_dir", str(tmp_path / "a")]))
    (tmp_path / "b").mkdir()
    os.rename(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")  # run b stopped mid-epoch
    train.main(train.parse_args([*common, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "latest"]))
    a, b = load_file(str(tmp_path / "a" / "codec.safetensors")), load_file(str(tmp_path / "b" / "codec.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    halfway = load_file(str(tmp_path / "b" / "checkpoint-3" / "model.safetensors"))
    assert not torch.equal(a["g_a.0.weight"], halfway["g_a.0.weight"])  # step 4 changed the weights


def test_diffusion_loss_draws_only_the_given_timesteps(model, monkeypatch):
    from rp_diffusers.corrdiff.diffusion import build_scheduler, diffusion_loss, sampling_timesteps

    assert sampling_timesteps(4).tolist() == [999, 749, 499, 249]  # what corrected_sample visits
    scheduler, drawn = build_scheduler(), []
    add_noise = scheduler.add_noise
    monkeypatch.setattr(scheduler, "add_noise", lambda x, n, t: drawn.extend(t.tolist()) or add_noise(x, n, t))
    pixels = torch.rand(4, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        diffusion_loss(model.unet, scheduler, pixels, pixels, generator, sampling_timesteps(2))
    assert set(drawn) == {999, 499}
    drawn.clear()
    diffusion_loss(model.unet, scheduler, pixels, pixels, generator)
    assert len(set(drawn)) == 4 and not set(drawn) <= {999, 749, 499, 249}  # uniform over the 1000
    drawn.clear()
    for _ in range(8):
        diffusion_loss(model.unet, scheduler, pixels, pixels, generator, 99)  # a decoder of strength 0.1
    assert max(drawn) <= 99 and len(set(drawn)) > 4


def test_strength_starts_from_the_noised_e2e_reconstruction(image):
    from rp_diffusers.corrdiff.diffusion import sampling_timesteps

    assert sampling_timesteps(4, 0.1).tolist() == [99, 74, 49, 24]
    assert sampling_timesteps(4, 0.08).tolist() == [79, 59, 39, 19]
    assert sampling_timesteps(3, 1.0).tolist() == [999, 666, 332]  # diffusers trailing spacing
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="strength"):
            sampling_timesteps(4, bad)
    weak, full = tiny_model(), tiny_model()
    weak.config.strength = 0.1
    encodings = [CorrDiffCodec(model=m).encode_details(image, quality=1) for m in (weak, full)]
    assert torch.equal(encodings[0].x_e2e, encodings[1].x_e2e)
    assert not torch.equal(encodings[0].uncorrected, encodings[1].uncorrected)  # the strength is the model's
    # from t = 99 the sample stays near x_e2e; from pure noise an untrained UNet lands far from it
    assert mse(encodings[0].uncorrected, encodings[0].x_e2e) < mse(encodings[1].uncorrected, encodings[1].x_e2e)
    decoded = np.asarray(CorrDiffCodec(model=weak).decompress(encodings[0].data))
    assert np.array_equal(decoded, np.round(encodings[0].reconstruction[0].permute(1, 2, 0).numpy() * 255))


@pytest.mark.slow
def test_train_corrdiff_phase_diffusion_gives_a_codec_with_its_decoder(saved, image, tmp_path):
    """Phase 2 on a saved phase-1 model: the codec is frozen (same tables), the UNet is trained and saved, and the
    result codes and decodes with the corrected diffusion decoder."""
    train, data = training_script_and_photos(tmp_path, 3, "photo")
    phase1 = tiny_model()
    phase1.unet = None
    save_model(phase1, tmp_path / "phase1")
    with pytest.raises(ValueError, match="already has a UNet"):  # the saved model's UNet is (16, 32), patch 2
        train.build_model(train.parse_args([
            "--phase", "diffusion", "--pretrained_model_name_or_path", str(saved), "--train_data_dir", str(data),
            "--output_dir", str(tmp_path / "x"), "--unet_patch_size", "4",
        ]))  # fmt: skip
    out = tmp_path / "phase2"
    train.main(train.parse_args([
        "--phase", "diffusion", "--pretrained_model_name_or_path", str(tmp_path / "phase1"), "--train_data_dir", str(data),
        "--resolution", "64", "--train_batch_size", "2", "--max_train_steps", "2", "--unet_block_out_channels", "8,16",
        "--unet_patch_size", "4", "--timestep_sampling", "inference", "--num_inference_steps", "2",
        "--block_size", "32", "--logging_steps", "100", "--sigma_data", "0.1", "--strength", "0.1",
        "--output_dir", str(out),
    ]))  # fmt: skip
    codec = get_codec("corrdiff", model=str(out), distortion_weight=1.0)
    before = CorrDiffCodec.from_pretrained(tmp_path / "phase1")
    assert codec.model.table_hash() == before.model.table_hash()  # phase 2 leaves the codec as it was
    assert codec.model.unet.config.in_channels == 6 * 16 and codec.model.config.num_inference_steps == 2
    assert (codec.model.config.sigma_data, codec.model.config.strength) == (0.1, 0.1)
    assert not torch.equal(codec.model.unet.conv_in.weight, build_unet((8, 16), 1, 4).conv_in.weight)
    encoding = codec.encode_details(image, quality=1)
    assert encoding.bits["side"] > 0
    decoded = np.asarray(codec.decompress(encoding.data))
    assert np.array_equal(decoded, np.round(encoding.reconstruction[0].permute(1, 2, 0).numpy() * 255))


@pytest.mark.slow
def _benchmark_inputs(tmp_path: Path, crop: tuple[int, int], with_unet: bool = True, **config) -> Path:
    """A tiny four-gain model saved to tmp_path/model (with a small diffusion UNet unless ``with_unet`` is false) and
    tmp_path/photos with the top-left ``crop`` (width, height) of two bundled photographs; returns the photos."""
    torch.manual_seed(0)
    tiny = CorrDiffModel(
        CorrDiffConfig(channels=16, latent_channels=16, hyper_channels=8, gains=(4.0, 8.0, 16.0, 32.0), **config)
    )
    if with_unet:
        tiny.unet = build_unet((8, 16), 1, 4)
    tiny.update()
    save_model(tiny, tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, example in enumerate(sorted(EXAMPLES_DIR.glob("*.png"))[:2]):
        load_image(example).crop((0, 0, *crop)).save(photos / f"photo{i}.png")
    return photos


def test_benchmark_compares_the_three_decoders_of_the_same_files(tmp_path):
    """``benchmarks/corrdiff.py`` on a tiny model: e2e, uncorrected and corrected curves of the same bitstreams, the
    decoder table (corrected minus each other decoder at equal total bits, signed so that positive is better), the
    issue's targets, BD-rates between decoders, decoded files identical to the encoder's, and a six-panel figure."""
    bench = load_script(REPO / "benchmarks" / "corrdiff.py", "corrdiff_bench")
    photos = _benchmark_inputs(tmp_path, (256, 192), block_size=64, num_inference_steps=2)
    out = tmp_path / "results"
    result = bench.main(bench.parse_args([
        "--model", str(tmp_path / "model"), "--images", str(photos), "--diffusion_qualities", "0,1,2,3",
        "--distortion_weights", "1.0,0.0", "--baselines", "jpeg", "--metrics", "psnr,ssimulacra2",
        "--output", str(out / "c.json"), "--plot", str(out / "c.png"), "--crops", str(out / "crops.png"),
        "--crops_image", "photo0.png", "--crops_quality", "1", "--threads", "1",
    ]))  # fmt: skip
    names = [c["name"] for c in result["curves"]]
    assert names == ["corrdiff-e2e", "corrdiff-dw1.0", "diffusion-uncorrected", "corrdiff-dw0.0", "jpeg"]
    assert all(result["meta"]["decode_checks"].values()) and len(result["meta"]["decode_checks"]) == 8
    decoders = result["meta"]["decoders"]
    rows = decoders["per_quality"]["corrdiff-dw1.0"]
    assert [r["quality"] for r in rows] == [0, 1, 2, 3] and all(r["side-bpp"] > 0 for r in rows)
    curves = {c["name"]: c["results"] for c in result["curves"]}
    for i, row in enumerate(rows):  # vs uncorrected: interpolated at the corrected bpp, or the same streams' value
        corrected = curves["corrdiff-dw1.0"]["psnr-rgb"][i]
        assert row["psnr-rgb"]["corrected"] == corrected
        same_streams = corrected - curves["diffusion-uncorrected"]["psnr-rgb"][i]
        # more bits for the uncorrected decoder (interpolated at the corrected file's bpp) can only lower the gain
        assert row["psnr-rgb"]["vs_uncorrected"] <= same_streams + 1e-9 or i == len(rows) - 1
    assert set(decoders["targets"]["corrdiff-dw0.0"]) == {
        "psnr_above_uncorrected", "ssimulacra2_above_e2e", "butteraugli_below_e2e", "butteraugli_3norm_below_e2e"
    }  # fmt: skip
    assert (
        decoders["markdown"].count("| q0 | ") == 2
        and "| psnr-rgb | e2e | uncorrected | corrected dw 1.0 |" in (decoders["markdown"])
    )  # one table per metric (PSNR and SSIMULACRA2 here)
    assert set(decoders["bd_rate"]) == {f"corrdiff-dw{w} vs {o}" for w in ("1.0", "0.0")
                                        for o in ("corrdiff-e2e", "diffusion-uncorrected")}  # fmt: skip
    panels = [k for k in result["meta"]["crops"] if k not in ("image", "box")]
    assert panels[0] == "original" and panels[1].startswith("JPEG q") and panels[2:] == [
        "CorrDiff e2e q1", "uncorrected diffusion", "corrected, distortion weight 1", "corrected, distortion weight 0"
    ]  # fmt: skip
    assert Image.open(out / "crops.png").size[1] > 700  # two rows of panels


def test_benchmark_runs_the_refining_encoder_beside_the_default_one(tmp_path):
    """``benchmarks/corrdiff.py --refine_steps N``: a second end-to-end curve from the refining encoder in the same
    run, on the same images and qualities, compared with each baseline under its own key."""
    bench = load_script(REPO / "benchmarks" / "corrdiff.py", "corrdiff_bench_refine")
    photos = _benchmark_inputs(tmp_path, (128, 128), with_unet=False)
    result = bench.main(bench.parse_args([
        "--model", str(tmp_path / "model"), "--images", str(photos), "--diffusion_qualities", "",
        "--refine_steps", "5", "--baselines", "jpeg", "--metrics", "psnr", "--output", str(tmp_path / "c.json"),
        "--plot", "", "--crops", "", "--threads", "1",
    ]))  # fmt: skip
    curves = {c["name"]: c for c in result["curves"]}
    assert list(curves) == ["corrdiff-e2e", "corrdiff-e2e-refined5", "jpeg"]
    assert "encoder refinement 5 steps" in curves["corrdiff-e2e-refined5"]["description"]
    plain, refined = curves["corrdiff-e2e"]["results"], curves["corrdiff-e2e-refined5"]["results"]
    assert plain["quality"] == refined["quality"] == [0, 1, 2, 3]
    comparisons = result["meta"]["against_baselines"]
    assert set(comparisons["bd_rate"]) == {"corrdiff-e2e vs jpeg", "corrdiff-e2e-refined5 vs jpeg"}
    assert set(comparisons["psnr_gain_db_min_0.2-0.6bpp"]) == {"jpeg", "corrdiff-e2e-refined5 vs jpeg"}


def test_refine_choice_benchmark_reports_each_step_size_and_count(tmp_path):
    """``benchmarks/corrdiff_refine_choice.py``: one row per (image, quality, step size, steps) against the analysis
    transform's latents; 0 steps changes nothing, and the rows average into the table."""
    bench = load_script(REPO / "benchmarks" / "corrdiff_refine_choice.py", "corrdiff_refine_choice")
    photos = tmp_path / "photos"
    photos.mkdir()
    load_image(EXAMPLE).crop((0, 0, 96, 80)).save(photos / "a.png")
    result = bench.main(bench.parse_args([
        "--images", str(photos), "--names", "", "--learning_rates", "0.003,0.01", "--steps", "0,5",
        "--threads", "1", "--output", str(tmp_path / "r.json"),
    ]))  # fmt: skip
    assert len(result["rows"]) == 4 and set(result["mean"]) == {
        "lr 0.003, 0 steps", "lr 0.003, 5 steps", "lr 0.01, 0 steps", "lr 0.01, 5 steps"
    }  # fmt: skip
    for row in result["rows"]:
        if row["steps"] == 0:
            assert row["loss_drop_pct"] == 0 and row["bpp_change_pct"] == 0 and row["psnr_change_db"] == 0
        else:
            assert row["loss_drop_pct"] >= 0  # the best iterate is kept
    assert json.loads((tmp_path / "r.json").read_text())["images"] == ["a.png"]


def test_edm_preconditioning_starts_from_the_best_linear_estimate(image):
    """With ``sigma_data`` set and a UNet that outputs 0, the x0 estimate is the Wiener combination of x_e2e and the
    noisy image; a codec whose config sets it round-trips bit-exactly."""
    import torch.nn.functional as F

    from rp_diffusers.corrdiff.diffusion import build_scheduler, predict_x0

    unet = build_unet((8, 16), 1, 2)
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    cond, x0 = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    a = build_scheduler().alphas_cumprod[24].double()
    x_t = a.sqrt().float() * x0 + (1 - a).sqrt().float() * torch.randn(1, 3, 32, 32)
    s2, sd2 = float((1 - a) / a), 0.1**2
    expected = cond + sd2 / (s2 + sd2) * (x_t / a.sqrt().float() - cond)
    got = predict_x0(unet, x_t, torch.tensor([24]), cond, sigma_data=0.1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(predict_x0(unet, x_t, torch.tensor([24]), cond), cond)  # the plain residual: 0 -> x_e2e

    class Echo(torch.nn.Module):  # returns the first 3 (un-patched) input channels: c_in r_t
        config = unet.config

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, inputs, timesteps):
            return type("Out", (), {"sample": F.pixel_unshuffle(F.pixel_shuffle(inputs, 2)[:, :3], 2)})()

    c_in, c_out = 1 / (s2 + sd2) ** 0.5, (s2 * sd2) ** 0.5 / (s2 + sd2) ** 0.5
    residual_t = x_t / a.sqrt().float() - cond
    echoed = cond + sd2 / (s2 + sd2) * residual_t + c_out * c_in * residual_t
    assert torch.allclose(predict_x0(Echo(), x_t, torch.tensor([24]), cond, sigma_data=0.1), echoed, atol=1e-5)
    model = tiny_model()
    model.config.sigma_data, model.config.strength = 0.1, 0.1
    codec = CorrDiffCodec(model=model)
    encoding = codec.encode_details(image, quality=1)
    decoded = np.asarray(codec.decompress(encoding.data))
    assert np.array_equal(decoded, np.round(encoding.reconstruction[0].permute(1, 2, 0).numpy() * 255))
    assert "sigma_data" in codec.encoder_settings(1)


def test_with_gains_adds_rate_points_and_keeps_every_old_one_bit_for_bit(model, image):
    """``CorrDiffModel.with_gains``: the old gains' table rows are copied as stored (not recomputed), so their files
    carry the same streams and decode to the same pixels under the quality index shifted by the gains added below;
    the new rows follow the table's rule; a new lower gain gives fewer bits; the default stays on the same gain; the
    new model decodes the old model's files (format 2, and format 1 too); bad gain lists are refused."""
    from rp_diffusers.corrdiff.integer_net import ACT_FRACTION_BITS

    source = copy.deepcopy(model)
    source.integer_h_s.thresholds[1, 0] += 1  # a stored row that recomputing would not give back
    extended = source.with_gains((2.0, 4.0, 16.0, 32.0, 64.0))
    assert extended.config.gains == (2.0, 4.0, 16.0, 32.0, 64.0) and source.config.gains == (4.0, 16.0, 64.0)
    assert torch.equal(extended.integer_h_s.thresholds[[1, 2, 4]], source.integer_h_s.thresholds)
    scales = extended.gaussian_conditional.scale_values.double().numpy()[1:]
    for row, gain in ((0, 2.0), (3, 32.0)):  # ceil(scale / gain * 2**16), as the integer hyper-synthesis counts
        expected = np.ceil(scales / gain * 2**ACT_FRACTION_BITS).astype(np.int64)
        assert np.array_equal(extended.integer_h_s.thresholds[row].numpy(), expected)
    assert extended.config.gains[extended.config.default_quality_index] == source.config.gains[1]  # 16 both times
    assert extended.unet is source.unet and extended.decoder_id(False) != source.decoder_id(False)
    assert extended.config.earlier_decoders[-1]["qualities"] == [1, 2, 4]
    before, after = CorrDiffCodec(model=source), CorrDiffCodec(model=extended)
    assert after.default_quality == 2 and after.quality_range == (0, 4)
    for old_q, new_q in ((0, 1), (1, 2), (2, 4)):
        a, b = before.encode_details(image, old_q), after.encode_details(image, new_q)
        assert bitstream.unpack(a.data)[1] == bitstream.unpack(b.data)[1]  # the same z, y and side streams
        assert torch.equal(a.reconstruction, b.reconstruction)
        old_file_decoded = np.asarray(after.decompress(a.data))  # the new model reads the old model's file
        assert np.array_equal(old_file_decoded, np.asarray(before.decompress(a.data)))
        with pytest.warns(UserWarning, match="version 1"):  # a format-1 diffusion file cannot name its decoder
            assert np.array_equal(np.asarray(after.decompress(as_version_1(a.data, source))), old_file_decoded)
    assert len(after.encode_details(image, 0).data) < len(before.encode_details(image, 0).data)
    twice = extended.with_gains((1.0, 2.0, 4.0, 16.0, 32.0, 64.0))  # the first model's files still decode
    assert [e["qualities"] for e in twice.config.earlier_decoders] == [[2, 3, 5], [1, 2, 3, 4, 5]]
    first_file = before.compress(image, 2)
    assert np.array_equal(
        np.asarray(CorrDiffCodec(model=twice).decompress(first_file)), np.asarray(before.decompress(first_file))
    )
    with pytest.raises(BitstreamError, match="load the model that wrote it"):
        CorrDiffCodec(model=tiny_model(seed=1)).decompress(first_file)
    for gains, match in (((4.0, 64.0), "missing"), ((4.0, 16.0, 8.0, 64.0), "ascending"), ((0.0, 4.0, 16.0, 64.0), "positive")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            source.with_gains(gains)


@pytest.mark.slow
def test_a_phase_1_continuation_refuses_the_files_of_the_models_it_was_made_from(model, image, tmp_path):
    """Continuing phase 1 from a model with added gains changes the weights, so the files of the model it was made
    from (the tiny model, listed in its ``earlier_decoders``) would decode with them: the continuation drops
    ``earlier_decoders`` and refuses those files by name, while its own files decode. Phase 2 from the same model
    leaves the codec's weights alone, so it keeps them."""
    train, data = training_script_and_photos(tmp_path, 2, "photo")
    extended = copy.deepcopy(model).with_gains((2.0, 4.0, 16.0, 64.0))
    extended.unet = None
    CorrDiffCodec(model=extended).save_pretrained(tmp_path / "extended")
    assert extended.config.earlier_decoders  # it would decode the tiny model's files
    out = tmp_path / "continued"
    train.main(train.parse_args([
        "--phase", "codec", "--pretrained_model_name_or_path", str(tmp_path / "extended"), "--train_data_dir",
        str(data), "--resolution", "64", "--train_batch_size", "2", "--max_train_steps", "1", "--learning_rate",
        "1e-2", "--logging_steps", "100", "--output_dir", str(out),
    ]))  # fmt: skip
    continued = CorrDiffCodec.from_pretrained(out)
    assert continued.model.config.earlier_decoders == () and continued.model.config.gains == (2.0, 4.0, 16.0, 64.0)
    for writer in (CorrDiffCodec(model=model), CorrDiffCodec(model=extended)):
        with pytest.raises(BitstreamError, match="load the model that wrote it"):
            continued.decompress(writer.compress(image, 1))
    encoding = continued.encode_details(image, 1)
    decoded = np.asarray(continued.decompress(encoding.data))
    assert np.array_equal(decoded, np.round(encoding.reconstruction[0].permute(1, 2, 0).numpy() * 255))
    phase_2, _ = train.build_model(train.parse_args([
        "--phase", "diffusion", "--pretrained_model_name_or_path", str(tmp_path / "extended"), "--train_data_dir",
        str(data), "--output_dir", str(tmp_path / "phase2"), "--unet_block_out_channels", "8,16",
    ]))  # fmt: skip
    assert phase_2.config.earlier_decoders == extended.config.earlier_decoders


def test_the_shipped_model_refuses_the_files_of_earlier_weights_by_name():
    """The shipped model continued phase 1 from the earlier shipped model (which was the five-gain model plus two
    lower gains): its weights differ, so files of both earlier models (kept in tests/fixtures: an end-to-end file
    of the previous shipped model, and an end-to-end and a diffusion file of the five-gain model) are refused with
    an error that names their decoder, not decoded to wrong pixels. Gain 1 stays the default and the two lowest
    gains give fewer bits."""
    codec = get_codec("corrdiff")
    config = codec.model.config
    assert codec.quality_range == (0, 6) and config.gains[codec.default_quality] == 1.0
    assert config.gains[:2] == (0.25, 0.3536) and config.earlier_decoders == ()
    fixtures = REPO / "tests" / "fixtures"
    for name, decoder in (
        ("corrdiff_previous_q4_e2e.crdf", "94e09d08"),
        ("corrdiff_5_gains_q2_e2e.crdf", "ebc799ba"),
        ("corrdiff_5_gains_q1_diffusion.crdf", "ebc799ba"),
    ):
        with pytest.raises(BitstreamError, match=f"decoder {decoder}, .*load the model that wrote it"):
            codec.decompress((fixtures / name).read_bytes())
    crop = load_image(EXAMPLE).crop((40, 30, 104, 94))
    assert len(codec.compress(crop, 0)) < len(codec.compress(crop, 2))


def test_default_quality_is_checked_and_used(model):
    with pytest.raises(ValueError, match="default_quality"):
        CorrDiffConfig(gains=(1.0, 2.0), default_quality=2)
    config = CorrDiffConfig.from_dict({**model.config.to_dict(), "default_quality": 0})
    tiny = CorrDiffModel(config)
    tiny.load_state_dict(model.state_dict(), strict=False)
    assert CorrDiffCodec(model=tiny).default_quality == 0
    assert CorrDiffCodec(model=model).default_quality == 1  # None: the middle gain


def test_add_corrdiff_gains_script_writes_a_new_folder_and_never_overwrites(saved, image, tmp_path):
    """``training/add_corrdiff_gains.py``: a new model folder that ``get_codec('corrdiff', model=...)`` loads, with
    the old gains' files decoding to the same pixels; an existing non-empty folder and a gain it has are refused."""
    script = load_script(REPO / "training" / "add_corrdiff_gains.py", "add_corrdiff_gains")
    out = tmp_path / "extended"
    assert script.main(["--model", str(saved), "--add_gains", "2.0", "--output_dir", str(out)]) == 0
    codec = get_codec("corrdiff", model=str(out))
    assert codec.model.config.gains == (2.0, 4.0, 16.0, 64.0) and codec.default_quality == 2
    old = get_codec("corrdiff", model=str(saved))
    assert np.array_equal(np.asarray(codec.run(image, 3).reconstruction), np.asarray(old.run(image, 2).reconstruction))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        script.main(["--model", str(saved), "--add_gains", "2.0", "--output_dir", str(tmp_path / "busy")])
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match="already has"):
        script.main(["--model", str(saved), "--add_gains", "4.0", "--output_dir", str(tmp_path / "again")])


def test_benchmark_decoder_bd_rates_use_the_same_qualities_of_each_decoder():
    """``benchmarks/corrdiff.py``: the BD-rate of a corrected curve against the end-to-end one is fitted on the
    end-to-end points at the diffusion qualities only, so end-to-end rates added below (new gains) leave it as is."""
    from rp_diffusers.evaluation.results import EvaluationResult

    bench = load_script(REPO / "benchmarks" / "corrdiff.py", "corrdiff_bench_bd")

    def curve(name: str, qualities, shift_db: float = 0.0, extra_bpp: float = 0.0) -> EvaluationResult:
        result = EvaluationResult(name, name)
        for q in qualities:
            bpp = 0.15 * 1.4**q
            psnr = 30 + 4 * np.log2(bpp) - 0.4 * np.log2(bpp) ** 2 + shift_db  # concave, as R-D curves are
            row = {"image": "a", "quality": q, "bpp": bpp + extra_bpp, "psnr-rgb": psnr}
            result.records.append({**row, "side-bpp": extra_bpp} if name.startswith("corrdiff-dw") else row)
        return result

    diffusion = range(2, 7)
    plain, corrected = curve("diffusion-uncorrected", diffusion, -2.0), curve("corrdiff-dw1.0", diffusion, 0.0, 1e-3)
    # the added low rates bend the curve (an interpolant through all points would feel them near q2)
    wide = curve("corrdiff-e2e", range(7))
    for record in wide.records[:2]:
        record["psnr-rgb"] -= 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # narrow overlaps warn
        narrow_table = bench.compare_decoders([curve("corrdiff-e2e", diffusion), corrected, plain])["bd_rate"]
        wide_table = bench.compare_decoders([wide, corrected, plain])["bd_rate"]
    assert narrow_table["corrdiff-dw1.0 vs corrdiff-e2e"] == wide_table["corrdiff-dw1.0 vs corrdiff-e2e"]
    assert narrow_table["corrdiff-dw1.0 vs corrdiff-e2e"]["psnr-rgb"] > 0  # the side bits cost, nothing else


def test_rd_loss_is_the_training_loss_and_its_rounded_rate_estimates_the_file():
    """rd_loss with the training noise equals forward()'s bpp + lambda * gain**2 * 255**2 * MSE; without noise its
    bpp is within 5 % of the real file's y and z streams (the coder's integer tables differ a little)."""
    shipped = get_codec("corrdiff")
    net = shipped.model
    x = torch.from_numpy(np.asarray(load_image(EXAMPLE).crop((0, 0, 128, 128)), np.float32) / 255).permute(2, 0, 1)[
        None
    ]
    torch.manual_seed(1)
    with torch.no_grad():
        y = net.g_a(x)
        noise = (torch.rand_like(y) - 0.5, torch.rand(1, net.config.hyper_channels, 2, 2) - 0.5)
        out = net(x, torch.tensor([4]), noise)
        loss, bpp, mse = net.rd_loss(x, y, 4, noise)
        expected_mse = float((out["x_e2e"] - x).square().mean())
        assert float(bpp) == pytest.approx(float(out["bpp"][0]), rel=1e-5)
        assert float(mse) == pytest.approx(expected_mse, rel=1e-5)
        gain = net.config.gains[4]
        assert float(loss) == pytest.approx(float(bpp) + net.config.lmbda * gain**2 * 255**2 * expected_mse, rel=1e-5)
        rounded_bpp = float(net.rd_loss(x, y, 4)[1])
    encoding = shipped.encode_details(load_image(EXAMPLE).crop((0, 0, 128, 128)), 4)
    bits = encoding.bits["y"] + encoding.bits["z"]
    assert rounded_bpp == pytest.approx(bits / (128 * 128), rel=0.05)


def test_refined_encoder_lowers_the_loss_and_its_files_decode_with_any_copy_of_the_model(image):
    """refine_steps: the shipped model's latents, optimised for the image, never have a higher rounded-symbol loss
    than the analysis transform's; the file is deterministic, names the same decoder and decodes, with a codec that
    does not refine, to the encoder's reconstruction; bad settings are refused."""
    shipped = get_codec("corrdiff")
    model = shipped.model
    x = torch.from_numpy(np.asarray(load_image(EXAMPLE).crop((0, 0, 128, 128)), np.float32) / 255).permute(2, 0, 1)[
        None
    ]
    flags = [p.requires_grad for p in model.parameters()]
    with torch.no_grad():
        start = float(model.rd_loss(x, model.g_a(x), 4)[0])
        refined = float(model.rd_loss(x, model.refine_latents(x, 4, 10), 4)[0])
        # every iterate of a far too large step is worse than the start: the start is what comes back
        assert torch.equal(model.refine_latents(x, 4, 10, learning_rate=50.0), model.g_a(x))
    assert refined < start  # a strict drop on this crop, not only "not worse"
    assert [p.requires_grad for p in model.parameters()] == flags  # the networks are left as they were
    codec = get_codec("corrdiff", refine_steps=10)
    assert codec.encoder_settings(4)["refine_steps"] == 10 and shipped.encoder_settings(4)["refine_steps"] == 0
    first, second = codec.run(image, 4), codec.run(image, 4)
    assert first.data == second.data and first.data != shipped.run(image, 4).data
    assert bitstream.unpack(first.data)[0].model_hash == bitstream.unpack(shipped.run(image, 4).data)[0].model_hash
    assert shipped.decode(first.data).tobytes() == first.reconstruction.tobytes()
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="refine_steps"):
            get_codec("corrdiff", refine_steps=bad)


def test_the_shipped_encoder_writes_the_same_bytes_in_another_process_and_thread_count(tmp_path):
    """The default encoder's file for a photograph is the same in a second process with another torch thread count
    (on one machine; its float analysis transform may round differently on another CPU)."""
    from rp_diffusers.utils.assets import ASSETS_DIR

    crop = Image.open(ASSETS_DIR / "examples" / "chalet.png").convert("RGB").crop((100, 80, 292, 208))
    crop.save(tmp_path / "crop.png")
    here = get_codec("corrdiff").encode(crop, 3)
    threads = 1 if torch.get_num_threads() > 1 else 2
    script = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[2])); "
        "from PIL import Image; from rp_diffusers.codecs import get_codec; "
        "open(sys.argv[1] + '.crdf', 'wb').write(get_codec('corrdiff').encode(Image.open(sys.argv[1]), 3))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "crop.png"), str(threads)], check=True, cwd=REPO, env=env,
        timeout=120,
    )  # fmt: skip
    assert (tmp_path / "crop.png.crdf").read_bytes() == here
