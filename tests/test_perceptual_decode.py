"""Tests of PerceptualDecodePipeline (arXiv:2506.16102): presets, sizes, determinism, sigma rule, DPS, loading, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    CMStochasticIterativeScheduler,
    ConsistencyModelPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    ModelMixin,
    UNet2DModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from PIL import Image
from scipy.optimize import brentq

from rp_diffusers.decode.calibration import CalibrationError, SigmaTable, search_sigma
from rp_diffusers.decode.denoisers import VPDenoiser, make_denoiser
from rp_diffusers.decode.solvers import DPSGuidance, karras_sigmas, sample_dpmpp_2m, sample_euler_maruyama
from rp_diffusers.pipelines.perceptual_decode import PerceptualDecodePipeline, enhance_images
from rp_diffusers.utils.testing import load_script, save_tiny_sd, tiny_sd_components

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Gaussian toy world (model space [-1, 1]): data x ~ N(0, S^2); codec y = x + N(0, C^2); MMSE decode k * y.
S, C = 0.2, 0.1
K = S**2 / (S**2 + C**2)
CODEC_MSE_MODEL = K * C**2


def tiny_unet(sample_size: int | None = 16, num_class_embeds: int | None = None) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    ).eval()


def cm_pipe(**kwargs) -> PerceptualDecodePipeline:
    pipe = PerceptualDecodePipeline(unet=tiny_unet(**kwargs), scheduler=CMStochasticIterativeScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


class GaussianConsistencyToy(ModelMixin, ConfigMixin):
    """Exact consistency function of Gaussian data, behind a CM UNet's interface (c_in / t / c_skip / c_out).

    f(x, sigma) = mean + std / sqrt(std^2 + sigma^2) (x - mean), the PF-ODE endpoint for N(mean, std^2) data.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, mean: float = 0.0, std: float = S, sample_size: int | None = None, block_out_channels=(8,)):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a dtype and a device
        self.scheduler = CMStochasticIterativeScheduler()

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        sigma = torch.exp(timestep.float() / 250.0).view(-1, 1, 1, 1)  # inverse of 250 log(sigma)
        sigma_data = self.scheduler.config.sigma_data
        x = sample * (sigma**2 + sigma_data**2).sqrt()
        f = self.config.mean + self.config.std / (self.config.std**2 + sigma**2).sqrt() * (x - self.config.mean)
        c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition(sigma)
        return ((f - c_skip * x) / c_out + 0 * self.anchor,)


