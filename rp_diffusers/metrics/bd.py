"""Bjontegaard deltas (BD-rate, BD-quality) with Akima, PCHIP or cubic interpolation, as the `bjontegaard` package.

The computation is that of `bjontegaard` 1.3 (FAU), which we test against:
- BD-rate interpolates ``log10(rate)`` as a function of quality; BD-quality interpolates quality as a function
  of ``log10(rate)``. Both integrate anchor and test over the overlap of their abscissa ranges and average
  the difference; BD-rate is reported as ``(10**mean_difference - 1) * 100`` percent.
- ``"akima"``: ``scipy.interpolate.Akima1DInterpolator`` (with two points, a straight line); ``"pchip"``:
  ``scipy.interpolate.PchipInterpolator``; ``"cubic"``: a least-squares cubic ``numpy.polyfit`` through all
  points (the original VCEG-M33 method; exact interpolation with four points).
- Curves that do not overlap give ``nan`` with a warning; an overlap below ``min_overlap`` (75 % of the union
  range) warns.

Differences from `bjontegaard` (documented, deliberate):
- Points may come in any order (they are sorted by rate) and anchor and test may have different numbers of
  points. Exact duplicate points are merged; two different qualities at one rate raise ``ValueError``.
- BD-rate needs quality strictly monotone in rate; otherwise ``ValueError``, or pass ``drop_dominated=True`` to
  keep only the points that improve on every lower-rate point. `bjontegaard` fails deep inside scipy instead.
- ``"cubic"`` needs at least 4 points per curve (a cubic fit through fewer is underdetermined).
- Lower-is-better metrics (LPIPS, DISTS, FID): pass ``higher_is_better=False``. The quality is negated before
  anything else, so BD-rate keeps its meaning (negative = the test needs fewer bits for the same quality; the
  value equals `bjontegaard`'s on the raw metric) and BD-quality is reported as an improvement: positive means
  the test is better, for every metric, e.g. BD-LPIPS = +0.02 means 0.02 lower LPIPS on average.
  (`bjontegaard` itself rejects a quality that falls with rate in BD-rate, by an assertion; called with the
  negated metric it gives exactly our numbers.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.interpolate

METHODS = ("akima", "pchip", "cubic")


def _curve(rate, quality, higher_is_better: bool, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one R-D curve; return (rate, signed quality) sorted by rate, exact duplicates merged."""
    rate = np.asarray(rate, dtype=np.float64).ravel()
    quality = np.asarray(quality, dtype=np.float64).ravel()
    if rate.shape != quality.shape:
        raise ValueError(f"{label}: {rate.size} rates but {quality.size} quality values; give one of each per point")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(quality))):
        raise ValueError(f"{label}: rates and qualities must be finite (inf PSNR: drop lossless points)")
    if np.any(rate <= 0):
        raise ValueError(f"{label}: rates must be positive (bits per pixel), got {rate.tolist()}")
    signed = quality if higher_is_better else -quality
    order = np.lexsort((signed, rate))
    rate, signed = rate[order], signed[order]
    keep = np.ones(rate.size, dtype=bool)
    keep[1:] = (rate[1:] != rate[:-1]) | (signed[1:] != signed[:-1])
    rate, signed = rate[keep], signed[keep]
    if np.any(np.diff(rate) == 0):
        raise ValueError(f"{label}: two different quality values at the same rate; average or drop one of them")
    if rate.size < 2:
        raise ValueError(f"{label}: need at least 2 distinct points, got {rate.size}")
    return rate, signed


