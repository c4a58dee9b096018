"""House style in CI: ruff lint and format (119 columns, settings in pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed (pip install -e '.[dev]')")
@pytest.mark.parametrize("command", [["check", "--output-format", "concise"], ["format", "--check"]])
def test_style_ruff_is_clean(command):
    result = subprocess.run([RUFF, *command, "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