def toy_pipe(sample_size: int | None = None) -> PerceptualDecodePipeline:
    toy = GaussianConsistencyToy(sample_size=sample_size)
    pipe = PerceptualDecodePipeline(unet=toy, scheduler=CMStochasticIterativeScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gaussian_world(num: int = 6, size: int = 32, seed: int = 100):
    """Sources and their MMSE decodes as [0, 1] images (N, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    x = S * torch.randn(num, 3, size, size, generator=g)
    decoded = K * (x + C * torch.randn(x.shape, generator=g))
    return (x * 0.5 + 0.5).clamp(0, 1), (decoded * 0.5 + 0.5).clamp(0, 1)


def analytic_ratio(sigma: float) -> float:
    """MSE(ODE-enhanced, source) / MSE(decoded, source) in the Gaussian world (closed form)."""
    g = S / math.sqrt(S**2 + sigma**2)
    mse = (g * K - 1) ** 2 * S**2 + g**2 * K**2 * C**2 + g**2 * sigma**2
    return mse / CODEC_MSE_MODEL


@pytest.fixture(scope="module")
def image_odd() -> torch.Tensor:
    return torch.rand(1, 3, 37, 45, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------------------------- presets and sizes
@pytest.mark.parametrize("preset", ["fast", "medium", "slow"])
def test_pipeline_consistency_presets_keep_odd_sizes(preset, image_odd):
    out = cm_pipe()(
        image_odd,
        preset=preset,
        sigma=0.5,
        generator=torch.manual_seed(0),
        output_type="pt",
        surrogate=lambda image, quality: image,
    )
    assert out.images.shape == image_odd.shape  # 37x45 > the 16x16 native size: tiled, never resized
    assert out.sigmas == [0.5]
    assert torch.isfinite(out.images).all() and (out.images - image_odd).abs().mean() > 1e-3


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DPMSolverMultistepScheduler, EDMEulerScheduler])
@pytest.mark.parametrize("preset", ["fast", "medium", "slow"])
def test_pipeline_diffusion_presets_keep_odd_sizes(preset, scheduler_cls, image_odd):
    pipe = PerceptualDecodePipeline(unet=tiny_unet(), scheduler=scheduler_cls())
    pipe.set_progress_bar_config(disable=True)
    steps = None if preset == "fast" else 3
    out = pipe(
        image_odd,
        preset=preset,
        sigma=0.3,
        num_steps=steps,
        generator=torch.manual_seed(0),
        output_type="np",
        surrogate=lambda image, quality: image,
    )
    assert out.images.shape == (1, 37, 45, 3)
    assert np.isfinite(out.images).all() and 0 <= out.images.min() and out.images.max() <= 1


@pytest.mark.parametrize("preset", ["fast", "medium", "slow"])
def test_pipeline_latent_presets_keep_odd_sizes(preset, image_odd):
    pipe = PerceptualDecodePipeline(**tiny_sd_components())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        image_odd,
        preset=preset,
        sigma=0.5,
        num_steps=None if preset == "fast" else 2,
        generator=torch.manual_seed(0),
        output_type="pt",
        surrogate=lambda image, quality: image,
    )
    assert out.images.shape == image_odd.shape and torch.isfinite(out.images).all()


def test_pipeline_pil_list_of_mixed_sizes():
    images = [Image.new("RGB", (19, 23), (120, 40, 200)), Image.new("RGB", (40, 17), (10, 200, 90))]
    out = cm_pipe()(images, sigma=0.4, generator=torch.manual_seed(0))
    assert [im.size for im in out.images] == [(19, 23), (40, 17)]


def test_pipeline_deterministic_with_generator(image_odd):
    pipe = cm_pipe(num_class_embeds=10)
    first = pipe(image_odd, sigma=0.5, generator=torch.manual_seed(3), output_type="pt").images
    again = pipe(image_odd, sigma=0.5, generator=torch.manual_seed(3), output_type="pt").images
    other = pipe(image_odd, sigma=0.5, generator=torch.manual_seed(4), output_type="pt").images
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_pipeline_sigma_zero_returns_input_exactly(image_odd):
    pipe = cm_pipe()
    assert torch.equal(pipe(image_odd, sigma=0.0, output_type="pt").images, image_odd)
    pil = Image.fromarray(np.random.default_rng(0).integers(0, 256, (21, 33, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(pipe(pil, sigma=0).images[0]), np.asarray(pil))


def test_pipeline_interpolation_is_convex_combination(image_odd):
    pipe = cm_pipe()
    full = pipe(image_odd, sigma=0.5, generator=torch.manual_seed(0), output_type="pt").images
    half = pipe(image_odd, sigma=0.5, generator=torch.manual_seed(0), output_type="pt", interpolation=0.25).images
    none = pipe(image_odd, sigma=0.5, generator=torch.manual_seed(0), output_type="pt", interpolation=0.0).images
    assert torch.allclose(half, 0.75 * image_odd + 0.25 * full, atol=1e-6)
    assert torch.equal(none, image_odd)


def test_pipeline_tiling_is_exact_for_a_pointwise_model():
    _, decoded = gaussian_world(num=1, size=50)
    decoded = decoded[..., :37]  # 50x37: several 16x16 tiles with overlap, odd size
    tiled = toy_pipe(sample_size=16)(decoded, sigma=0.3, generator=torch.manual_seed(0), output_type="pt").images
    whole = toy_pipe(sample_size=None)(decoded, sigma=0.3, generator=torch.manual_seed(0), output_type="pt").images
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_pipeline_rejects_bad_arguments(image_odd):
    pipe = cm_pipe()
    with pytest.raises(ValueError, match="preset"):
        pipe(image_odd, preset="ultra", sigma=0.5)
    with pytest.raises(ValueError, match="interpolation"):
        pipe(image_odd, sigma=0.5, interpolation=1.5)
    with pytest.raises(ValueError, match="trained range"):
        pipe(image_odd, sigma=500.0)
    with pytest.raises(ValueError, match="makes one call"):
        pipe(image_odd, sigma=0.5, num_steps=3)


# --------------------------------------------------------------------------------------------- model conversions
def test_consistency_denoiser_matches_diffusers_consistency_pipeline():
    unet = tiny_unet()
    scheduler = CMStochasticIterativeScheduler()
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = ConsistencyModelPipeline(unet=unet, scheduler=scheduler)
    reference.set_progress_bar_config(disable=True)
    expected = reference(num_inference_steps=1, latents=noise, output_type="pt").images
    denoiser = make_denoiser(lambda x, t: unet(x, t, return_dict=False)[0], scheduler)
    with torch.no_grad():
        ours = (denoiser(noise * scheduler.config.sigma_max, scheduler.config.sigma_max) / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_vp_denoiser_uses_matching_timestep_and_scaling(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    abar = scheduler.alphas_cumprod[300]
    sigma = float(((1 - abar) / abar).sqrt())
    seen = {}

    def model(x_t, t):
        seen["t"], seen["x_t"] = t, x_t
        return torch.zeros_like(x_t)

    x = torch.randn(2, 3, 4, 4)
    x0 = VPDenoiser(model, scheduler)(x, sigma)
    assert torch.allclose(seen["t"], torch.full((2,), 300.0), atol=1e-3)
    assert torch.allclose(seen["x_t"], abar.sqrt() * x, atol=1e-5)  # x_t = sqrt(abar) x_sigma / ... VE -> VP
    expected = {"epsilon": x, "v_prediction": abar.sqrt() * seen["x_t"], "sample": torch.zeros_like(x)}
    assert torch.allclose(x0, expected[prediction_type], atol=1e-5)


def test_vp_fast_preset_is_the_gaussian_posterior_mean():
    """An exact epsilon model of N(0, S^2) data at an integer timestep: out = K_s x_sigma (closed-form shrinkage)."""
    scheduler = DDPMScheduler()
    abar = scheduler.alphas_cumprod
    sigma = float(((1 - abar[200]) / abar[200]).sqrt())

    def exact_eps(x_t, t):
        a = abar[int(round(float(t[0])))]
        x_ve = x_t / a.sqrt()
        s2 = (1 - a) / a
        return (x_ve - S**2 / (S**2 + s2) * x_ve) / s2.sqrt()

    denoiser = VPDenoiser(exact_eps, scheduler)
    x_sigma = torch.randn(1, 3, 64, 64) * math.sqrt(S**2 + sigma**2)
    assert torch.allclose(denoiser(x_sigma, sigma), S**2 / (S**2 + sigma**2) * x_sigma, atol=1e-4)


# --------------------------------------------------------------------------------------------- solvers
def test_dpmpp_2m_follows_the_exact_gaussian_ode():
    sigma = 1.0
    x_sigma = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * math.sqrt(S**2 + sigma**2)

    def posterior_mean(x, s):
        return S**2 / (S**2 + s**2) * x

    exact = S / math.sqrt(S**2 + sigma**2) * x_sigma
    errors = [
        float((sample_dpmpp_2m(posterior_mean, x_sigma, karras_sigmas(sigma, 0.002, n)) - exact).abs().max())
        for n in (20, 40)
    ]
    assert errors[0] < 0.02 * float(exact.abs().max())
    assert errors[1] < errors[0] / 3  # second order: doubling the steps divides the error by about 4


def test_euler_maruyama_samples_the_gaussian_data_variance():
    sigma = 1.0
    x_sigma = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * math.sqrt(S**2 + sigma**2)
    errors = []
    for steps in (30, 120):
        out = sample_euler_maruyama(
            lambda x, s: S**2 / (S**2 + s**2) * x, x_sigma, karras_sigmas(sigma, 0.002, steps), torch.manual_seed(0)
        )
        errors.append(abs(float(out.std()) / S - 1))
    # The reverse SDE lands on N(0, S^2) (not on the posterior mean, whose std is far smaller), with first-order bias.
    assert errors[1] < 0.05 and errors[1] < errors[0] / 2


# --------------------------------------------------------------------------------------------- noise-level rule
def test_calibration_search_hits_mse_ratio_two_on_gaussian_toy():
    sources, decoded = gaussian_world()
    codec_mse = float((decoded - sources).pow(2).mean())
    pipe = toy_pipe()

    def mse(sigma):
        out = pipe(decoded, sigma=sigma, generator=torch.manual_seed(0), output_type="pt").images
        return float((out - sources).pow(2).mean())

    sigma, value = search_sigma(mse, 2 * codec_mse, 0.002, 80.0)
    exact = brentq(lambda s: analytic_ratio(s) - 2, 1e-3, 10)
    assert abs(value / codec_mse - 2) < 0.05
    assert abs(analytic_ratio(sigma) - 2) < 0.1
    assert abs(sigma / exact - 1) < 0.1


def test_pipeline_auto_sigma_finds_the_rule_without_the_source():
    sources, decoded = gaussian_world(num=1, size=64, seed=102)
    table = SigmaTable()
    table.set_codec_mse("toy", [10, 90], [CODEC_MSE_MODEL / 4, CODEC_MSE_MODEL / 4], dataset="gaussian")
    out = toy_pipe()(
        decoded,
        sigma="auto",
        codec="toy",
        quality=50,
        calibration=table,
        generator=torch.manual_seed(0),
        output_type="pt",
    )
    exact = brentq(lambda s: analytic_ratio(s) - 2, 1e-3, 10)
    assert abs(out.sigmas[0] / exact - 1) < 0.1
    ratio = float((out.images - sources).pow(2).mean() / (decoded - sources).pow(2).mean())
    assert abs(ratio - 2) < 0.15


def test_codec_mse_of_one_dataset_merges_qualities_and_another_dataset_replaces_them():
    """Calibrating a second preset over other qualities must not shrink the codec-MSE range of the first one."""
    table = SigmaTable()
    table.set_codec_mse("hevc", [5, 9, 21], [4e-3, 3e-3, 7e-4], dataset="val: 8 crops")
    table.set_codec_mse("hevc", [21, 31], [6e-4, 3e-4], dataset="val: 8 crops")
    assert table.codec_mse["hevc"]["qualities"] == [5, 9, 21, 31]
    assert table.codec_mse["hevc"]["mse"] == [4e-3, 3e-3, 6e-4, 3e-4]  # the newer value where both have one
    assert table.codec_mse_for("hevc", 5) == pytest.approx(4e-3)
    table.set_codec_mse("hevc", [11, 41], [2e-3, 3e-4], dataset="other photographs")
    assert table.codec_mse["hevc"]["qualities"] == [11, 41]


def test_a_calibration_of_more_qualities_extends_the_entry_of_the_same_settings():
    """``calibrate-decode --qualities 80`` after a full calibration adds q80 to that preset's entry (the error for an
    uncalibrated quality suggests exactly that); other settings (another dataset) replace the entry."""
    base = {"model": "m", "kind": "edm", "preset": "fast", "num_steps": None, "codec": "jpeg", "target_ratio": 2.0,
            "dataset": "val: 8 crops", "seed": 0}  # fmt: skip
    table = SigmaTable()
    table.add_entry({**base, "qualities": [10, 50], "sigmas": [0.6, 0.2], "ratios": [2.0, 1.9], "codec_mse": [3, 1]})
    table.add_entry(
        {**base, "qualities": [50, 80], "sigmas": [0.25, 0.1], "ratios": [2.0, 2.0], "codec_mse": [1, 0.5]}
    )
    (entry,) = table.entries
    assert entry["qualities"] == [10, 50, 80] and entry["sigmas"] == [0.6, 0.25, 0.1]
    assert entry["ratios"] == [2.0, 2.0, 2.0] and entry["codec_mse"] == [3, 1, 0.5]
    assert table.sigma_for("m", "fast", "jpeg", 80) == pytest.approx(0.1)
    table.add_entry({**base, "preset": "medium", "qualities": [20], "sigmas": [0.3], "ratios": [2], "codec_mse": [2]})
    table.add_entry({**base, "dataset": "other", "qualities": [30], "sigmas": [0.4], "ratios": [2], "codec_mse": [2]})
    assert sorted((e["preset"], tuple(e["qualities"])) for e in table.entries) == [("fast", (30,)), ("medium", (20,))]


def test_sigma_table_interpolates_in_quality_and_matches_local_folders(tmp_path):
    table = SigmaTable()
    table.add_entry(
        {
            "model": "org/cm",
            "kind": "consistency",
            "preset": "fast",
            "codec": "jpeg",
            "qualities": [10, 50],
            "sigmas": [1.0, 0.25],
        }
    )
    path = table.save(tmp_path / "table.json")
    loaded = SigmaTable.load(path)
    assert loaded.sigma_for("org/cm", "fast", "jpeg", 30) == pytest.approx(0.5)  # geometric in quality
    assert loaded.sigma_for(str(tmp_path / "cm"), "medium", "jpeg", 10) == pytest.approx(1.0)  # folder, other preset
    with pytest.raises(CalibrationError, match="outside the calibrated range") as error:
        loaded.sigma_for("org/cm", "fast", "jpeg", 90)
    assert "--preset fast --qualities 90 --data" in str(error.value) and "covers it" not in str(error.value)
    loaded.add_entry({**loaded.entries[0], "preset": "medium", "qualities": [10, 95], "sigmas": [1.0, 0.1]})
    with pytest.raises(CalibrationError, match="The medium preset's calibration covers it"):
        loaded.sigma_for("org/cm", "fast", "jpeg", 90)
    with pytest.raises(CalibrationError, match="calibrate-decode"):
        loaded.sigma_for("org/other", "fast", "jpeg", 30)


def test_pipeline_default_sigma_comes_from_the_table(image_odd):
    pipe = PerceptualDecodePipeline(
        unet=tiny_unet(), scheduler=CMStochasticIterativeScheduler(), calibration_key="org/cm"
    )
    pipe.set_progress_bar_config(disable=True)
    table = SigmaTable()
    table.add_entry(
        {
            "model": "org/cm",
            "kind": "consistency",
            "preset": "fast",
            "codec": "jpeg",
            "qualities": [10, 50],
            "sigmas": [0.8, 0.2],
        }
    )
    out = pipe(image_odd, codec="jpeg", quality=10, calibration=table, generator=torch.manual_seed(0))
    assert out.sigmas == [pytest.approx(0.8)]
    with pytest.raises(CalibrationError, match="sigma"):
        pipe(image_odd, codec="webp", quality=10, calibration=table)
    with pytest.raises(CalibrationError, match="codec= and quality="):
        pipe(image_odd)


# --------------------------------------------------------------------------------------------- DPS
def blur(image, quality=None):
    kernel = torch.full((3, 1, 3, 3), 1 / 9)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(image, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)


def test_dps_gradient_flows_through_the_surrogate_and_reduces_the_residual():
    pipe = cm_pipe()
    target = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    x, denoise, to_image = pipe._space(target, None, None, 8)
    x_t = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    guidance = DPSGuidance(to_image, target, blur, quality=None, scale=0.05)
    x0, correction, norm = guidance(denoise, x_t, 0.5)
    assert correction.abs().sum() > 0 and torch.isfinite(correction).all()
    with torch.no_grad():
        after = guidance.residual_norm(denoise(x_t - correction, 0.5))
    assert torch.allclose(norm, guidance.residual_norm(x0))
    assert float(after) < float(norm)


def test_slow_preset_pulls_the_surrogate_decode_toward_the_received_image():
    sources, decoded = gaussian_world(num=1, size=24, seed=103)
    pipe = toy_pipe()

    def residual(scale):
        out = pipe(
            decoded,
            preset="slow",
            sigma=0.4,
            num_steps=6,
            surrogate=blur,
            dps_scale=scale,
            generator=torch.manual_seed(0),
            output_type="pt",
        ).images
        return float((blur(out) - decoded).pow(2).sum().sqrt())

    assert residual(10.0) < 0.9 * residual(0.0)


# --------------------------------------------------------------------------------------------- loading and CLI
def test_pipeline_save_load_round_trip(tmp_path, image_odd):
    pipe = cm_pipe(num_class_embeds=10)
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    loaded = PerceptualDecodePipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    a = pipe(image_odd, sigma=0.5, generator=torch.manual_seed(0), output_type="pt").images
    b = loaded(image_odd, sigma=0.5, generator=torch.manual_seed(0), output_type="pt").images
    assert torch.equal(a, b) and not list((tmp_path / "pipe").rglob("*.bin"))


def test_from_pretrained_stock_consistency_model_folder(tmp_path, image_odd):
    unet = tiny_unet()
    ConsistencyModelPipeline(unet=unet, scheduler=CMStochasticIterativeScheduler()).save_pretrained(tmp_path / "cm")
    pipe = PerceptualDecodePipeline.from_pretrained(tmp_path / "cm")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.model_kind == "consistency" and not pipe.is_latent and pipe.model_key.endswith("cm")
    expected = cm_pipe()(image_odd, sigma=0.5, generator=torch.manual_seed(0), output_type="pt").images
    assert torch.equal(pipe(image_odd, sigma=0.5, generator=torch.manual_seed(0), output_type="pt").images, expected)


def test_from_pretrained_sd_layout_folder(tmp_path, image_odd):
    pipe = PerceptualDecodePipeline.from_pretrained(save_tiny_sd(tmp_path / "sd"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.is_latent and pipe.model_kind == "vp"
    out = pipe(image_odd, sigma=0.5, generator=torch.manual_seed(0), output_type="pt").images
    assert out.shape == image_odd.shape


def test_enhance_images_returns_pil_images_of_input_sizes():
    images = [Image.new("RGB", (30, 20), (90, 90, 90))]
    out = enhance_images(cm_pipe(), images, "fast", sigma=0.3, generator=torch.manual_seed(0))
    assert len(out) == 1 and isinstance(out[0], Image.Image) and out[0].size == (30, 20)


def test_enhance_command_writes_lossless_pngs(tmp_path, capsys):
    from rp_diffusers.cli import main

    ConsistencyModelPipeline(unet=tiny_unet(), scheduler=CMStochasticIterativeScheduler()).save_pretrained(
        tmp_path / "cm"
    )
    source = tmp_path / "decoded.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (27, 35, 3), dtype=np.uint8)).save(source)
    code = main(
        [
            "enhance",
            str(source),
            "--model",
            str(tmp_path / "cm"),
            "--sigma",
            "0.4",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    written = tmp_path / "out" / "decoded.png"
    assert code == 0 and written.is_file()
    with Image.open(written) as png:
        assert png.format == "PNG" and png.size == (35, 27)
    assert "decoded.jpg" in capsys.readouterr().out
    assert main(["enhance", str(source), "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2


def test_slow_preset_defaults_to_the_codec_surrogate(image_odd):
    from rp_diffusers.surrogates import get_surrogate

    get_surrogate("jpeg")  # DiffJPEG's rate calibration ships with the package: missing is a failure
    out = cm_pipe()(
        image_odd,
        preset="slow",
        sigma=0.3,
        num_steps=2,
        codec="jpeg",
        quality=30,
        generator=torch.manual_seed(0),
        output_type="pt",
    )
    assert out.images.shape == image_odd.shape and torch.isfinite(out.images).all()


# --------------------------------------------------------------------------------------------- calibration script
def _calibration_script():

    path = Path(__file__).resolve().parents[1] / "training" / "calibrate_decode_sigma.py"
    module = load_script(path, "calibrate_decode_sigma")
    return module


def test_calibration_script_writes_an_entry_the_pipeline_uses(tmp_path, train_dir):
    script = _calibration_script()
    ConsistencyModelPipeline(unet=tiny_unet(), scheduler=CMStochasticIterativeScheduler()).save_pretrained(
        tmp_path / "cm"
    )
    table_path = tmp_path / "table.json"
    script.main(
        script.parse_args(
            [
                "--data",
                str(train_dir),
                "--num-images",
                "2",
                "--crop",
                "32",
                "--codec",
                "jpeg",
                "--qualities",
                "10,60",
                "--model",
                str(tmp_path / "cm"),
                "--model-key",
                "tiny/cm",
                "--rtol",
                "0.05",
                "--device",
                "cpu",
                "--output",
                str(table_path),
            ]
        )
    )
    entry = SigmaTable.load(table_path).find_entry("tiny/cm", "fast", "jpeg")
    assert entry["qualities"] == [10, 60] and all(abs(r - 2) <= 0.1 for r in entry["ratios"])
    assert entry["codec_mse"][0] > entry["codec_mse"][1]  # quality 10 distorts more than 60
    pipe = PerceptualDecodePipeline.from_pretrained(tmp_path / "cm", calibration_key="tiny/cm")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(torch.rand(1, 3, 20, 20), codec="jpeg", quality=35, calibration=str(table_path))
    assert min(entry["sigmas"]) <= out.sigmas[0] <= max(entry["sigmas"])


def test_calibration_script_refuses_kodak(tmp_path):
    (tmp_path / "kodak").mkdir()
    with pytest.raises(ValueError, match="test set"):
        _calibration_script().load_photographs(str(tmp_path / "kodak"), 1, 32)


def test_shipped_table_codec_mse_decreases_with_quality():
    table = SigmaTable.load()
    assert "jpeg" in table.codec_mse
    for codec, record in table.codec_mse.items():
        mse = [m for _, m in sorted(zip(record["qualities"], record["mse"]))]
        assert all(a > b for a, b in zip(mse, mse[1:])), codec
    assert table.codec_mse_for("jpeg", 10) > table.codec_mse_for("jpeg", 15) > table.codec_mse_for("jpeg", 20)


def test_slow_preset_with_diffjpeg_makes_the_output_reencode_to_the_received_jpeg():
    from rp_diffusers.codecs import get_codec
    from rp_diffusers.surrogates import get_surrogate
    from rp_diffusers.utils.image import pil_to_tensor, tensor_to_pil

    jpeg = get_surrogate("jpeg")  # shipped calibration: missing is a failure, not a skip
    sources, _ = gaussian_world(num=1, size=32)
    received = pil_to_tensor(get_codec("jpeg").run(tensor_to_pil(sources)[0], 30).reconstruction)

    def residual(scale):
        out = toy_pipe()(
            received,
            preset="slow",
            sigma=0.2,
            num_steps=6,
            codec="jpeg",
            quality=30,
            dps_scale=scale,
            generator=torch.manual_seed(0),
            output_type="pt",
        ).images
        return float((jpeg(out, 30).reconstruction - received).pow(2).sum().sqrt())

    assert residual(2.0) < 0.5 * residual(0.0)


# --------------------------------------------------------------------------------------------- fast = a sample
@pytest.mark.parametrize("sigma", [0.4, 0.2])
def test_fast_preset_of_a_diffusion_model_samples_instead_of_returning_the_posterior_mean(sigma):
    """Exact denoiser of N(0, S^2) data: the fast preset's output has the data's variance (a sample), whereas
    one x0 prediction, the posterior mean, has S^4 / (S^2 + sigma^2)."""
    pipe = PerceptualDecodePipeline(unet=tiny_unet(sample_size=None), scheduler=EDMEulerScheduler())

    def posterior_mean(x, s):
        return S**2 / (S**2 + s**2) * x

    posterior_mean.kind, posterior_mean.sigma_min, posterior_mean.sigma_max = "edm", 0.002, 80.0
    generator = torch.Generator().manual_seed(0)
    x_sigma = torch.randn(1, 3, 96, 96, generator=generator) * math.sqrt(S**2 + sigma**2)
    out = pipe._solve(posterior_mean, x_sigma, sigma, "fast", None, generator, None)
    mean_variance = float(posterior_mean(x_sigma, sigma).var()) / S**2
    assert mean_variance < 0.75
    assert 0.9 < float(out.var()) / S**2 < 1.1
    with pytest.raises(ValueError, match="at least 2 steps"):
        pipe._solve(posterior_mean, x_sigma, sigma, "fast", 1, generator, None)


# --------------------------------------------------------------------------------------------- calibration next to the model
def test_calibrate_decode_command_caches_the_rule_next_to_the_model(tmp_path, train_dir):
    from rp_diffusers.cli import main as cli_main
    from rp_diffusers.decode.calibration import CALIBRATION_FILE

    folder = tmp_path / "edm"
    PerceptualDecodePipeline(unet=tiny_unet(sample_size=None), scheduler=EDMEulerScheduler()).save_pretrained(folder)
    image = Image.open(next(p for p in sorted(train_dir.iterdir()) if p.suffix in (".png", ".jpg"))).convert("RGB")
    pipe = PerceptualDecodePipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(CalibrationError, match="rp-diffusers calibrate-decode --model"):
        pipe(image, codec="jpeg", quality=20)
    args = ["calibrate-decode", "--model", str(folder), "--data", str(train_dir), "--num-images", "2"]
    assert cli_main([*args, "--crop", "32", "--codec", "jpeg", "--qualities", "10,40"]) == 0
    entry = SigmaTable.load(folder / CALIBRATION_FILE).entries[0]
    assert entry["qualities"] == [10, 40] and all(abs(r / 2 - 1) <= 0.1 for r in entry["ratios"])
    reloaded = PerceptualDecodePipeline.from_pretrained(folder)  # any folder name: the table travels with the model
    reloaded.set_progress_bar_config(disable=True)
    out = reloaded(image.crop((0, 0, 40, 40)), codec="jpeg", quality=20)
    expected = math.exp((math.log(entry["sigmas"][0]) * 20 + math.log(entry["sigmas"][1]) * 10) / 30)
    assert out.sigmas[0] == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------------------------- the shipped model
def test_enhance_runs_offline_with_the_shipped_denoiser_and_its_calibration(tmp_path):
    """`rp-diffusers enhance DECODED.jpg --codec jpeg --quality Q --out DIR` with no other flag."""
    from rp_diffusers.cli import main as cli_main
    from rp_diffusers.codecs import get_codec
    from rp_diffusers.pipelines.perceptual_decode import DEFAULT_DECODE_MODEL_DIR

    assert (DEFAULT_DECODE_MODEL_DIR / "decode_calibration.json").is_file()
    from rp_diffusers.evaluation import EXAMPLES_DIR

    source = Image.open(sorted(EXAMPLES_DIR.glob("*.png"))[0])
    decoded = get_codec("jpeg").run(source.convert("RGB").crop((0, 0, 96, 64)), 20).reconstruction
    decoded.save(tmp_path / "decoded.jpg", quality=100)
    assert (
        cli_main(
            [
                "enhance",
                str(tmp_path / "decoded.jpg"),
                "--codec",
                "jpeg",
                "--quality",
                "20",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    out = Image.open(tmp_path / "out" / "decoded.png")
    assert out.size == (96, 64)
    difference = np.abs(np.asarray(out, dtype=float) - np.asarray(Image.open(tmp_path / "decoded.jpg"), dtype=float))
    assert 0.5 < difference.mean() < 20  # changed, by about the calibrated noise level, not replaced


def test_benchmark_runs_both_ends_together_against_each_alone(tmp_path):
    """``benchmarks/perceptual_decode.py --preprocessor default``: the pre-processor's own choice for JPEG (the dead
    zone) gives ``rp+jpeg[deadzone]`` and ``rp+jpeg[deadzone]+fast`` beside JPEG and JPEG + fast, in one run; the
    rule's MSE ratio of each enhanced curve is taken against the decode it starts from."""
    import json

    from rp_diffusers.evaluation import bd_table
    from rp_diffusers.utils.assets import ASSETS_DIR

    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "perceptual_decode.py", "rp_bench_pd")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("canal_urban", "chalet"):
        Image.open(ASSETS_DIR / "examples" / f"{name}.png").convert("RGB").crop((64, 64, 192, 160)).save(
            photos / f"{name}.png"
        )
    output = tmp_path / "both.json"
    args = bench.parse_args(
        ["--images", str(photos), "--codecs", "jpeg", "--qualities", "jpeg=20,35,55,75", "--presets", "jpeg=fast",
         "--preprocessor", "default", "--metrics", "psnr", "--workers", "0", "--threads", "1", "--output", str(output),
         "--crop", "chalet:8,8,48"]
    )  # fmt: skip
    bench.main(args)
    report = json.loads(output.read_text())
    entry = report["codecs"]["jpeg"]
    # the crop figure shows both ends too: source | jpeg | + fast | rp+jpeg[deadzone] | + fast, 2x each
    assert Image.open(output.with_name(report["crops"])).size == (5 * (2 * 48 + 10) - 10, 2 * 48 + 28)
    front = "rp+jpeg[deadzone]"
    assert set(entry["curves"]) == {"jpeg", "jpeg+fast", front, f"{front}+fast"}
    assert entry["preprocessor"]["curve"] == front and "dead zone" in entry["preprocessor"]["choice"]
    records = {name: curve["per_image"] for name, curve in entry["curves"].items()}
    # the dead zone codes fewer bits than JPEG at every quality; the enhancement never changes the bits
    for plain, dead, enhanced in zip(records["jpeg"], records[front], records[f"{front}+fast"]):
        assert dead["bpp"] < plain["bpp"] and enhanced["bpp"] == dead["bpp"]
    # the ratio of the rule is against the same front end's decode
    for name, base in (("jpeg+fast", "jpeg"), (f"{front}+fast", front)):
        expect = []
        for quality in (20, 35, 55, 75):
            mse = {
                curve: np.mean([10 ** (-r["psnr-rgb"] / 10) for r in records[curve] if r["quality"] == quality])
                for curve in (name, base)
            }
            expect.append(mse[name] / mse[base])
        assert entry["mse_ratio"][name] == pytest.approx(expect)
        assert all(ratio > 1 for ratio in entry["mse_ratio"][name])  # the enhancement really ran on that decode
    assert set(entry["bd_rate"]) == {"jpeg+fast", front, f"{front}+fast"}
    curves = entry["curves"]
    assert entry["bd_rate"][front]["psnr-rgb"] == pytest.approx(bd_table(curves["jpeg"], curves[front])["psnr-rgb"])
    # what the enhancement adds on top of the pre-processor: against the pre-processor's curve, not JPEG's
    on_top = entry["bd_rate_vs_preprocessed"]
    assert set(on_top) == {f"{front}+fast"}
    value = on_top[f"{front}+fast"]["psnr-rgb"]
    assert math.isfinite(value) and value == pytest.approx(
        bd_table(curves[front], curves[f"{front}+fast"])["psnr-rgb"]
    )
    assert value != pytest.approx(bd_table(curves["jpeg"], curves[f"{front}+fast"])["psnr-rgb"])
    assert set(entry["seconds"]) == {"jpeg+fast", f"{front}+fast"}
    assert all(0 < cost["enhance_per_image"] < math.inf for cost in entry["seconds"].values())

    # a codec the pre-processor leaves alone adds no curve
    from rp_diffusers.default_model import load_preprocessor

    preprocessor = load_preprocessor("default", "cpu")
    alone = bench.both_ends(preprocessor, "avif")
    assert alone["name"] is None and "avif alone" in alone["reason"]
    # a codec it pre-processes with its network (WebP: the base model) gets that network, image by image
    webp = bench.both_ends(preprocessor, "webp")
    assert webp["name"] == "rp+webp[base]" and webp["codec_step"] is None
    crop = Image.open(photos / "chalet.png")
    expected = preprocessor([crop], adapter_name=[], batch_size=1).images[0]
    first = webp["preprocess"]([crop])[0]
    assert np.array_equal(np.asarray(first), np.asarray(expected)) and first.size == crop.size
    assert webp["preprocess"]([crop.copy()])[0] is first  # computed once for all of that front end's curves
