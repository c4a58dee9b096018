"""Metrics: PSNR/MS-SSIM against numpy and pytorch_msssim, LPIPS/DISTS/FID-Inception against the reference packages
(seeded weights, outputs in tests/fixtures/metrics_reference.json), FID/KID, patches, BD-rate against bjontegaard."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rp_diffusers.metrics import (
    DISTS,
    ENV_DIR,
    LPIPS,
    WEIGHT_FILES,
    FIDInceptionV3,
    MetricWeightsUnavailable,
    bd_quality,
    bd_rate,
    compute_metrics,
    convert_official_weights,
    extract_patches,
    fid_from_features,
    kid_from_features,
    ms_ssim,
    patch_fid,
    patch_kid,
    psnr,
    ssim,
)
from rp_diffusers.metrics.testing import (
    checksum,
    seeded_features,
    seeded_image_pair,
    seeded_network,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "metrics_reference.json").read_text())
SEED = FIXTURE["seed"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def networks():
    """Our metric networks with the fixture's seeded weights, built once (the Inception takes seconds)."""
    return {name: seeded_network(name, SEED) for name in ("lpips_alex", "lpips_vgg", "dists", "fid_inception")}


@pytest.fixture
def no_weights(monkeypatch):
    """No local weight folder; the cache is empty (conftest) and HF_HUB_OFFLINE=1 stops any download."""
    monkeypatch.delenv(ENV_DIR, raising=False)


# ----------------------------------------------------------------------------------------------------- PSNR


def test_psnr_identical_images_is_inf():
    x = torch.rand(2, 3, 16, 16)
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_known_mse():
    x = torch.zeros(1, 3, 8, 8)
    y = x.clone()
    y[..., :4, :] = 10 / 255  # half the pixels off by 10 levels: MSE = 50 / 255**2
    assert psnr(x, y).item() == pytest.approx(10 * np.log10(255**2 / 50), abs=1e-9)


def test_psnr_matches_numpy_on_8bit_images():
    x, y = seeded_image_pair((3, 3, 32, 40), seed=5)
    ours = psnr(x, y)
    a = np.clip(np.round(x.double().numpy() * 255), 0, 255)
    b = np.clip(np.round(y.double().numpy() * 255), 0, 255)
    expected = [10 * np.log10(255**2 / np.mean((a[i] - b[i]) ** 2)) for i in range(3)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12)


def test_psnr_quantize_hides_sub_level_differences():
    x = torch.full((1, 3, 8, 8), 0.5)
    y = x + 0.1 / 255
    assert torch.isinf(psnr(x, y)).all()
    assert psnr(x, y, quantize=False).item() == pytest.approx(20 * np.log10(255 / 0.1), rel=1e-4)


# -------------------------------------------------------------------------------------------------- MS-SSIM


@pytest.mark.parametrize("dtype, shape", [(torch.float64, (2, 3, 161, 161)), (torch.float32, (1, 3, 200, 173))])
def test_ms_ssim_matches_pytorch_msssim(dtype, shape):
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = seeded_image_pair(shape, seed=7)
    x, y = x.to(dtype), y.to(dtype)
    expected = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ms_ssim(x, y, quantize=False), expected, rtol=1e-6, atol=1e-7)
    # quantize=True is CompressAI's evaluation: 8-bit values, data range 255
    x8, y8 = (x * 255).round(), (y * 255).round()
    expected8 = pytorch_msssim.ms_ssim(x8, y8, data_range=255, size_average=False)
    torch.testing.assert_close(ms_ssim(x, y), expected8, rtol=1e-5, atol=1e-6)


def test_ssim_matches_pytorch_msssim():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = seeded_image_pair((2, 3, 48, 40), seed=8)
    expected = pytorch_msssim.ssim(x.double(), y.double(), data_range=1.0, size_average=False)
    torch.testing.assert_close(ssim(x.double(), y.double(), quantize=False), expected, rtol=1e-10, atol=1e-12)


def test_ms_ssim_identical_images_is_one():
    x, _ = seeded_image_pair((2, 3, 176, 176), seed=9)
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(2), rtol=0, atol=1e-6)


