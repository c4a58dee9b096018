"""Sweeps over folders or datasets -> results JSON (CompressAI schema), R-D plots and BD-rate tables; ``compare``
for one image (codec alone vs rp + codec at a matched rate)."""

from ..utils.image import list_images  # re-exported: the sweeps' inputs are listed here
from .bd_table import MIN_OVERLAP, bd_overlap, bd_table, format_bd_table
from .compare import Comparison, compare
from .plot import plot_rd
from .results import EvaluationResult, higher_is_better, load_results
from .sweep import EXAMPLES_DIR, evaluate, measure, parse_metrics, parse_qualities, usable_metrics

__all__ = [
    "Comparison",
    "EXAMPLES_DIR",
    "EvaluationResult",
    "MIN_OVERLAP",
    "bd_overlap",
    "bd_table",
    "compare",
    "evaluate",
    "format_bd_table",
    "higher_is_better",
    "list_images",
    "load_results",
    "measure",
    "parse_metrics",
    "parse_qualities",
    "plot_rd",
    "usable_metrics",
]
