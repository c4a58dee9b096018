"""Every ``>>>`` example in the package runs (those that need the Hub, a GPU or a trained model say ``+SKIP``)."""

import doctest
import importlib
import pkgutil

import pytest

import rp_diffusers

MODULES = sorted(info.name for info in pkgutil.walk_packages(rp_diffusers.__path__, prefix="rp_diffusers."))


def test_the_package_has_examples_to_run():
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name)))
    assert examples >= 100  # 104 when this test was written: a drop means examples were deleted, not fixed


@pytest.mark.parametrize("name", MODULES + ["rp_diffusers"])
def test_module_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run with -s)"


def test_space_examples_run(monkeypatch):
    """The Space's own module (beside ``app.py``, not in the package) keeps its ``>>>`` example true."""
    from pathlib import Path

    monkeypatch.delenv("RP_SPACE_MODEL", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "space"))
    module = importlib.import_module("space_support")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted >= 7 and result.failed == 0, f"{result.failed} of {result.attempted} failed (run with -s)"
