"""``benchmarks/proxy_agreement.py``: a pre-processor trained through a surrogate, its R-D measured by the surrogate
and by the real codec. With DiffJPEG (bit-exact with libjpeg, sizes within 0.25 %) the two measurements must agree:
that checks the plumbing (bits per pixel on the original's pixels, the same qualities, the same metrics)."""

import json
import math
from pathlib import Path

import pytest
import torch

from rp_diffusers.evaluation import EXAMPLES_DIR
from rp_diffusers.utils.testing import load_script

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    module = load_script(REPO / "benchmarks" / "proxy_agreement.py", "proxy_agreement")
    return module


def test_prefilter_starts_at_the_identity():
    bench = load_benchmark()
    x = torch.rand(1, 3, 20, 24)
    assert torch.equal(bench.PreFilter(8)(x), x)


def test_merge_compares_runs_with_other_proxy_weights(tmp_path):
    """--merge + --compare_with: per-codec runs become one report, and the learned-proxy rows are set against an
    earlier run's on the (codec, lambda) pairs both have (DiffJPEG and loop rows left out)."""
    bench = load_benchmark()

    def row(codec, lam, proxy, real, surrogate="CodecProxySurrogate", forward="surrogate"):
        return {"codec": codec, "lambda": lam, "training_forward": forward, "surrogate": surrogate,
                "proxy_bd_rate": {"psnr": proxy, "ssimulacra2": proxy},
                "real_bd_rate": {"psnr": real, "ssimulacra2": real}}  # fmt: skip

    before = [row("webp", 1.0, -13.0, 4.0), row("hevc", 1.0, -15.0, 6.0), row("webp", 1.0, 0.0, 1.0, forward="real"),
              row("jpeg", 1.0, 3.5, 3.5, surrogate="DiffJPEG")]  # fmt: skip
    runs = [[row("webp", 1.0, -2.0, -1.0)], [row("hevc", 1.0, -7.0, 3.0), row("vvc", 1.0, 1.0, 1.0)]]
    files = []
    for index, rows in enumerate(runs):
        files.append(tmp_path / f"run{index}.json")
        files[-1].write_text(json.dumps({"settings": {"codecs": str(index)}, "validation_images": ["a.png"],
                                         "machine": {}, "rows": rows}))  # fmt: skip
    (tmp_path / "before.json").write_text(json.dumps({"rows": before}))
    args = ["--merge", *map(str, files), "--compare_with", str(tmp_path / "before.json"),
            "--output", str(tmp_path / "merged.json")]  # fmt: skip
    report = bench.main(bench.parse_args(args))
    assert [r["codec"] for r in report["rows"]] == ["webp", "hevc", "vvc"]
    comparison = report["proxy_comparison"]
    assert comparison["pairs"] == [["hevc", 1.0], ["webp", 1.0]]  # vvc has no earlier row
    assert comparison["psnr"]["before"] == {"same_sign": 0, "mean_abs_gap": 19.0, "mean_real": 5.0,
                                            "real_better_than_codec_alone": 0}  # fmt: skip
    assert comparison["psnr"]["now"]["same_sign"] == 1 and comparison["psnr"]["now"]["mean_abs_gap"] == 5.5
    assert json.loads((tmp_path / "merged.json").read_text())["summary"]["psnr"]["sign_agreement"] == pytest.approx(
        2 / 3
    )


