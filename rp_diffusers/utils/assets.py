"""Where the files the package ships live (models, examples, templates): one place for the path."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
# The codec surrogates' fitted files (learned proxies, the JPEG rate calibration).
SURROGATE_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "surrogates" / "weights"
