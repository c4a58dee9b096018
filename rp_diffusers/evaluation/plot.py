"""R-D plots of results files: one panel per metric, bpp on the x axis, as CompressAI's plot tool draws them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .results import higher_is_better, quality_keys

TITLES = {
    "psnr-rgb": "PSNR (RGB) [dB]",
    "ms-ssim-rgb": "MS-SSIM (RGB)",
    "lpips": "LPIPS (Alex) - lower is better",
    "lpips-vgg": "LPIPS (VGG) - lower is better",
    "dists": "DISTS - lower is better",
    "ssim-rgb": "SSIM (RGB)",
    "ssimulacra2": "SSIMULACRA2",
    "butteraugli": "Butteraugli max - lower is better",
    "butteraugli-3norm": "Butteraugli 3-norm - lower is better",
    "vmaf": "VMAF",
    "vmaf-neg": "VMAF-NEG",
    "fid": "patch FID - lower is better",
    "kid": "patch KID - lower is better",
}


def plot_rd(results: Sequence[dict], output: str | os.PathLike, metrics: Sequence[str] | None = None) -> Path:
    """Draw R-D curves of several results dicts (CompressAI schema) into one PNG/SVG/PDF file.

    Args:
        results: loaded results files (``{"name", "results": {"bpp": [...], "psnr-rgb": [...]}}``).
        output: the figure's path; the suffix picks the format.
        metrics: results keys to plot (default: every quality key the first file has).

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("nothing to plot")
    metrics = list(metrics or quality_keys(results[0]["results"]))
    metrics = [m for m in metrics if any(m in r["results"] for r in results)]
    if not metrics:
        raise ValueError("the results files share no metric to plot")
    columns = min(3, len(metrics))
    rows = (len(metrics) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for entry in results:
            data = entry["results"]
            if metric not in data:
                continue
            points = sorted(zip(data["bpp"], data[metric]))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=entry["name"])
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(TITLES.get(metric, metric))
        ax.grid(True, alpha=0.3)
        if not higher_is_better(metric):
            ax.set_title("lower is better", fontsize=8)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output
