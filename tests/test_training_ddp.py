"""The training scripts under ``accelerate launch`` in two CPU processes (DDP over gloo), for real.

Two processes at batch B must make the update one process makes at batch 2B (the gradients are averaged, and each
process trains on its own half of the batch); only the main process writes; LoRA weights saved under DDP load
back with no ``module.`` prefix; a checkpoint written by two processes resumes in one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "training"
CPU_CONFIG = TRAINING / "configs" / "cpu_2proc.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(script: str, processes: int, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    command = ["accelerate", "launch"]
    if config is not None:
        command += ["--config_file", str(config), "--main_process_port", str(_free_port())]
    else:
        command += ["--num_processes", str(processes), "--cpu", "--main_process_port", str(_free_port())]
    command += [str(TRAINING / f"{script}.py"), *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr[-4000:]}"
    assert f"Num processes: {processes}" in done.stdout + done.stderr  # accelerate's state, logged by the runner
    return done


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, train_dir):
    from rp_diffusers.utils.testing import save_tiny_sd

    root = tmp_path_factory.mktemp("ddp")
    model = save_tiny_sd(root / "tiny-sd")
    data = root / "train"
    data.mkdir()
    for path in sorted(train_dir.glob("*.jpg"))[:4]:
        Image.open(path).convert("RGB").reduce(8).save(data / f"{path.stem}.png")
    from rp_diffusers.metrics import LPIPS

    torch.manual_seed(0)  # random LPIPS-VGG weights: distillation's perceptual term without the official files
    lpips = root / "lpips_vgg_random.safetensors"
    save_file(LPIPS("vgg", load_weights=False).state_dict(), str(lpips))
    return {"root": root, "model": model, "data": data, "lpips": lpips}


def _stage2(workspace, output: Path, batch: int, *extra: str) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(workspace["model"]),
        "--train_data_dir", str(workspace["data"]),
        "--cache_dir", str(workspace["root"] / "cache"),
        "--resolution", "32", "--center_crop",  # no random crop: the batch is the same whatever the split
        "--output_dir", str(output), "--report_to", "none",
        "--codec", "jpeg", "--quality_range", "40", "40",  # one quality for every process
        "--lambda_rate", "0.5", "--lambda_perceptual", "0", "--lambda_mse", "1",
        "--rank", "4", "--learning_rate", "1e-3", "--seed", "3",
        "--train_batch_size", str(batch), *extra,
    ]  # fmt: skip


def _lora(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, f"expected one weights file in {folder}: {[f.name for f in files]}"
    return load_file(str(files[0]))


# Adam's first step is lr * g / (|g| + eps): with eps = 1 (and |g| << 1) it is lr * g, the gradient itself.
LINEAR = ["--max_train_steps", "1", "--adam_epsilon", "1", "--learning_rate", "1", "--adam_weight_decay", "0"]


@pytest.fixture(scope="module")
def one_process_step(workspace) -> dict[str, torch.Tensor]:
    """One step of one process at batch 4: the whole 4-image set."""
    _launch("finetune_rp", 1, *_stage2(workspace, workspace["root"] / "one", 4, *LINEAR))
    return _lora(workspace["root"] / "one")


def _relative_error(workspace, weights, reference) -> float:
    start = _lora_init(workspace)

    def step(w):  # the update of every LoRA weight, as one vector
        return torch.cat([(w[k].double() - start[k].double()).flatten() for k in sorted(reference)])

    assert step(reference).abs().max() > 1e-6  # the step did something
    return float((step(weights) - step(reference)).norm() / step(reference).norm())


def test_finetune_rp_two_processes_at_batch_b_equal_one_at_2b(workspace, one_process_step):
    root = workspace["root"]
    # one step, the global batch is the whole set in both runs, split 2 + 2 across the processes
    _launch("finetune_rp", 2, *_stage2(workspace, root / "two", 2, *LINEAR), config=CPU_CONFIG)
    two, one = _lora(root / "two"), one_process_step
    assert two.keys() == one.keys() and not any(k.startswith("module.") or ".module." in k for k in two)
    # the same update (the averaged gradient) up to float noise (DiffJPEG's rounding turns batch-size-dependent
    # last bits into small gradient differences: measured 5e-4 of the update's norm) ...
    error = _relative_error(workspace, two, one)
    assert error < 3e-3, error
    # ... and not what one process makes of half the batch
    _launch("finetune_rp", 1, *_stage2(workspace, root / "half", 2, *LINEAR))
    assert _relative_error(workspace, _lora(root / "half"), one) > 30 * error
    # only the main process wrote: one args.json, one adapter, no per-rank copies
    names = sorted(p.name for p in (root / "two").iterdir())
    assert names == sorted(p.name for p in (root / "one").iterdir()), names


def _lora_init(workspace) -> dict[str, torch.Tensor]:
    """The adapter before any step (LoRA's B is zero at init: the keys of A and B with their starting values)."""
    output = workspace["root"] / "zero"
    if not output.exists():
        _launch("finetune_rp", 1, *_stage2(workspace, output, 4, "--max_train_steps", "1", "--learning_rate", "0"))
    return _lora(output)


def test_finetune_rp_under_fsdp_on_cpu_makes_the_same_update(workspace, one_process_step, tmp_path):
    """FSDP (training/configs/fsdp.yaml) in two CPU processes: torch refuses sync_module_states on the CPU, so
    that one setting is off here (every process builds the same initial weights from the seed anyway)."""
    config = (TRAINING / "configs" / "fsdp.yaml").read_text()
    for old, new in [("num_processes: 8", "num_processes: 2"), ("mixed_precision: bf16", "mixed_precision: 'no'"),
                     ("fsdp_sync_module_states: true", "fsdp_sync_module_states: false")]:  # fmt: skip
        assert old in config
        config = config.replace(old, new)
    (tmp_path / "fsdp_cpu.yaml").write_text(config)
    output = workspace["root"] / "fsdp"
    _launch("finetune_rp", 2, *_stage2(workspace, output, 2, *LINEAR), config=tmp_path / "fsdp_cpu.yaml")
    weights = _lora(output)
    assert weights.keys() == one_process_step.keys()  # gathered whole on the main process, no wrapper prefixes
    assert _relative_error(workspace, weights, one_process_step) < 3e-3


def test_finetune_rp_checkpoint_of_two_processes_resumes_in_one(workspace):
    root = workspace["root"]
    run = root / "resumed"
    steps = ["--checkpointing_steps", "1", "--train_batch_size", "1"]
    _launch("finetune_rp", 2, *_stage2(workspace, run, 1, "--max_train_steps", "1", *steps), config=CPU_CONFIG)
    assert (run / "checkpoint-1").is_dir()
    done = _launch(
        "finetune_rp", 1, *_stage2(workspace, run, 1, "--max_train_steps", "2", *steps, "--resume_from_checkpoint",
                                   "latest"),
    )  # fmt: skip
    assert (run / "checkpoint-2").is_dir() and "resuming from" in done.stderr + done.stdout
    weights = _lora(run)
    assert not any(k.startswith("module.") for k in weights)


def test_distill_cid_and_train_corrdiff_run_in_two_processes(workspace, tmp_path):
    stage1 = tmp_path / "stage1"
    _launch(
        "distill_cid", 2,
        "--pretrained_model_name_or_path", str(workspace["model"]), "--train_data_dir", str(workspace["data"]),
        "--cache_dir", str(workspace["root"] / "cache"), "--resolution", "32", "--output_dir", str(stage1),
        "--report_to", "none", "--timestep", "625", "--student_lora_rank", "4", "--fake_score_lora_rank", "4",
        "--learning_rate", "1e-3", "--train_batch_size", "1", "--max_train_steps", "2",
        "--lambda_lpips", "0.5", "--lpips_weights_path", str(workspace["lpips"]),
        config=CPU_CONFIG,
    )  # fmt: skip
    weights = [load_file(str(p)) for p in stage1.rglob("*.safetensors") if "checkpoint-" not in str(p)]
    assert weights and not any(k.startswith("module.") for w in weights for k in w)

    photos = tmp_path / "photos"
    shutil.copytree(workspace["data"], photos)
    corrdiff = tmp_path / "corrdiff"
    _launch(
        "train_corrdiff", 2,
        "--phase", "codec", "--train_data_dir", str(photos), "--resolution", "64", "--train_batch_size", "1",
        "--max_train_steps", "2", "--channels", "8", "--latent_channels", "8", "--hyper_channels", "8",
        "--learning_rate", "1e-3", "--logging_steps", "100", "--output_dir", str(corrdiff),
        config=CPU_CONFIG,
    )  # fmt: skip
    codec = load_file(str(corrdiff / "codec.safetensors"))
    assert codec and not any(k.startswith("module.") for k in codec)
