"""Test settings: offline by construction, real photographs from ../shared/data when present."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")
# Metric weights converted into the user's cache must not make the "weights missing" tests load them: a fresh,
# empty cache per test session.
os.environ["RP_DIFFUSERS_METRIC_CACHE"] = _METRIC_CACHE = tempfile.mkdtemp(prefix="rp-metric-cache-")
atexit.register(shutil.rmtree, _METRIC_CACHE, True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(os.environ.get("RP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _data_dir(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir() or not any(path.iterdir()):
        pytest.skip(f"real photographs not found at {path} (set RP_SHARED_DATA to the folder holding {name}/)")
    return path


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    return _data_dir("kodak")


@pytest.fixture(scope="session")
def train_dir() -> Path:
    return _data_dir("train-sunhays80")


@pytest.fixture(scope="session")
def val_dir() -> Path:
    return _data_dir("val-set14")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module, restored afterwards.

    Tiny models run fastest on one thread; on a shared 2-core machine two threads spin against each other (10-100x
    the CPU time). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
