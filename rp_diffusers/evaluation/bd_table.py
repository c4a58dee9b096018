"""BD-rate tables between two results files, for every metric they share."""

from __future__ import annotations

import math

from .results import higher_is_better, quality_keys

MIN_OVERLAP = 0.75  # as rp_diffusers.metrics.bd_rate's min_overlap: below it the delta averages a narrow range


def bd_table(anchor: dict, test: dict, method: str = "akima") -> dict[str, float]:
    """BD-rate (percent, negative = the test needs fewer bits) of ``test`` against ``anchor`` per shared metric.

    Metrics with fewer than 4 finite points on either curve, or curves that do not overlap, give ``nan``.

    Example:
        >>> bd_table(load_results("jpeg.json"), load_results("webp.json"))  # doctest: +SKIP
        {'psnr-rgb': -28.1, 'ms-ssim-rgb': -31.0}
    """
    from ..metrics import bd_rate

    a, t = anchor["results"], test["results"]
    table = {}
    for key in quality_keys(a):
        if key not in t:
            continue
        a_pts = [(r, q) for r, q in zip(a["bpp"], a[key]) if _finite(r, q)]
        t_pts = [(r, q) for r, q in zip(t["bpp"], t[key]) if _finite(r, q)]
        if len(a_pts) < 4 or len(t_pts) < 4:
            table[key] = float("nan")
            continue
        try:
            table[key] = float(
                bd_rate(
                    [p[0] for p in a_pts],
                    [p[1] for p in a_pts],
                    [p[0] for p in t_pts],
                    [p[1] for p in t_pts],
                    method=method,
                    higher_is_better=higher_is_better(key),
                )
            )
        except ValueError:
            table[key] = float("nan")  # the curves do not overlap in quality
    return table


def bd_overlap(anchor: dict, test: dict) -> dict[str, float]:
    """Per shared metric, the overlap of the two curves' quality ranges (fraction of their union, in [0, 1]):
    the range BD-rate averages over. :data:`MIN_OVERLAP` is the package's limit for a trustworthy value.

    Example:
        >>> bd_overlap(load_results("jpeg.json"), load_results("webp.json"))  # doctest: +SKIP
        {'psnr-rgb': 0.81, 'ssimulacra2': 0.64}
    """
    from ..metrics.bd import curve_overlap

    a, t = anchor["results"], test["results"]

    def qualities(results: dict, key: str) -> list[float]:  # the same points bd_table uses
        return [q for r, q in zip(results["bpp"], results[key]) if _finite(r, q)]

    return {key: curve_overlap(qualities(a, key), qualities(t, key)) for key in quality_keys(a) if key in t}


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) and v > -math.inf for v in values) and values[0] > 0


def format_bd_table(
    rows: dict[str, dict[str, float]],
    anchor_name: str,
    overlaps: dict[str, dict[str, float]] | None = None,
) -> str:
    """``{test_name: {metric: bd}}`` -> a plain-text table with one row per test and one column per metric.

    With ``overlaps`` (``{test_name: {metric: fraction}}``, from :func:`bd_overlap`) each cell also shows the
    curves' overlap in percent, and a ``*`` where it is under :data:`MIN_OVERLAP`; a legend line says so.
    """
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    width = max([len(n) for n in rows] + [8])
    column = 20 if overlaps else 14
    header = f"BD-rate [%] vs {anchor_name}".ljust(width + 2) + "".join(f"{m:>{column}}" for m in metrics)
    lines = [header, "-" * len(header)]
    flagged = False
    for name, row in rows.items():
        cells = []
        for m in metrics:
            cell = f"{row.get(m, float('nan')):.2f}"
            if overlaps and m in overlaps.get(name, {}):
                share = overlaps[name][m]
                flagged |= share < MIN_OVERLAP
                cell += f" ({100 * share:.0f}%){'*' if share < MIN_OVERLAP else ' '}"
            cells.append(f"{cell:>{column}}")
        lines.append(name.ljust(width + 2) + "".join(cells))
    if overlaps:
        lines.append(
            "(%) overlap of the two curves' quality ranges"
            + (f"; * under {100 * MIN_OVERLAP:.0f} %: the BD-rate averages over a narrow range" if flagged else "")
        )
    return "\n".join(lines)
