"""Evaluation sweeps, results files in CompressAI's schema, plots, BD tables and the evaluate/bd-rate commands."""

import json

import numpy as np
import pytest
from PIL import Image

from rp_diffusers.cli import main
from rp_diffusers.codecs import get_codec
from rp_diffusers.evaluation import EXAMPLES_DIR, bd_table, evaluate, list_images, load_results, parse_qualities

QUALITIES = [10, 30, 50, 70]


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> list:
    """Two 192x176 crops of the bundled example photos, saved as PNG."""
    folder = tmp_path_factory.mktemp("crops")
    for path in list_images(EXAMPLES_DIR)[:2]:
        Image.open(path).convert("RGB").crop((40, 30, 232, 206)).save(folder / f"{path.stem}.png")
    return folder


@pytest.fixture(scope="module")
def jpeg_result(crops):
    return evaluate(crops, "jpeg", QUALITIES, metrics=("psnr", "ms_ssim"), workers=0, progress=False)


def test_parse_qualities_list_and_range():
    assert parse_qualities("30,10, 20") == [10, 20, 30]
    assert parse_qualities("10:50:20") == [10, 30, 50]
    assert parse_qualities([5, 5.0, 7]) == [5.0, 7.0]


@pytest.mark.parametrize("spec", ["", "a,b", "50:10:10", "10:50:0"])
def test_parse_qualities_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match="qualities"):
        parse_qualities(spec)


def test_evaluate_records_match_the_real_codec(crops, jpeg_result):
    assert len(jpeg_result.records) == 2 * len(QUALITIES)
    first = jpeg_result.records[0]
    image = Image.open(crops / f"{first['image']}.png")
    real = get_codec("jpeg").run(image, quality=first["quality"])
    assert first["bpp"] == pytest.approx(real.bpp, rel=0, abs=0)
    reference = np.asarray(image, dtype=np.float64)
    mse = np.mean((reference - np.asarray(real.reconstruction, dtype=np.float64)) ** 2)
    assert first["psnr-rgb"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-4)


def test_evaluate_results_follow_compressai_schema(jpeg_result):
    data = jpeg_result.to_dict()
    assert set(data) >= {"name", "description", "results", "meta", "per_image"}
    results = data["results"]
    assert results["quality"] == QUALITIES
    assert len(results["bpp"]) == len(results["psnr-rgb"]) == len(results["ms-ssim-rgb"]) == len(QUALITIES)
    assert results["bpp"] == sorted(results["bpp"]) and results["psnr-rgb"] == sorted(results["psnr-rgb"])
    first_q = [r["bpp"] for r in data["per_image"] if r["quality"] == QUALITIES[0]]
    assert results["bpp"][0] == pytest.approx(sum(first_q) / len(first_q))


def test_evaluate_parallel_equals_serial(crops, jpeg_result):
    parallel = evaluate(crops, "jpeg", QUALITIES, metrics=("psnr", "ms_ssim"), workers=2, progress=False)
    strip = [{k: v for k, v in r.items() if not k.endswith("_time")} for r in parallel.records]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_time")} for r in jpeg_result.records]


def test_evaluate_preprocess_identity_is_neutral_and_resize_refused(crops, jpeg_result):
    same = evaluate(crops, "jpeg", QUALITIES, metrics=("psnr",), preprocess=lambda ims: ims, workers=0, progress=False)
    assert [r["bpp"] for r in same.records] == [r["bpp"] for r in jpeg_result.records]
    with pytest.raises(RuntimeError, match="changed image sizes"):
        evaluate(crops, "jpeg", [50], preprocess=lambda ims: [im.resize((8, 8)) for im in ims], workers=0)


def test_evaluate_enhance_is_measured_against_originals(crops):
    blank = evaluate(
        crops,
        "jpeg",
        [50],
        metrics=("psnr",),
        enhance=lambda ims, q: [Image.new("RGB", im.size) for im in ims],
        workers=0,
        progress=False,
    )
    assert all(r["psnr-rgb"] < 12 for r in blank.records)


def test_evaluate_enhance_shows_its_progress(crops, capsys):
    """The enhancement and its measurements (minutes per curve on real photographs) have a progress bar of their
    own, which counts every (image, quality) once; ``progress=False`` keeps it quiet."""
    kwargs = dict(metrics=("psnr",), enhance=lambda ims, q: list(ims), workers=0, name="plain")
    result = evaluate(crops, "jpeg", [30, 50], progress=True, **kwargs)
    total = len(result.records)
    err = capsys.readouterr().err
    assert "plain: enhance, measure: 100%" in err and f"{total}/{total}" in err
    evaluate(crops, "jpeg", [30, 50], progress=False, **kwargs)
    assert "enhance, measure" not in capsys.readouterr().err


