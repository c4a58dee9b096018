"""Sweeps over folders or datasets -> results JSON (CompressAI schema), R-D plots and BD-rate tables."""

from .bd_table import bd_table, format_bd_table
from .plot import plot_rd
from .results import EvaluationResult, higher_is_better, load_results
from .sweep import DEFAULT_METRICS, EXAMPLES_DIR, evaluate, list_images, measure, parse_qualities

__all__ = [
    "DEFAULT_METRICS",
    "EXAMPLES_DIR",
    "EvaluationResult",
    "bd_table",
    "evaluate",
    "format_bd_table",
    "higher_is_better",
    "list_images",
    "load_results",
    "measure",
    "parse_qualities",
    "plot_rd",
]
