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