def test_evaluate_skips_unavailable_network_metrics_with_warning(crops, monkeypatch, tmp_path):
    monkeypatch.setenv("RP_DIFFUSERS_METRIC_WEIGHTS", str(tmp_path))
    with pytest.warns(UserWarning, match="lpips"):
        result = evaluate(crops, "jpeg", [50], metrics=("psnr", "lpips"), workers=0, progress=False)
    assert "lpips" not in result.records[0] and "psnr-rgb" in result.records[0]


def test_evaluate_quality_out_of_range(crops):
    with pytest.raises(ValueError, match="outside jpeg's range"):
        evaluate(crops, "jpeg", [0, 500], workers=0)


def test_bd_table_self_is_zero_and_worse_curve_positive(jpeg_result):
    data = jpeg_result.to_dict()
    assert bd_table(data, data) == pytest.approx({"psnr-rgb": 0.0, "ms-ssim-rgb": 0.0}, abs=1e-9)
    costly = json.loads(json.dumps(data))
    costly["results"]["bpp"] = [b * 1.25 for b in costly["results"]["bpp"]]
    assert bd_table(data, costly)["psnr-rgb"] == pytest.approx(25.0, abs=1e-6)


def test_cli_evaluate_writes_json_plot_and_bd_table(crops, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            "--images",
            str(crops),
            "--codec",
            "jpeg,webp",
            "--qualities",
            "10,30,50,70",
            "--metrics",
            "psnr,ms_ssim",
            "--output",
            str(out),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"jpeg.json", "webp.json", "rd.png", "bd_rate.json"}
    assert load_results(out / "webp.json")["results"]["quality"] == QUALITIES
    bd = json.loads((out / "bd_rate.json").read_text())
    assert bd["anchor"] == "jpeg" and set(bd["bd_rate"]["webp"]) == {"psnr-rgb", "ms-ssim-rgb"}
    assert "BD-rate [%] vs jpeg" in capsys.readouterr().out
    assert Image.open(out / "rd.png").size[0] > 500

    code = main(["bd-rate", str(out / "jpeg.json"), str(out / "webp.json"), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["bd_rate"]["webp"] == pytest.approx(bd["bd_rate"]["webp"])


def test_cli_unknown_codec_is_one_line_error(crops, tmp_path, capsys):
    code = main(["evaluate", "--images", str(crops), "--codec", "nope", "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "jpeg" in err


def test_cli_bd_rate_rejects_non_results_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1}')
    assert main(["bd-rate", str(bad), str(bad)]) == 2
    assert "results.bpp" in capsys.readouterr().err


def test_cli_evaluate_enhance_adds_enhanced_curves(crops, tmp_path, capsys):
    import torch
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
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            "--images",
            str(crops),
            "--codec",
            "jpeg",
            "--qualities",
            "30,50",
            "--metrics",
            "psnr",
            "--enhance",
            "fast",
            "--enhance-model",
            str(tmp_path / "cm"),
            "--enhance-sigma",
            "0",
            "--output",
            str(out),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    plain, enhanced = load_results(out / "jpeg.json"), load_results(out / "jpeg+fast.json")
    # sigma = 0 returns the decoded image: the enhanced curve equals the plain one, and the timing is recorded.
    assert enhanced["results"]["psnr-rgb"] == pytest.approx(plain["results"]["psnr-rgb"], abs=1e-9)
    assert all("enhance_time" in r for r in enhanced["per_image"])

    noisy = tmp_path / "noisy"
    main(
        [
            "evaluate",
            "--images",
            str(crops),
            "--codec",
            "jpeg",
            "--qualities",
            "30",
            "--metrics",
            "psnr",
            "--enhance",
            "fast",
            "--enhance-model",
            str(tmp_path / "cm"),
            "--enhance-sigma",
            "0.5",
            "--output",
            str(noisy),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    changed = load_results(noisy / "jpeg+fast.json")["results"]["psnr-rgb"][0]
    assert abs(changed - plain["results"]["psnr-rgb"][0]) > 0.1  # a random tiny model really ran on the decode


def test_cli_evaluate_model_and_enhance_run_both_ends_together(crops, tmp_path):
    """``--model default --enhance fast``: the codec alone, the pre-processor's choice for the codec (for JPEG the
    dead zone), and each of them enhanced: four curves in one run, one BD-rate table against the codec alone."""
    import torch
    from diffusers import CMStochasticIterativeScheduler, UNet2DModel

    from rp_diffusers.pipelines import PerceptualDecodePipeline

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    )  # fmt: skip
    PerceptualDecodePipeline(unet=unet, scheduler=CMStochasticIterativeScheduler()).save_pretrained(tmp_path / "cm")
    out = tmp_path / "out"
    argv = ["evaluate", "--images", str(crops), "--codec", "jpeg", "--qualities", "30,50", "--metrics", "psnr",
            "--model", "default", "--enhance", "fast", "--enhance-model", str(tmp_path / "cm"),
            "--enhance-sigma", "0.5", "--output", str(out), "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    names = ["jpeg", "jpeg+fast", "rp+jpeg[deadzone]", "rp+jpeg[deadzone]+fast"]
    curves = {name: load_results(out / f"{name}.json") for name in names}
    bits = {name: [r["bpp"] for r in curve["per_image"]] for name, curve in curves.items()}
    assert bits["jpeg+fast"] == bits["jpeg"] and bits["rp+jpeg[deadzone]+fast"] == bits["rp+jpeg[deadzone]"]
    assert all(dead < plain for dead, plain in zip(bits["rp+jpeg[deadzone]"], bits["jpeg"]))
    psnr = {name: curve["results"]["psnr-rgb"] for name, curve in curves.items()}
    assert all(abs(a - b) > 0.1 for a, b in zip(psnr["rp+jpeg[deadzone]+fast"], psnr["rp+jpeg[deadzone]"]))
    table = json.loads((out / "bd_rate.json").read_text())
    assert table["anchor"] == "jpeg" and set(table["bd_rate"]) == set(names[1:])


def test_evaluate_default_metrics_measure_every_installed_perceptual_metric(crops):
    """The default set has SSIMULACRA2 always and the tools where installed; the values are those of the
    metric functions on the real decodes."""
    import warnings

    from rp_diffusers.evaluation.results import RESULT_KEYS
    from rp_diffusers.metrics import compute_metrics, installed_perceptual_metrics
    from rp_diffusers.utils import pil_to_tensor

    installed = installed_perceptual_metrics()
    assert installed[0] == "ssimulacra2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LPIPS / DISTS weights are not on this machine
        result = evaluate(crops, "jpeg", [20, 60], workers=0, progress=False)
    record = result.records[0]
    for name in ("psnr", "ms_ssim", *installed):
        assert RESULT_KEYS[name] in record, name
    assert result.meta["metrics"][: 2 + len(installed)] == ["psnr", "ms_ssim", *installed]
    original = Image.open(list_images(crops)[0]).convert("RGB")
    decoded = get_codec("jpeg").run(original, quality=20).reconstruction
    expected = compute_metrics(pil_to_tensor(original), pil_to_tensor(decoded), installed)
    for name in installed:
        assert record[RESULT_KEYS[name]] == pytest.approx(expected[name][0], rel=1e-6), name
    higher = result.averaged()
    assert higher["ssimulacra2"][1] > higher["ssimulacra2"][0]  # q60 looks better than q20


def test_measure_is_one_rule_for_small_images():
    """MS-SSIM needs 161 px a side: left out below it by every caller, no error; the other metrics still run."""
    from rp_diffusers.evaluation import measure

    image = Image.new("RGB", (128, 96), "gray")
    values = measure(image, image, ["psnr", "ms_ssim", "ssimulacra2"])
    assert values == {"psnr": float("inf"), "ssimulacra2": 100.0}
    assert measure(image, image, ["psnr"], result_keys=True) == {"psnr-rgb": float("inf")}


def test_bd_overlap_and_the_table_mark_narrow_overlaps():
    from rp_diffusers.evaluation import bd_overlap, format_bd_table

    anchor = {"results": {"bpp": [0.2, 0.4, 0.8, 1.6], "psnr-rgb": [28, 31, 34, 37], "vmaf": [50, 60, 70, 80]}}
    test = {"results": {"bpp": [0.2, 0.4, 0.8, 1.6], "psnr-rgb": [29, 32, 35, 38], "vmaf": [70, 80, 90, 95]}}
    overlap = bd_overlap(anchor, test)
    assert overlap == pytest.approx({"psnr-rgb": 8 / 10, "vmaf": 10 / 45})
    rows = {"test": bd_table(anchor, test)}
    text = format_bd_table(rows, "anchor", {"test": overlap})
    assert "(80%) " in text and "(22%)*" in text and "under 75 %" in text
    assert "*" not in format_bd_table(rows, "anchor", {"test": {"psnr-rgb": 0.8, "vmaf": 0.9}})


def test_cli_evaluate_bd_json_records_overlap(crops, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["evaluate", "--images", str(crops), "--codec", "jpeg,webp", "--qualities", "10,30,50,70"]
    assert main([*args, "--metrics", "psnr,ssimulacra2", "--output", str(out), "--workers", "0", "--no-progress"]) == 0
    bd = json.loads((out / "bd_rate.json").read_text())
    assert set(bd["overlap"]["webp"]) == {"psnr-rgb", "ssimulacra2"} and bd["min_overlap"] == 0.75
    assert all(0 <= v <= 1 for v in bd["overlap"]["webp"].values())
    assert "overlap of the two curves' quality ranges" in capsys.readouterr().out


def test_evaluate_keeps_a_metric_missing_on_the_first_image(tmp_path):
    """A small first image has no MS-SSIM; the mean over the other images is still reported."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(tmp_path / "a_small.png")
    Image.fromarray(rng.integers(0, 255, (200, 220, 3), dtype=np.uint8)).save(tmp_path / "b_large.png")
    result = evaluate(tmp_path, "jpeg", [50, 80], metrics=["psnr", "ms_ssim"], workers=0, progress=False)
    averaged = result.averaged()
    large = [r["ms-ssim-rgb"] for r in result.records if r["image"] == "b_large"]
    assert averaged["ms-ssim-rgb"] == pytest.approx(large)


def test_measure_accepts_any_pil_mode():
    from rp_diffusers.evaluation import measure

    gray = Image.new("L", (40, 30), 128)
    assert measure(gray, gray.convert("RGB"), ["psnr"]) == {"psnr": float("inf")}
    assert measure(gray.convert("RGBA"), gray.convert("P"), ["psnr"]) == {"psnr": float("inf")}


def test_bd_overlap_ignores_points_bd_table_drops():
    from rp_diffusers.evaluation import bd_overlap

    anchor = {"results": {"bpp": [0.2, 0.4, 0.8, 1.6], "vmaf": [50, None, 70, 80]}}
    test = {"results": {"bpp": [0.2, 0.4, 0.8, 1.6], "vmaf": [60, 70, 80, 90]}}
    assert bd_overlap(anchor, test) == pytest.approx({"vmaf": 20 / 40})


def test_evaluate_model_batches_give_the_one_by_one_results(tmp_path):
    from rp_diffusers.commands.evaluate import _preprocess_fn, batch_groups
    from rp_diffusers.pipelines import RPPreprocessPipeline
    from rp_diffusers.pipelines.testing import build_tiny_random_model

    pipe = RPPreprocessPipeline.from_pretrained(build_tiny_random_model(tmp_path / "m"))
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    sizes = [(24, 20), (24, 20), (17, 31), (24, 20)]  # mixed sizes: batched per size, returned in input order
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    every = range(len(images))

    def run(adapter, batch_size, todo=every):
        groups = batch_groups([im.size for im in images], batch_size)
        return _preprocess_fn(pipe, adapter, groups, images, todo)([images[i] for i in todo])

    assert batch_groups([im.size for im in images], 3) == [[0, 1, 3], [2]]
    one = [np.asarray(im) for im in run("rp_jpeg_lambda_0p5", 1)]
    batched = [np.asarray(im) for im in run("rp_jpeg_lambda_0p5", 3)]
    assert [im.shape[:2] for im in batched] == [(h, w) for w, h in sizes]
    for a, b in zip(one, batched):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float batching noise at most one level
    # a subset (a resumed run, a shard) runs its images' whole batches: bit for bit the full run's outputs
    subset = run("rp_jpeg_lambda_0p5", 3, todo=[3, 2])
    assert np.array_equal(np.asarray(subset[0]), batched[3]) and np.array_equal(np.asarray(subset[1]), batched[2])
    base = np.asarray(run(None, 2, todo=[0])[0])
    assert not np.array_equal(base, one[0])  # None = the base model, not the adapter
