"""Validate a pipeline's adapters on held-out photographs and record the verdict in each ``rp_adapter.json``.

The record is what :meth:`~rp_diffusers.adapters.RPLoraLoaderMixin.adapter_for` reads: an adapter whose
validation BD-rate against the codec alone is not negative in every headline metric is never chosen without being
asked for, so ``--model default`` and the Space run the codec alone rather than an adapter that costs bits.

The headline metrics are perceptual metrics the adapter was NOT trained on (:func:`headline_metrics`); the
metric it was trained on is measured and recorded beside them, marked as such.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..utils.files import write_json
from ..utils.image import list_images
from .bd_table import MIN_OVERLAP, bd_overlap, bd_table
from .sweep import evaluate

# the weight-free perceptual metrics a verdict rests on (result keys), and what each training distance trains
HEADLINE_CANDIDATES = ("ssimulacra2", "butteraugli-3norm", "vmaf-neg")
TRAINED_AS = {
    "ssimulacra2": ("ssimulacra2",),
    "ms_ssim": ("ms-ssim-rgb",),
    "lpips": ("lpips",),
    "dists": ("dists",),
    "vif": ("vmaf-neg", "vmaf"),  # VIF is one of VMAF's features: VMAF is no longer an independent judge
}
DEFAULT_QUALITIES = {"jpeg": "10,20,30,45,60,80", "webp": "10,20,35,50,65,80"}


def trained_metrics(trained_on: str | None) -> list[str]:
    """Result keys a training distance (``"ssimulacra2+3*vif"`` and the like) optimises, directly or as a part."""
    if not trained_on:
        return []
    from ..losses import parse_perceptual

    try:
        names = [name for _, name in parse_perceptual(trained_on)]
    except ValueError:
        names = [trained_on]
    return [key for name in names for key in TRAINED_AS.get(name, (name,))]


def headline_metrics(trained_on: str | None) -> list[str]:
    """The headline result keys for an adapter trained with perceptual loss ``trained_on``: the weight-free
    perceptual metrics (SSIMULACRA2, Butteraugli 3-norm, VMAF-NEG) minus those it was trained on."""
    trained = set(trained_metrics(trained_on))
    return [m for m in HEADLINE_CANDIDATES if m not in trained]


def _metric_names(keys: list[str]) -> list[str]:
    """Result keys -> compute_metrics names (the sweep measures these)."""
    names = {"psnr-rgb": "psnr", "ms-ssim-rgb": "ms_ssim", "butteraugli-3norm": "butteraugli_3norm"}
    return [names.get(k, k.replace("-", "_")) for k in keys]


def _verdict(anchor: dict, curve: dict, label: str, codec: str, trained_on: str | None) -> dict:
    rates, overlap = bd_table(anchor, curve), bd_overlap(anchor, curve)
    headline = headline_metrics(trained_on)
    # a win must hold in all three weight-free perceptual metrics (trained on or not), over curves that overlap
    wins = all(
        isinstance(rates.get(m), float) and rates[m] < 0 and overlap.get(m, 0.0) >= MIN_OVERLAP
        for m in HEADLINE_CANDIDATES
    )
    return {
        "images": label,
        "codec": codec,
        "qualities": anchor["results"]["quality"],
        "bd_rate": rates,
        "overlap": overlap,
        "headline": headline,
        "trained_on": trained_on,
        "trained_metrics": trained_metrics(trained_on),
        "wins": wins,
    }


def validate_adapters(
    model: str | os.PathLike,
    images: str | os.PathLike | list,
    *,
    codecs: list[str] | None = None,
    qualities: dict[str, str] | None = None,
    images_label: str | None = None,
    write: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Sweep the base model and every adapter of the pipeline folder ``model`` against the codec alone.

    Args:
        model: a saved :class:`~rp_diffusers.RPPreprocessPipeline` folder (its adapters are in ``adapters/``).
        images: held-out photographs (a folder or a list of files): NOT the images numbers are reported on.
        codecs: the codecs to validate (default: every adapter's codec); the base model is validated on each,
            an adapter on its own codec.
        qualities: codec -> quality spec (default :data:`DEFAULT_QUALITIES`, else the codec's sweep).
        images_label: how the record names the images (default: the folder's name and the count).
        write: write each adapter's verdict into ``model/adapters/<name>/rp_adapter.json`` (``validation``) and
            the base model's into ``model/adapters/base_validation.json`` (codec -> verdict).

    Returns:
        ``{"base/<codec>" or adapter name: verdict}``, each verdict with ``bd_rate`` (every metric, percent,
        negative = fewer bits), ``overlap``, ``headline`` (the weight-free perceptual metrics it was not trained
        on), ``trained_on``, ``trained_metrics``, ``wins`` (SSIMULACRA2, Butteraugli 3-norm and VMAF-NEG all
        negative, each over curves overlapping by at least ``MIN_OVERLAP``), ``images``, ``codec``,
        ``qualities``.
    """
    from ..adapters import ADAPTERS_FOLDER, BASE_VALIDATION_NAME
    from ..default_model import load_preprocessor

    model = Path(model)
    pipe = load_preprocessor(model, "cpu")
    pipe.set_progress_bar_config(disable=True)
    paths = list_images(images if isinstance(images, list) else [images])
    if not paths:
        raise ValueError(f"no images to validate on in {images}")
    label = images_label or f"{Path(paths[0]).parent.name} ({len(paths)} photographs)"
    qualities = {**DEFAULT_QUALITIES, **(qualities or {})}
    adapters = pipe.available_adapters()
    codecs = list(codecs or sorted({r["codec"] for r in adapters.values() if r.get("codec")}))
    metrics = _metric_names(["psnr-rgb", "ms-ssim-rgb", *HEADLINE_CANDIDATES, "butteraugli", "vmaf"])
    records = {}
    for codec in codecs:
        common = dict(metrics=metrics, workers=workers, progress=progress)
        anchor = evaluate(paths, codec, qualities.get(codec), **common).to_dict()
        runs = [(None, "base")] + [(n, n) for n, r in sorted(adapters.items()) if r.get("codec") == codec]
        for name, label_name in runs:

            def preprocess(batch, name=name):
                return [pipe(image, adapter_name=name or []).images[0] for image in batch]

            curve = evaluate(
                paths, codec, qualities.get(codec), preprocess=preprocess, name=f"{label_name} + {codec}", **common
            ).to_dict()
            info = pipe.adapter_info(name) if name else {}
            lam_p = float(info.get("lambda_perceptual", 1) or 0)
            trained_on = info.get("perceptual_loss") if name and lam_p > 0 else None
            verdict = _verdict(anchor, curve, label, codec, trained_on)
            if name is None:
                records[f"base/{codec}"] = verdict
                pipe.set_base_validation(codec, verdict)
                continue
            records[name] = verdict
            if write:
                path = model / ADAPTERS_FOLDER / name / "rp_adapter.json"
                data = json.loads(path.read_text()) if path.is_file() else {}
                data["validation"] = verdict
                write_json(path, data, sort_keys=True)  # a killed run leaves the earlier record whole
    if write and pipe.base_validation():
        path = model / ADAPTERS_FOLDER / BASE_VALIDATION_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, pipe.base_validation(), sort_keys=True)
    return records
