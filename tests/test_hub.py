"""Model-card rendering and Hub staging, offline."""

from pathlib import Path

import yaml

from rp_diffusers.codecs import card_example
from rp_diffusers.utils.hub import eval_results, render_model_card

ADAPTERS = [{"name": "rp_jpeg_lambda_0.5", "codec": "jpeg", "lam": 0.5, "rank": 4}]
BD = {"rp+jpeg": {"ms-ssim-rgb": -4.25, "psnr-rgb": 2.5, "dists": float("nan")}}


def _front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def test_render_model_card_model_index_has_finite_bd_rates():
    card = render_model_card("org/rp-test", adapters=ADAPTERS, bd_rows=BD, rd_plot="rd.png")
    meta = _front_matter(str(card))
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"bd-rate-ms-ssim-rgb": -4.25, "bd-rate-psnr-rgb": 2.5}
    assert meta["library_name"] == "diffusers" and "rp-diffusers" in meta["tags"]


def test_render_model_card_body_has_usage_table_and_plot():
    text = str(
        render_model_card("org/rp-test", adapters=ADAPTERS, bd_rows=BD, rd_plot="rd.png", **card_example("jpeg"))
    )
    assert 'RPPreprocessPipeline.from_pretrained("org/rp-test"' in text
    assert 'adapter_name="rp_jpeg_lambda_0.5"' in text
    assert "| `rp_jpeg_lambda_0.5` | jpeg | 0.5 | 4 |" in text
    assert "| rp+jpeg | nan | -4.25 | 2.50 |" in text
    assert "![R-D curves](rd.png)" in text
    assert "quality=75" in text and ".jpg" in text  # the codec's own default quality and extension


def test_eval_results_skips_nan():
    assert len(eval_results(BD)) == 2


def test_repository_model_card_is_the_packaged_template():
    """The top-level ``model_card.md`` (what a reader of the repository sees) is the template the package renders
    (the packaged path is a link to it; a copy that drifted would fail here)."""
    from rp_diffusers.utils.hub import PACKAGED_TEMPLATE

    top_level = Path(__file__).resolve().parents[1] / "model_card.md"
    assert top_level.read_bytes() == PACKAGED_TEMPLATE.read_bytes(), "copy one onto the other: they must not drift"
