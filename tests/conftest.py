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


@pytest.fixture
def tiny_edm_teacher(tmp_path) -> Path:
    """A tiny random EDM-preconditioned pixel denoiser folder (``unet/``, ``scheduler/``), as the decode model's."""
    import torch
    from diffusers import EDMEulerScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=None, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, add_attention=False,
        norm_num_groups=4,
    )  # fmt: skip
    folder = tmp_path / "teacher"
    unet.save_pretrained(folder / "unet")
    EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5).save_pretrained(folder / "scheduler")
    return folder
