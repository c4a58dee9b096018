"""Validation of the training scripts: the real codec on "codec alone" vs "rp + codec", tables and the model card."""

from __future__ import annotations

import logging
import os

import torch
from PIL import Image

logger = logging.getLogger(__name__)


VALIDATION_METRICS = (
    "psnr",
    "ms_ssim",
    "ssimulacra2",
    "butteraugli",
    "butteraugli_3norm",
    "vmaf",
    "vmaf_neg",
    "lpips",
    "dists",
)


def load_validation_metric_models(device="cpu") -> dict[str, torch.nn.Module]:
    """LPIPS (Alex) and DISTS with their pretrained weights, leaving out (with a warning) those not available."""
    from ..metrics import DISTS, LPIPS, MetricWeightsUnavailable

    models = {}
    for name, build in (("lpips", lambda: LPIPS("alex")), ("dists", DISTS)):
        try:
            models[name] = build().to(device)
        except MetricWeightsUnavailable as error:
            logger.warning("validation without %s: %s", name, error)
    return models


@torch.no_grad()
def codec_validation(
    originals: list[Image.Image],
    preprocessed: list[Image.Image],
    codec,
    qualities: list[int],
    metric_models: dict[str, torch.nn.Module] | None = None,
) -> list[dict]:
    """Encode with the REAL codec "codec alone" (originals) and "rp + codec" (pre-processed); measure the decodes.

    Args:
        originals: the validation images (RGB PIL), the reference of every metric.
        preprocessed: the model's outputs, one per original, same sizes.
        codec: a ``rp_diffusers.codecs.Codec`` (``get_codec(name)``).
        qualities: integer codec qualities.
        metric_models: ready LPIPS / DISTS networks by name (see :func:`load_validation_metric_models`); metrics
            without a network are left out. PSNR, MS-SSIM and the installed weight-free perceptual metrics
            (SSIMULACRA2, Butteraugli, VMAF, VMAF-NEG) are always measured; MS-SSIM is averaged over the images
            of 161 pixels or more per side.

    Returns:
        ``(rows, decoded)``: one row per (quality, variant), ``{"quality", "variant", "bpp", "psnr-rgb",
        "ms-ssim-rgb", "ssimulacra2", ..., "lpips", "dists"}`` (the results schema of ``evaluate`` and
        ``compress --json``, CompressAI's keys; means over images; bpp from the real bitstream over the original's
        pixels), and the decoded images by ``(quality, variant)``.
    """
    from ..evaluation.compare import encode_pair, measure_pair
    from ..evaluation.results import RESULT_KEYS
    from ..metrics import installed_perceptual_metrics

    if len(originals) != len(preprocessed):
        raise ValueError(f"{len(originals)} originals but {len(preprocessed)} pre-processed images")
    metric_models = metric_models or {}
    names = ["psnr", "ms_ssim", *installed_perceptual_metrics(), *metric_models]
    keep = ("bpp", *(RESULT_KEYS.get(m, m) for m in VALIDATION_METRICS))
    rows, decoded = [], {}
    for quality in qualities:
        sums: dict[str, dict[str, list[float]]] = {}
        for original, image in zip(originals, preprocessed):
            pair = encode_pair(codec, original, image, quality=int(quality), match="quality")
            scores = measure_pair(original, pair, names, models=metric_models)
            for (variant, values), result in zip(scores.items(), pair):
                decoded.setdefault((int(quality), variant), []).append(result.reconstruction)
                for name, value in {"bpp": float(result.bpp), **values}.items():
                    sums.setdefault(variant, {}).setdefault(name, []).append(value)
        for variant, columns in sums.items():
            means = {name: sum(v) / len(v) for name, v in columns.items()}
            rows.append({"quality": int(quality), "variant": variant, **{k: means[k] for k in keep if k in means}})
    return rows, decoded


def validation_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of numbers -> a markdown table (floats with 4 significant digits); columns default to the first row's."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_training_card(
    repo_id: str,
    *,
    adapters: list[dict],
    validation_rows: list[dict],
    base_model: str | None = None,
    training: str = "",
    template: str | os.PathLike | None = None,
):
    """Render ``model_card.md`` for a training run's output with its validation table -> ``ModelCard``.

    Example:
        >>> card = render_training_card("me/rp", adapters=[{"name": "rp_jpeg_lambda_1", "codec": "jpeg",
        ...     "lam": 1.0, "rank": 4}], validation_rows=[{"quality": 30, "bpp codec": 0.5}])  # doctest: +SKIP
    """
    from ..codecs import card_example
    from ..utils.hub import render_model_card

    return render_model_card(
        repo_id,
        adapters=adapters,
        validation_table=validation_table(validation_rows),
        base_model=base_model,
        summary="Rate-perception LoRA adapters trained with `training/finetune_rp.py`.",
        training=training,
        limits="Validation numbers come from the training run's validation images, not from a test set.",
        results_intro="See the validation table below; run `rp-diffusers evaluate` for full R-D curves.",
        template=template,
        **card_example(adapters[0]["codec"] if adapters else "jpeg"),
    )