def test_ms_ssim_symmetric():
    x, y = seeded_image_pair((2, 3, 170, 190), seed=10)
    torch.testing.assert_close(ms_ssim(x, y), ms_ssim(y, x), rtol=1e-6, atol=1e-7)


def test_ms_ssim_decreases_with_noise():
    x, _ = seeded_image_pair((1, 3, 176, 176), seed=11)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    values = [ms_ssim(x, (x + level * noise).clamp(0, 1)).item() for level in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2] > 0


def test_ms_ssim_small_images_raise_with_minimum_size():
    x = torch.rand(1, 3, 160, 300)
    with pytest.raises(ValueError, match="at least 161 pixels"):
        ms_ssim(x, x)


# ------------------------------------------------------------------ LPIPS / DISTS / Inception vs the reference


def test_seeded_weights_reproduce_reference_checksums(networks):
    for name, expected in FIXTURE["weights_checksum"].items():
        state = {k: v for k, v in networks[name].state_dict().items() if not k.endswith("num_batches_tracked")}
        assert checksum(state) == pytest.approx(expected, rel=1e-12), name


@pytest.mark.parametrize("name", ["lpips_alex", "lpips_vgg", "dists"])
def test_lpips_dists_match_reference_packages(networks, name):
    for case in FIXTURE[name]["cases"]:
        x, y = seeded_image_pair(tuple(case["shape"]), case["seed"])
        assert checksum(x) + checksum(y) == pytest.approx(case["input_checksum"], rel=1e-12)
        with torch.no_grad():
            ours = networks[name](x, y).double()
        # DISTS is 1 - S with S ~ 0.99, both sides computed in float32 (the fixture holds DISTS_pytorch's float32
        # outputs from another machine): their error is absolute, set by S's float32 accumulation (a pairwise sum
        # of n terms is off by up to ~log2(n) ulps, ulp = 6e-8 below 1; 1475 channel terms from spatial means over
        # up to 64x64 positions: ~7e-7), and independent of the small distance left after the subtraction (1 ulp
        # = 8e-6 of a 0.0077 DISTS). Convolution kernels that differ between CPUs move it by 1-3 ulps.
        atol = 1e-6 if name == "dists" else 1e-8
        torch.testing.assert_close(ours, torch.tensor(case["reference"], dtype=torch.float64), rtol=1e-5, atol=atol)


def test_fid_inception_matches_pytorch_fid(networks):
    for case in FIXTURE["fid_inception"]["cases"]:
        x, _ = seeded_image_pair(tuple(case["shape"]), case["seed"])
        with torch.no_grad():
            features = networks["fid_inception"](x).double()
        assert features.shape == (case["shape"][0], 2048)
        scale = max(abs(v) for row in case["reference_strided"] for v in row)
        reference = torch.tensor(case["reference_strided"], dtype=torch.float64)
        torch.testing.assert_close(features[:, :: case["stride"]], reference, rtol=1e-5, atol=1e-6 * scale)
        torch.testing.assert_close(
            features.sum(1), torch.tensor(case["reference_sum"], dtype=torch.float64), rtol=1e-5, atol=0
        )
        torch.testing.assert_close(
            features.norm(dim=1), torch.tensor(case["reference_norm"], dtype=torch.float64), rtol=1e-5, atol=0
        )


@pytest.mark.parametrize("name", ["lpips_alex", "lpips_vgg", "dists"])
def test_lpips_dists_zero_for_identical_positive_otherwise(networks, name):
    x, y = seeded_image_pair((3, 3, 64, 64), seed=3)
    with torch.no_grad():
        same, different = networks[name](x, x), networks[name](x, y)
    assert same.shape == different.shape == (3,)
    torch.testing.assert_close(same, torch.zeros(3), rtol=0, atol=1e-6)
    assert (different > 1e-4).all()
    assert different[0] < different[1] < different[2]  # noise grows along the batch


def test_lpips_gradients_reach_the_input(networks):
    x, y = seeded_image_pair((1, 3, 48, 48), seed=4)
    y = y.requires_grad_(True)
    networks["lpips_alex"](x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in networks["lpips_alex"].parameters())