@pytest.mark.usefixtures("one_torch_thread")
def test_agreement_benchmark_with_diffjpeg_measures_the_same_rd_as_real_jpeg(tmp_path):
    bench = load_benchmark()
    output = tmp_path / "agreement.json"
    args = bench.parse_args(
        [
            "--codecs", "jpeg", "--lambdas", "3", "--steps", "30", "--batch_size", "2", "--crop", "64",
            "--learning_rate", "3e-3", "--train_data", str(EXAMPLES_DIR), "--train_images", "2",
            "--validation_data", str(EXAMPLES_DIR), "--workers", "0", "--threads", "1",
            "--output", str(output), "--plot", str(tmp_path / "agreement.png"),
        ]
    )  # fmt: skip
    report = bench.main(args)
    (row,) = report["rows"]
    assert row["surrogate"] == "DiffJPEG" and row["qualities"] == [5, 10, 20, 35, 55, 75]
    assert row["loss"]["last_20"] < row["loss"]["first_20"]  # it trained
    for metric in ("psnr", "ssimulacra2"):
        proxy, real = row["proxy_bd_rate"][metric], row["real_bd_rate"][metric]
        assert math.isfinite(proxy) and math.isfinite(real)
        assert abs(proxy - real) < 0.5, (metric, proxy, real)
    assert abs(row["proxy_mean_bpp_change"] - row["real_mean_bpp_change"]) < 0.01
    assert json.loads(output.read_text())["summary"]["psnr"]["sign_agreement"] in (0.0, 1.0)
    assert (tmp_path / "agreement.png").stat().st_size > 0


def test_forward_comparison_counts_pairs_trained_both_ways():
    bench = load_benchmark()

    def row(codec, lam, forward, psnr, ssim2):
        return {"codec": codec, "lambda": lam, "training_forward": forward, "surrogate": "CodecProxySurrogate",
                "proxy_bd_rate": {"psnr": -9.0, "ssimulacra2": -9.0},
                "real_bd_rate": {"psnr": psnr, "ssimulacra2": ssim2}}  # fmt: skip

    rows = [
        row("webp", 1.0, "surrogate", 4.0, 3.0),
        row("webp", 1.0, "real", 0.5, -1.0),
        row("hevc", 1.0, "surrogate", 6.0, -2.0),
        row("hevc", 1.0, "real", 7.0, -3.0),
        row("vvc", 1.0, "surrogate", 9.0, 9.0),
    ]  # fmt: skip  (vvc trained one way only: not a pair)
    comparison = bench.forward_comparison(rows)
    assert comparison["psnr"]["pairs"] == 2 and comparison["psnr"]["real_better"] == 1
    assert comparison["ssimulacra2"]["real_better"] == 2
    assert comparison["psnr"]["mean_real"] == pytest.approx(3.75)
    assert comparison["psnr"]["worse_than_codec_alone"] == {"surrogate": 2, "real": 2}
    # agreement is judged on the rows trained through the surrogate alone
    summary = bench.agreement_summary([r for r in rows if r["training_forward"] == "surrogate"])
    assert summary["psnr"]["sign_agreement"] == 0.0
    assert bench.forward_comparison(rows[-1:]) == {}


@pytest.mark.usefixtures("one_torch_thread")
def test_agreement_benchmark_trains_with_the_real_codec_in_the_loop(tmp_path):
    bench = load_benchmark()
    args = bench.parse_args(
        [
            "--codecs", "webp", "--lambdas", "1", "--steps", "4", "--batch_size", "2", "--crop", "64",
            "--train_data", str(EXAMPLES_DIR), "--train_images", "2", "--validation_data", str(EXAMPLES_DIR),
            "--workers", "0", "--threads", "1", "--training_forward", "surrogate,real",
            "--output", str(tmp_path / "agreement.json"), "--plot", str(tmp_path / "agreement.png"),
        ]
    )  # fmt: skip
    report = bench.main(args)
    assert [r["training_forward"] for r in report["rows"]] == ["surrogate", "real"]
    assert report["forward_comparison"]["psnr"]["pairs"] == 1
    assert all(math.isfinite(r["real_bd_rate"]["psnr"]) for r in report["rows"])
    assert (tmp_path / "agreement.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="training_forward"):
        bench.main(bench.parse_args(["--training_forward", "exact", "--train_data", str(EXAMPLES_DIR),
                                     "--validation_data", str(EXAMPLES_DIR)]))  # fmt: skip
