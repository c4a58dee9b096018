"""Results in CompressAI's JSON schema: ``{"name", "description", "meta", "results": {"bpp": [...], ...}}``.

Per-quality averages sit in ``results`` (one entry per quality, sorted by quality) exactly as CompressAI's
``compressai.utils.plot`` and ``bench`` read them; ``per_image`` keeps every measured record, ``meta`` the
settings, versions and timing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

# Our metric names -> the keys CompressAI's results files use.
RESULT_KEYS = {
    "psnr": "psnr-rgb",
    "ms_ssim": "ms-ssim-rgb",
    "lpips": "lpips",
    "lpips_vgg": "lpips-vgg",
    "dists": "dists",
    "ssim": "ssim-rgb",
    "ssimulacra2": "ssimulacra2",
    "butteraugli": "butteraugli",
    "butteraugli_3norm": "butteraugli-3norm",
    "vmaf": "vmaf",
    "vmaf_neg": "vmaf-neg",
}
# Keys where lower is better (BD-rate needs to know which way the curve goes).
LOWER_IS_BETTER = {"lpips", "lpips-vgg", "dists", "fid", "kid", "mse", "butteraugli", "butteraugli-3norm"}
NOT_QUALITY_KEYS = {"bpp", "quality", "encoding_time", "decoding_time", "preprocess_time", "enhance_time"}


def higher_is_better(key: str) -> bool:
    """Whether a larger value of results key ``key`` means a better image."""
    return key not in LOWER_IS_BETTER


@dataclass
class EvaluationResult:
    """One R-D sweep: the per-image records and their per-quality means."""

    name: str
    description: str
    records: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    set_metrics: dict[float, dict[str, float]] = field(default_factory=dict)  # quality -> {"fid": ...}

    def qualities(self) -> list[float]:
        return sorted({record["quality"] for record in self.records})

    def averaged(self) -> dict[str, list[float]]:
        """``{"quality": [...], "bpp": [...], "psnr-rgb": [...], ...}``: means over images, sorted by quality."""
        # The union over records: a metric undefined for some images (MS-SSIM under 161 px) is averaged over the
        # others, whatever the order of the images.
        keys = [k for k in dict.fromkeys(k for r in self.records for k in r) if k not in ("image", "quality")]
        results: dict[str, list[float]] = {"quality": []}
        for quality in self.qualities():
            rows = [r for r in self.records if r["quality"] == quality]
            results["quality"].append(quality)
            for key in keys:
                values = [r[key] for r in rows if r.get(key) is not None]
                results.setdefault(key, []).append(_mean(values))
            for key, value in self.set_metrics.get(quality, {}).items():
                results.setdefault(key, []).append(value)
        return results

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "meta": self.meta,
            "results": self.averaged(),
            "per_image": self.records,
        }

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")
        return path


def comparison_report(
    rows: list[dict], *, name: str, description: str, meta: dict, group: tuple[str, ...] = ("variant",)
) -> dict:
    """ "Codec alone" vs "rp + codec" rows -> one CompressAI-style results dict: the schema of ``compress --json``
    and of training's ``validation/step-{k}/metrics.json``, read by :func:`load_results` like ``evaluate``'s files.

    Args:
        rows: measurements, each with the ``group`` keys (``"variant"``: ``"codec alone"`` or ``"rp + codec"``),
            ``"bpp"`` and metric values under CompressAI's keys (``psnr-rgb``, ...). Rows with an ``"image"`` are
            per image and are kept under ``per_image``.
        name, description, meta: the file's fields, as in :class:`EvaluationResult`.
        group: the keys one point of ``results`` stands for; its values are the means of that point's rows.

    Returns:
        ``{"name", "description", "meta", "results": {"variant": [...], "bpp": [...], "psnr-rgb": [...], ...},
        "per_image": [...]}``: ``results`` holds columns, one entry per point in the order the points first occur.

    Example:
        >>> rows = [{"variant": "codec alone", "bpp": 1.0, "psnr-rgb": 30.0}, {"variant": "rp + codec", "bpp": 0.9}]
        >>> comparison_report(rows, name="x", description="", meta={})["results"]
        {'variant': ['codec alone', 'rp + codec'], 'bpp': [1.0, 0.9], 'psnr-rgb': [30.0, nan]}
    """
    points: dict[tuple, list[dict]] = {}
    for row in rows:
        points.setdefault(tuple(row[key] for key in group), []).append(row)
    skip = {"image", "file", "quality", *group}  # a quality not in ``group`` varies within a point: per_image has it
    numeric = [
        k for k in dict.fromkeys(k for r in rows for k in r) if not any(isinstance(r.get(k), str) for r in rows)
    ]
    keys = [k for k in numeric if k not in skip]
    results: dict[str, list] = {key: [point[i] for point in points] for i, key in enumerate(group)}
    for key in keys:
        results[key] = [_mean([r[key] for r in members if r.get(key) is not None]) for members in points.values()]
    report = {"name": name, "description": description, "meta": meta, "results": results}
    if any("image" in row for row in rows):
        report["per_image"] = rows
    return report


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan")
    if len(finite) < len(values):
        # PSNR of a lossless image is inf: CompressAI averages anyway; keep inf visible rather than hiding it.
        return float("inf") if any(v == float("inf") for v in values) else float("nan")
    return sum(finite) / len(finite)


def load_results(path: str | os.PathLike) -> dict:
    """Read a results JSON (ours or CompressAI's) and check it has the schema's required fields."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no results file at {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or "results" not in data or "bpp" not in data.get("results", {}):
        raise ValueError(f"{path} is not a CompressAI-style results file (needs results.bpp)")
    data.setdefault("name", path.stem)
    return data


def quality_keys(results: dict) -> list[str]:
    """The metric keys of a results block (everything but rate, quality setting and timings)."""
    return [k for k in results if k not in NOT_QUALITY_KEYS]