@pytest.mark.parametrize(
    "build, official",
    [(lambda: LPIPS("alex"), "alexnet-owt-7be5be79.pth"), (DISTS, "weights.pt"), (FIDInceptionV3, "pt_inception")],
)
def test_missing_weights_offline_raise_helpful_error(no_weights, build, official):
    with pytest.raises(MetricWeightsUnavailable) as info:
        build()
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert official in message and "python -m rp_diffusers.metrics.weights" in message and ENV_DIR in message


def test_weights_load_from_env_folder(monkeypatch, tmp_path, networks):
    from safetensors.torch import save_file

    save_file(networks["lpips_alex"].state_dict(), str(tmp_path / WEIGHT_FILES["lpips_alex"]))
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    x, y = seeded_image_pair((2, 3, 40, 40), seed=6)
    with torch.no_grad():
        torch.testing.assert_close(LPIPS("alex")(x, y), networks["lpips_alex"](x, y), rtol=0, atol=0)
        torch.testing.assert_close(
            LPIPS("alex", weights_path=tmp_path)(x, y), networks["lpips_alex"](x, y), rtol=0, atol=0
        )


def test_weights_unconverted_official_layout_is_refused():
    official = {f"lin{k}.model.1.weight": torch.zeros(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}
    with pytest.raises(ValueError, match="converted first"):
        LPIPS("alex", state_dict=official)


def _official_files(tmp_path: Path, networks) -> list[Path]:
    """Our seeded weights written in the official formats (torchvision, lpips, DISTS, pytorch-fid)."""
    alex, vgg = networks["lpips_alex"].state_dict(), networks["lpips_vgg"].state_dict()
    dists_sd, inception = networks["dists"].state_dict(), networks["fid_inception"].state_dict()
    files = {
        "alexnet-owt-7be5be79.pth": {
            **{k: v for k, v in alex.items() if k.startswith("features.")},
            "classifier.6.bias": torch.zeros(1000),
        },
        "alex.pth": {f"lin{k}.model.1.weight": alex[f"lin{k}.weight"] for k in range(5)},
        "vgg.pth": {f"lin{k}.model.1.weight": vgg[f"lin{k}.weight"] for k in range(5)},
        # one vgg16-397923af.pth serves LPIPS-VGG and DISTS: here it holds the DISTS backbone
        "vgg16-397923af.pth": {k: v for k, v in dists_sd.items() if k.startswith("features.")},
        "weights.pt": {"alpha": dists_sd["alpha"], "beta": dists_sd["beta"]},
        "pt_inception-2015-12-05-6726825d.pth": {**inception, "fc.weight": torch.zeros(1008, 2048)},
    }
    for name, state in files.items():
        torch.save(state, tmp_path / name)
    return [tmp_path / name for name in files]


def test_convert_official_weights_round_trip(tmp_path, networks):
    written = convert_official_weights(_official_files(tmp_path, networks), tmp_path / "out")
    assert sorted(written) == ["dists", "fid_inception", "lpips_alex", "lpips_vgg"]
    loaded = {
        "lpips_alex": LPIPS("alex", weights_path=written["lpips_alex"]),
        "lpips_vgg": LPIPS("vgg", weights_path=tmp_path / "out"),
        "dists": DISTS(weights_path=tmp_path / "out"),
        "fid_inception": FIDInceptionV3(weights_path=written["fid_inception"]),
    }
    for name, model in loaded.items():
        reference = networks[name].state_dict()
        if name == "lpips_vgg":  # its backbone came from the shared vgg16 file (DISTS's seeded backbone)
            reference = {
                **reference,
                **{k: v for k, v in networks["dists"].state_dict().items() if k.startswith("features.")},
            }
        for key, value in model.state_dict().items():
            assert torch.equal(value, reference[key]), (name, key)
    x, y = seeded_image_pair((2, 3, 40, 40), seed=12)
    with torch.no_grad():
        torch.testing.assert_close(loaded["lpips_alex"](x, y), networks["lpips_alex"](x, y), rtol=0, atol=0)


_UNPICKLED = []


class _Payload:
    def __reduce__(self):
        return (_UNPICKLED.append, ("code ran",))


def test_convert_official_weights_never_runs_pickled_code(tmp_path):
    torch.save({"features.0.weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        convert_official_weights([tmp_path / "evil.pth"], tmp_path / "out")
    assert _UNPICKLED == []


def test_convert_official_weights_refuses_unknown_files(tmp_path):
    torch.save({"something.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an official file"):
        convert_official_weights([tmp_path / "other.pth"], tmp_path / "out")
    torch.save({"alpha": torch.zeros(1, 1475, 1, 1), "beta": torch.zeros(1, 1475, 1, 1)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="dists needs vgg16"):
        convert_official_weights([tmp_path / "weights.pt"], tmp_path / "out")


# ---------------------------------------------------------------------------------------------- compute_metrics


def test_compute_metrics_skips_unavailable_networks_with_warning(no_weights):
    x, y = seeded_image_pair((2, 3, 64, 64), seed=13)
    with pytest.warns(UserWarning, match="skipping lpips: .*alexnet-owt-7be5be79.pth"):
        results = compute_metrics(x, y, metrics=("psnr", "lpips"))
    assert list(results) == ["psnr"]
    np.testing.assert_allclose(results["psnr"], psnr(x, y).tolist())


def test_compute_metrics_uses_given_networks(networks):
    x, y = seeded_image_pair((2, 3, 64, 64), seed=14)
    models = {"lpips": networks["lpips_alex"], "dists": networks["dists"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = compute_metrics(x, y, metrics=("psnr", "ssim", "lpips", "dists"), models=models)
    assert list(results) == ["psnr", "ssim", "lpips", "dists"]
    with torch.no_grad():
        np.testing.assert_allclose(results["lpips"], networks["lpips_alex"](x, y).tolist(), rtol=1e-6)
        np.testing.assert_allclose(results["dists"], networks["dists"](x, y).tolist(), rtol=1e-6)
    np.testing.assert_allclose(results["ssim"], ssim(x, y).tolist(), rtol=1e-6)


def test_compute_metrics_rejects_unknown_metric():
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(x, x, metrics=("psnr", "flip"))


# ----------------------------------------------------------------------------------------------------- FID/KID


def test_fid_identical_feature_sets_is_zero():
    a = seeded_features(100, 32, seed=1)
    assert abs(fid_from_features(a, a)) < 1e-9 * float(torch.cov(a.T).trace())


@pytest.mark.parametrize("index", [0, 1])
def test_fid_matches_pytorch_fid_and_torch_fidelity(index):
    case = FIXTURE["fid"][index]
    a = seeded_features(case["count"], case["dim"], case["seeds"][0])
    b = seeded_features(case["count"], case["dim"], case["seeds"][1], case["shift"])
    assert checksum(a) + checksum(b) == pytest.approx(case["features_checksum"], rel=1e-12)
    ours = fid_from_features(a, b)
    assert ours == pytest.approx(case["pytorch_fid"], rel=1e-9)
    assert ours == pytest.approx(case["torch_fidelity"], rel=1e-9)


def test_kid_matches_torch_fidelity():
    for case in FIXTURE["kid"]:
        a = seeded_features(case["count"], case["dim"], case["seeds"][0])
        b = seeded_features(case["count"], case["dim"], case["seeds"][1], case["shift"])
        mean, std = kid_from_features(
            a, b, num_subsets=case["subsets"], subset_size=case["subset_size"], return_std=True
        )
        assert mean == pytest.approx(case["torch_fidelity_mean"], rel=1e-9)
        assert std == pytest.approx(case["torch_fidelity_std"], rel=1e-6, abs=1e-12)


def test_kid_unbiased_near_zero_for_one_distribution():
    a, b = seeded_features(300, 16, seed=2), seeded_features(300, 16, seed=3)
    shifted = seeded_features(300, 16, seed=4, shift=0.2)
    same, spread = kid_from_features(a, b, num_subsets=50, subset_size=100, return_std=True)
    different = kid_from_features(a, shifted, num_subsets=50, subset_size=100)
    biased_bias = float(((a[:100] @ a[:100].T / 16 + 1) ** 3).diagonal().mean()) / 100  # what a biased estimate adds
    assert abs(same) < 0.2 * biased_bias and abs(same) < 0.02 * different
    assert abs(same) < 3 * spread / np.sqrt(50) + 1e-9


def _ms_illm_patches(images: torch.Tensor, p: int) -> torch.Tensor:
    """MS-ILLM's update_patch_fid patch cutting (F.unfold, then the half-shifted grid)."""
    grid = F.unfold(images, kernel_size=p, stride=p).permute(0, 2, 1).reshape(-1, 3, p, p)
    if images.shape[2] >= 1.5 * p and images.shape[3] >= 1.5 * p:
        shifted = F.unfold(images[:, :, p // 2 :, p // 2 :], kernel_size=p, stride=p)
        grid = torch.cat([grid, shifted.permute(0, 2, 1).reshape(-1, 3, p, p)])
    return torch.round(grid * 255) / 255


def test_extract_patches_matches_ms_illm_protocol():
    images = torch.rand(2, 3, 80, 112, generator=torch.Generator().manual_seed(0))
    patches = extract_patches(images, patch_size=32)
    assert patches.shape == (2 * (2 * 3 + 2 * 3), 3, 32, 32)  # 80x112: 2x3 grid, then 64x96 shifted: 2x3
    torch.testing.assert_close(patches, _ms_illm_patches(images, 32), rtol=0, atol=0)


def test_extract_patches_kodak_sizes_give_eight_per_image():
    images = [torch.zeros(3, 512, 768), torch.zeros(1, 3, 768, 512)]
    assert extract_patches(images).shape == (16, 3, 256, 256)
    with pytest.raises(ValueError, match="lower patch_size"):
        extract_patches([torch.zeros(3, 100, 300)])


class _ChannelStats(torch.nn.Module):
    """A cheap stand-in feature extractor (per-channel means and standard deviations) for the patch plumbing."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


def test_patch_fid_and_kid_zero_for_identical_sets_positive_for_distorted():
    x, y = seeded_image_pair((3, 3, 96, 96), seed=15)
    model = _ChannelStats()
    assert abs(patch_fid(x, x, patch_size=32, model=model)) < 1e-10
    assert patch_fid(x, y, patch_size=32, model=model) > 1e-4
    assert patch_kid(x, y, patch_size=32, model=model, num_subsets=5) > patch_kid(
        x, x, patch_size=32, model=model, num_subsets=5
    )


# ---------------------------------------------------------------------------------------------------- BD-rate

CURVES = [
    # (anchor rate, anchor PSNR, test rate, test PSNR)
    ([0.12, 0.25, 0.47, 0.9], [27.1, 30.2, 33.0, 35.9], [0.1, 0.21, 0.43, 0.85], [27.6, 30.5, 33.6, 36.0]),
    (
        [0.1, 0.2, 0.4, 0.8, 1.6],
        [26.0, 29.1, 32.5, 35.2, 38.9],
        [0.15, 0.3, 0.55, 1.1, 1.9],
        [26.4, 29.0, 32.9, 35.0, 38.0],
    ),
    (
        [0.05, 0.11, 0.23, 0.5, 0.95, 1.7],
        [24.2, 27.5, 30.1, 33.3, 36.0, 38.8],
        [0.06, 0.1, 0.2, 0.45, 0.9, 1.5],
        [24.0, 27.9, 30.6, 33.9, 36.1, 38.4],
    ),
]


@pytest.mark.parametrize("method", ["akima", "pchip", "cubic"])
@pytest.mark.parametrize("curve", range(len(CURVES)))
def test_bd_rate_and_bd_quality_match_bjontegaard(method, curve):
    bjontegaard = pytest.importorskip("bjontegaard")
    ra, qa, rt, qt = CURVES[curve]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_rate = bjontegaard.bd_rate(ra, qa, rt, qt, method=method)
        expected_psnr = bjontegaard.bd_psnr(ra, qa, rt, qt, method=method)
        assert bd_rate(ra, qa, rt, qt, method=method) == pytest.approx(expected_rate, rel=1e-6, abs=1e-9)
        assert bd_quality(ra, qa, rt, qt, method=method) == pytest.approx(expected_psnr, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method", ["akima", "pchip", "cubic"])
def test_bd_rate_curve_against_itself_is_zero(method):
    ra, qa, _, _ = CURVES[1]
    assert bd_rate(ra, qa, ra, qa, method=method) == pytest.approx(0.0, abs=1e-10)
    assert bd_quality(ra, qa, ra, qa, method=method) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("method", ["akima", "pchip", "cubic"])
def test_bd_rate_uniform_rate_saving_is_exact(method):
    ra, qa, _, _ = CURVES[1]
    assert bd_rate(ra, qa, [0.9 * r for r in ra], qa, method=method) == pytest.approx(-10.0, abs=1e-9)


@pytest.mark.parametrize("method", ["akima", "pchip", "cubic"])
def test_bd_rate_lower_is_better_path(method):
    bjontegaard = pytest.importorskip("bjontegaard")
    ra = [0.12, 0.25, 0.47, 0.9, 1.6]
    lpips_a, lpips_t = np.array([0.5, 0.4, 0.3, 0.2, 0.12]), np.array([0.46, 0.37, 0.29, 0.18, 0.11])
    rate = bd_rate(ra, lpips_a, ra, lpips_t, method=method, higher_is_better=False)
    quality = bd_quality(ra, lpips_a, ra, lpips_t, method=method, higher_is_better=False)
    assert rate < 0 and quality > 0  # the test has lower LPIPS at every rate: fewer bits, better quality
    assert rate == pytest.approx(bjontegaard.bd_rate(ra, -lpips_a, ra, -lpips_t, method=method), rel=1e-6)
    assert quality == pytest.approx(bjontegaard.bd_psnr(ra, lpips_a, ra, lpips_t, method=method) * -1, rel=1e-6)
    with pytest.raises(ValueError, match="higher_is_better"):
        bd_rate(ra, lpips_a, ra, lpips_t, method=method)


def test_bd_rate_accepts_points_in_any_order():
    ra, qa, rt, qt = CURVES[2]
    order = [3, 0, 5, 1, 4, 2]
    shuffled = bd_rate([ra[i] for i in order], [qa[i] for i in order], rt[::-1], qt[::-1])
    assert shuffled == pytest.approx(bd_rate(ra, qa, rt, qt), rel=1e-12)


def test_bd_rate_non_monotone_refused_or_dominated_points_dropped():
    ra, qa = [0.1, 0.2, 0.4, 0.8, 1.6], [26.0, 29.1, 32.5, 32.4, 38.9]
    rt, qt = CURVES[1][2], CURVES[1][3]
    with pytest.raises(ValueError, match="does not increase strictly"):
        bd_rate(ra, qa, rt, qt)
    clean = bd_rate([0.1, 0.2, 0.4, 1.6], [26.0, 29.1, 32.5, 38.9], rt, qt)
    assert bd_rate(ra, qa, rt, qt, drop_dominated=True) == pytest.approx(clean, rel=1e-12)


def test_bd_rate_refuses_bad_inputs():
    ra, qa, rt, qt = CURVES[0]
    with pytest.raises(ValueError, match="at least 4 points"):
        bd_rate(ra[:3], qa[:3], rt, qt, method="cubic")
    with pytest.raises(ValueError, match="same rate"):
        bd_rate([0.1, 0.1, 0.4, 0.8], [27.0, 28.0, 33.0, 35.9], rt, qt)
    with pytest.raises(ValueError, match="unknown interpolation"):
        bd_rate(ra, qa, rt, qt, method="linear")
    # exact duplicate points are merged, not refused
    assert bd_rate([*ra, ra[1]], [*qa, qa[1]], rt, qt) == pytest.approx(bd_rate(ra, qa, rt, qt), rel=1e-12)


def test_bd_rate_disjoint_curves_give_nan_with_warning():
    with pytest.warns(UserWarning, match="do not overlap"):
        value = bd_rate([0.1, 0.2, 0.4, 0.8], [20, 21, 22, 23], [0.1, 0.2, 0.4, 0.8], [30, 31, 32, 33])
    assert np.isnan(value)