def _drop_dominated(rate: np.ndarray, signed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.zeros(rate.size, dtype=bool)
    best = -np.inf
    for index, value in enumerate(signed):
        if value > best:
            keep[index], best = True, value
    return rate[keep], signed[keep]


def _interpolator(x: np.ndarray, y: np.ndarray, method: str):
    if method == "akima":
        if x.size > 2:
            return scipy.interpolate.Akima1DInterpolator(x, y)
        return scipy.interpolate.make_interp_spline(x, y, k=1)
    if method == "pchip":
        return scipy.interpolate.PchipInterpolator(x, y)
    coefficients = np.polyint(np.polyfit(x, y, 3))
    return _PolynomialIntegral(coefficients)


class _PolynomialIntegral:
    def __init__(self, antiderivative: np.ndarray):
        self.antiderivative = antiderivative

    def integrate(self, low: float, high: float) -> float:
        return float(np.polyval(self.antiderivative, high) - np.polyval(self.antiderivative, low))


def curve_overlap(anchor_values: Sequence[float], test_values: Sequence[float]) -> float:
    """Overlap of two curves' ranges as a fraction of their union, in [0, 1]: what BD-rate averages over
    (pass the qualities) and BD-quality (pass ``log10`` of the rates). Under 0.75 the delta is a warning sign.

    Example:
        >>> curve_overlap([30, 34, 38], [32, 36, 40])
        0.6
    """
    anchor = np.asarray([v for v in anchor_values if np.isfinite(v)], dtype=np.float64)
    test = np.asarray([v for v in test_values if np.isfinite(v)], dtype=np.float64)
    if anchor.size == 0 or test.size == 0:
        return 0.0
    union = max(anchor.max(), test.max()) - min(anchor.min(), test.min())
    if union == 0:
        return 1.0
    return float(max(min(anchor.max(), test.max()) - max(anchor.min(), test.min()), 0.0) / union)


def _mean_difference(x_anchor, y_anchor, x_test, y_test, method: str, min_overlap: float) -> float:
    """Average of ``f_test - f_anchor`` over the overlap of the abscissa ranges (x increasing)."""
    low, high = max(x_anchor[0], x_test[0]), min(x_anchor[-1], x_test[-1])
    union = max(x_anchor[-1], x_test[-1]) - min(x_anchor[0], x_test[0])
    overlap = max(high - low, 0.0) / union
    if overlap == 0:
        warnings.warn("Curves do not overlap: the Bjontegaard delta is undefined (nan).", stacklevel=3)
        return float("nan")
    if overlap < min_overlap:
        warnings.warn(
            f"Insufficient curve overlap: {overlap * 100:.2f} % (minimum {min_overlap * 100:.2f} %); "
            "the delta extrapolates little but averages over a narrow range. Pass min_overlap=0 to silence this.",
            stacklevel=3,
        )
    anchor = _interpolator(x_anchor, y_anchor, method).integrate(low, high)
    test = _interpolator(x_test, y_test, method).integrate(low, high)
    return float((test - anchor) / (high - low))


def _check_method(method: str, *curves: np.ndarray) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown interpolation method {method!r}; choose one of {METHODS}")
    if method == "cubic" and min(curve.size for curve in curves) < 4:
        raise ValueError("method='cubic' fits a cubic polynomial and needs at least 4 points per curve")


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_quality: Sequence[float],
    test_rate: Sequence[float],
    test_quality: Sequence[float],
    *,
    method: str = "akima",
    higher_is_better: bool = True,
    drop_dominated: bool = False,
    min_overlap: float = 0.75,
) -> float:
    """Bjontegaard-delta rate of ``test`` against ``anchor``, in percent.

    Args:
        anchor_rate, test_rate (sequence of `float`): rates (bpp, or any positive unit) of each point.
        anchor_quality, test_quality (sequence of `float`): the metric at each point (PSNR, MS-SSIM, LPIPS...).
        method (`str`): ``"akima"`` (default), ``"pchip"`` or ``"cubic"``.
        higher_is_better (`bool`): ``False`` for LPIPS, DISTS, FID, KID.
        drop_dominated (`bool`): drop points whose quality is no better than a lower-rate point, instead of
            refusing non-monotone curves.
        min_overlap (`float`): warn when the quality ranges overlap by less than this fraction of their union.

    Returns:
        `float`: average rate difference in percent at equal quality; negative means the test saves bits
        (-10.0 = 10 % fewer bits). ``nan`` (with a warning) if the quality ranges do not overlap.

    Example:
        >>> round(bd_rate([0.1, 0.2, 0.4, 0.8], [28, 31, 34, 37], [0.09, 0.18, 0.36, 0.72], [28, 31, 34, 37]), 6)
        -10.0
    """
    anchor = _curve(anchor_rate, anchor_quality, higher_is_better, "anchor")
    test = _curve(test_rate, test_quality, higher_is_better, "test")
    if drop_dominated:
        anchor, test = _drop_dominated(*anchor), _drop_dominated(*test)
    for label, (_, signed) in (("anchor", anchor), ("test", test)):
        if np.any(np.diff(signed) <= 0):
            direction = "increase" if higher_is_better else "decrease"
            raise ValueError(
                f"bd_rate: the {label} quality does not {direction} strictly with rate (sorted by rate: "
                f"{(signed if higher_is_better else -signed).tolist()}). Check higher_is_better, drop the "
                "dominated points, or pass drop_dominated=True."
            )
    _check_method(method, anchor[0], test[0])
    delta = _mean_difference(anchor[1], np.log10(anchor[0]), test[1], np.log10(test[0]), method, min_overlap)
    return (10.0**delta - 1.0) * 100.0


def bd_quality(
    anchor_rate: Sequence[float],
    anchor_quality: Sequence[float],
    test_rate: Sequence[float],
    test_quality: Sequence[float],
    *,
    method: str = "akima",
    higher_is_better: bool = True,
    min_overlap: float = 0.75,
) -> float:
    """Bjontegaard-delta quality (BD-PSNR for PSNR) of ``test`` against ``anchor``, in the metric's units.

    Args:
        anchor_rate, test_rate (sequence of `float`): positive rates of each point.
        anchor_quality, test_quality (sequence of `float`): the metric at each point (need not be monotone).
        method (`str`): ``"akima"`` (default), ``"pchip"`` or ``"cubic"``.
        higher_is_better (`bool`): ``False`` for LPIPS, DISTS, FID, KID (the result is then anchor minus test).
        min_overlap (`float`): warn when the log-rate ranges overlap by less than this fraction of their union.

    Returns:
        `float`: average quality improvement at equal rate, over the overlap of the log-rate ranges; positive
        means the test is better (for PSNR: +0.5 = 0.5 dB higher; for LPIPS: +0.02 = 0.02 lower).

    Example:
        >>> round(bd_quality([0.1, 0.2, 0.4, 0.8], [28, 31, 34, 37], [0.1, 0.2, 0.4, 0.8], [28.5, 31.5, 34.5, 37.5]), 6)
        0.5
    """
    anchor = _curve(anchor_rate, anchor_quality, higher_is_better, "anchor")
    test = _curve(test_rate, test_quality, higher_is_better, "test")
    _check_method(method, anchor[0], test[0])
    return _mean_difference(np.log10(anchor[0]), anchor[1], np.log10(test[0]), test[1], method, min_overlap)
