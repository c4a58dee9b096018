"""BD-rate tables between two results files, for every metric they share."""

from __future__ import annotations

import math

from .results import higher_is_better, quality_keys


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


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) and v > -math.inf for v in values) and values[0] > 0


def format_bd_table(rows: dict[str, dict[str, float]], anchor_name: str) -> str:
    """``{test_name: {metric: bd}}`` -> a plain-text table with one row per test and one column per metric."""
    metrics = sorted({m for row in rows.values() for m in row})
    width = max([len(n) for n in rows] + [8])
    header = f"BD-rate [%] vs {anchor_name}".ljust(width + 2) + "".join(f"{m:>14}" for m in metrics)
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = "".join(f"{row.get(m, float('nan')):>14.2f}" for m in metrics)
        lines.append(name.ljust(width + 2) + cells)
    return "\n".join(lines)
