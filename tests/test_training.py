"""Training: both Accelerate scripts on tiny components (outputs, exact resume, bad images) and their library code."""

import json
import logging
import math
import os
import shutil
import signal
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from rp_diffusers.metrics import LPIPS
from rp_diffusers.training_utils import (
    RandomCropImageDataset,
    checkpoint_folders,
    codec_validation,
    load_image_dataset,
    load_trainable_weights,
    random_crop,
    render_training_card,
    resolve_resume_checkpoint,
    rotate_checkpoints,
    save_args,
    save_trainable_weights,
    step_generator,
)
from rp_diffusers.utils.testing import load_script

TRAINING = Path(__file__).resolve().parents[1] / "training"
RESOLUTION = 32


def _load_script(name: str):
    module = load_script(TRAINING / f"{name}.py", f"rp_training_{name}")
    return module


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def finetune_rp():
    return _load_script("finetune_rp")


@pytest.fixture(scope="module")
def distill_cid():
    return _load_script("distill_cid")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, train_dir, val_dir):
    """Tiny SD folder, 4 small training photographs plus one corrupt file, 2 small validation crops."""
    from rp_diffusers.utils.testing import save_tiny_sd

    root = tmp_path_factory.mktemp("training")
    model = save_tiny_sd(root / "tiny-sd")
    data = root / "train"
    data.mkdir()
    for path in sorted(train_dir.glob("*.jpg"))[:4]:
        image = Image.open(path).convert("RGB")
        image.reduce(8).save(data / f"{path.stem}.png")  # about 128 x 96: fast to decode, still larger than crops
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    val = root / "val"
    val.mkdir()
    for path in sorted(val_dir.glob("*.png"))[:2]:
        Image.open(path).convert("RGB").crop((0, 0, 40, 36)).save(val / path.name)
    lpips = {}
    for net in ("alex", "vgg"):  # random LPIPS weights: exercise the perceptual path without the real files
        torch.manual_seed(0)
        lpips[net] = root / f"lpips_{net}_random.safetensors"
        save_file(LPIPS(net, load_weights=False).state_dict(), str(lpips[net]))
    return {"root": root, "model": model, "data": data, "val": val, "lpips": lpips}


def _stage2_args(workspace, output_dir, *extra):
    return [
        "--pretrained_model_name_or_path", str(workspace["model"]),
        "--train_data_dir", str(workspace["data"]),
        "--cache_dir", str(workspace["root"] / "cache"),
        "--resolution", str(RESOLUTION),
        "--output_dir", str(output_dir),
        "--report_to", "none",
        "--codec", "jpeg",
        "--quality_range", "20", "60",
        "--lambda_rate", "0.5",
        "--lambda_perceptual", "0",
        "--lambda_mse", "1",
        "--rank", "4",
        "--learning_rate", "1e-3",
        "--seed", "3",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def stage2_run(finetune_rp, workspace):
    output = workspace["root"] / "stage2"
    args = finetune_rp.parse_args(
        _stage2_args(workspace, output, "--train_batch_size", "2", "--max_train_steps", "2", "--validation_data_dir",
                     str(workspace["val"]), "--validation_steps", "2", "--validation_qualities", "30",
                     "--perceptual_loss", "lpips", "--lambda_perceptual", "0.5",
                     "--perceptual_weights_path", str(workspace["lpips"]["alex"]))
    )  # fmt: skip
    finetune_rp.main(args)
    return output


@pytest.fixture(scope="module")
def stage1_run(distill_cid, workspace):
    output = workspace["root"] / "stage1"
    args = distill_cid.parse_args(
        [
            "--pretrained_model_name_or_path", str(workspace["model"]),
            "--train_data_dir", str(workspace["data"]),
            "--cache_dir", str(workspace["root"] / "cache"),
            "--resolution", str(RESOLUTION),
            "--output_dir", str(output),
            "--report_to", "none",
            "--timestep", "625",
            "--lambda_lpips", "0.5",
            "--lpips_weights_path", str(workspace["lpips"]["vgg"]),
            "--student_lora_rank", "4",
            "--fake_score_lora_rank", "4",
            "--learning_rate", "1e-3",
            "--train_batch_size", "2",
            "--max_train_steps", "2",
        ]
    )  # fmt: skip
    distill_cid.main(args)
    return output


# ------------------------------------------------------------------------------------------ stage 2 script


def test_finetune_rp_writes_args_and_adapter(stage2_run):
    args = json.loads((stage2_run / "args.json").read_text())
    assert args["rank"] == 4 and args["adapter_name"] == "rp_jpeg_lambda_0p5" and args["quality_range"] == [20, 60]
    assert args["perceptual_loss"] == "lpips" and args["lambda_perceptual"] == 0.5
    weights = load_file(str(stage2_run / "pytorch_lora_weights.safetensors"))
    assert weights and all(key.startswith("unet.") and "lora" in key for key in weights)
    assert any(".to_q." in key for key in weights) and any(".to_out.0." in key for key in weights)
    info = json.loads((stage2_run / "rp_adapter.json").read_text())
    assert (info["codec"], info["lambda"], info["rank"], info["train_steps"]) == ("jpeg", 0.5, 4, 2)


def test_finetune_rp_validation_compares_real_codec(stage2_run):
    report = json.loads((stage2_run / "validation" / "step-2" / "metrics.json").read_text())
    assert (report["name"], report["meta"]["step"], report["meta"]["codec"]) == ("step-2", 2, "jpeg")  # CompressAI's
    columns = report["results"]
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    assert [(row["quality"], row["variant"]) for row in rows] == [(30, "codec alone"), (30, "rp + codec")]
    assert all(row["bpp"] > 0 and 5 < row["psnr-rgb"] < 60 for row in rows)  # the results schema's keys
    assert rows[0]["bpp"] != rows[1]["bpp"] or rows[0]["psnr-rgb"] != rows[1]["psnr-rgb"]
    assert len(list((stage2_run / "validation" / "step-2").glob("*.png"))) == 2 * 3  # pre-processed + 2 decodes


def test_finetune_rp_can_train_with_the_real_codec_in_the_loop(finetune_rp, workspace, tmp_path):
    """--surrogate_forward real: every training crop goes through the real codec (the learned proxy gives the
    gradient), and the adapter records it."""
    from rp_diffusers.surrogates import CodecInTheLoop

    calls = []
    original = CodecInTheLoop.real

    def counting(self, image, quality):
        calls.append((self.codec.name, tuple(image.shape), quality.tolist()))
        return original(self, image, quality)

    extra = ("--train_batch_size", "2", "--max_train_steps", "1", "--surrogate_forward", "real")
    args = _stage2_args(workspace, tmp_path / "loop", *extra)
    args[args.index("--codec") + 1] = "webp"
    args[args.index("--quality_range") + 1 : args.index("--quality_range") + 3] = ["50", "80"]
    with mock.patch.object(CodecInTheLoop, "real", counting):
        finetune_rp.main(finetune_rp.parse_args(args))
    assert calls and all(name == "webp" and shape[0] == 2 for name, shape, _ in calls)
    assert all(q == int(q) and 50 <= q <= 80 for _, _, qs in calls for q in qs)
    info = json.loads((tmp_path / "loop" / "rp_adapter.json").read_text())
    assert info["surrogate_forward"] == "real" and info["surrogate"] == "webp"


def test_finetune_rp_lora_loads_and_changes_pipeline_output(stage2_run, workspace):
    from rp_diffusers import RPPreprocessPipeline

    pipe = RPPreprocessPipeline.from_pretrained(workspace["model"])
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 36, 40, generator=torch.Generator().manual_seed(0))
    before = pipe(image, output_type="pt").images
    pipe.load_lora_weights(str(stage2_run))
    assert "rp_jpeg_lambda_0p5" in pipe.available_adapters()
    after = pipe(image, adapter_name="rp_jpeg_lambda_0p5", output_type="pt").images
    assert after.shape == before.shape == (1, 3, 36, 40)
    assert (after - before).abs().max() > 1e-3


def test_finetune_rp_resume_is_exact(finetune_rp, workspace, tmp_path):
    # 5 samples (one corrupt, replaced) in batches of 2: 3 batches per epoch, so the checkpoint at step 2 is
    # mid-epoch (2 batches skipped on resume) and step 4 lies in the next epoch
    extra = ("--train_batch_size", "2", "--max_train_steps", "4", "--checkpointing_steps", "2",
             "--lr_scheduler", "cosine")  # fmt: skip
    finetune_rp.main(finetune_rp.parse_args(_stage2_args(workspace, tmp_path / "full", *extra)))

    interrupted = tmp_path / "interrupted"
    original, calls = finetune_rp.step_generator, []

    def die_at_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # checkpoint-2 is on disk; the run dies before step 3
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    with mock.patch.object(finetune_rp, "step_generator", die_at_third_batch):
        with pytest.raises(KeyboardInterrupt):
            finetune_rp.main(finetune_rp.parse_args(_stage2_args(workspace, interrupted, *extra)))
    assert [p.name for p in checkpoint_folders(interrupted)] == ["checkpoint-2"]
    assert not (interrupted / "pytorch_lora_weights.safetensors").exists()
    resumed = _stage2_args(workspace, interrupted, *extra, "--resume_from_checkpoint", "latest")
    finetune_rp.main(finetune_rp.parse_args(resumed))

    full = load_file(str(tmp_path / "full" / "pytorch_lora_weights.safetensors"))
    again = load_file(str(interrupted / "pytorch_lora_weights.safetensors"))
    assert full.keys() == again.keys()
    assert max((full[k] - again[k]).abs().max().item() for k in full) <= 1e-6
    # the weights moved after the checkpoint, so the equality above is not trivially true
    # a SIGTERM (preemption) in step 1: the run finishes the step, saves checkpoint-1 and returns without the adapter
    signalled = tmp_path / "signalled"

    def sigterm_in_first_step(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    previous_handler = signal.getsignal(signal.SIGTERM)
    with mock.patch.object(finetune_rp, "step_generator", sigterm_in_first_step):
        finetune_rp.main(finetune_rp.parse_args(_stage2_args(workspace, signalled, *extra)))
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    assert [p.name for p in checkpoint_folders(signalled)] == ["checkpoint-1"]
    assert not (signalled / "pytorch_lora_weights.safetensors").exists()
    finetune_rp.main(
        finetune_rp.parse_args(_stage2_args(workspace, signalled, *extra, "--resume_from_checkpoint", "latest"))
    )
    again = load_file(str(signalled / "pytorch_lora_weights.safetensors"))
    assert max((full[k] - again[k]).abs().max().item() for k in full) <= 1e-6

    at_checkpoint = {
        "unet." + k.replace(".rp_jpeg_lambda_0p5", ""): v
        for k, v in load_file(str(interrupted / "checkpoint-2" / "lora.safetensors")).items()
    }
    assert at_checkpoint.keys() == full.keys()
    assert max((full[k] - at_checkpoint[k]).abs().max().item() for k in full) > 1e-5


# ------------------------------------------------------------------------------------------ stage 1 script


def test_distill_cid_output_loads_as_pipeline(stage1_run, workspace):
    from rp_diffusers import RPPreprocessPipeline

    pipe = RPPreprocessPipeline.from_pretrained(stage1_run)
    assert pipe.config.timestep == 625 and pipe.available_adapters() == {}
    assert (stage1_run / "prompt_embeds.safetensors").is_file() and pipe.text_encoder is None
    teacher = RPPreprocessPipeline.from_pretrained(workspace["model"])
    changed = [
        name for name, p in pipe.unet.state_dict().items() if (p - teacher.unet.state_dict()[name]).abs().max() > 1e-6
    ]
    assert changed and all(any(t in name for t in ("to_q", "to_k", "to_v", "to_out.0")) for name in changed)
    assert not any("lora" in name for name in pipe.unet.state_dict())  # fused, then unloaded


def test_distill_cid_writes_args_and_checkpoint(stage1_run):
    args = json.loads((stage1_run / "args.json").read_text())
    assert args["timestep"] == 625 and args["sid_alpha"] == 1.0 and "hub_token" not in args


def test_distill_cid_resume_is_exact(distill_cid, workspace, tmp_path):
    common = [
        "--pretrained_model_name_or_path", str(workspace["model"]),
        "--train_data_dir", str(workspace["data"]),
        "--cache_dir", str(workspace["root"] / "cache"),
        "--resolution", str(RESOLUTION),
        "--report_to", "none",
        "--lambda_lpips", "0",
        "--student_lora_rank", "4",
        "--fake_score_lora_rank", "4",
        "--learning_rate", "1e-3",
        "--train_batch_size", "1",
        "--max_train_steps", "3",
        "--checkpointing_steps", "2",
    ]  # fmt: skip
    distill_cid.main(distill_cid.parse_args([*common, "--output_dir", str(tmp_path / "full")]))
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", part / "checkpoint-2")  # what a run killed at step 3 leaves
    distill_cid.main(
        distill_cid.parse_args([*common, "--output_dir", str(part), "--resume_from_checkpoint", "latest"])
    )
    full = load_file(str(tmp_path / "full" / "unet" / "diffusion_pytorch_model.safetensors"))
    again = load_file(str(part / "unet" / "diffusion_pytorch_model.safetensors"))
    assert max((full[k] - again[k]).abs().max().item() for k in full) <= 1e-6
    for name in ("student", "fake_score"):  # the checkpoint stores the LoRA factors only
        keys = load_file(str(part / "checkpoint-2" / f"{name}.safetensors")).keys()
        assert keys and all("lora_" in key for key in keys)


# ------------------------------------------------------------------------------------------ library code


def test_dataset_skips_corrupt_image_with_warning(workspace, caplog):
    dataset, column = load_image_dataset(train_data_dir=workspace["data"], cache_dir=workspace["root"] / "cache")
    crops = RandomCropImageDataset(dataset, column, RESOLUTION, seed=0)
    assert len(crops) == 5
    with caplog.at_level(logging.WARNING, logger="rp_diffusers.training_utils.data"):
        items = [crops[i]["pixel_values"] for i in range(len(crops))]
    assert all(item.shape == (3, RESOLUTION, RESOLUTION) for item in items)
    assert sum("corrupt.png" in record.getMessage() for record in caplog.records) == 1


def test_dataset_all_unreadable_raises(tmp_path):
    from rp_diffusers.utils.image import ImageLoadError

    crops = RandomCropImageDataset([str(tmp_path / "missing.png")], None, RESOLUTION)
    with pytest.raises(ImageLoadError, match="no readable image"):
        crops[0]


def test_random_crop_keeps_content_scale():
    array = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    crop = random_crop(Image.fromarray(array), 32, np.random.default_rng(1))
    crop_uint8 = (crop.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    matches = [
        (top, left)
        for top in range(50 - 31)
        for left in range(70 - 31)
        if np.array_equal(array[top : top + 32, left : left + 32], crop_uint8)
    ]
    assert len(matches) == 1  # an exact window of the original pixels: no resampling


def test_random_crop_dataset_is_deterministic_per_epoch_and_index(workspace):
    dataset, column = load_image_dataset(train_data_dir=workspace["data"], cache_dir=workspace["root"] / "cache")
    first = RandomCropImageDataset(dataset, column, RESOLUTION, seed=5, random_flip=True)
    second = RandomCropImageDataset(dataset, column, RESOLUTION, seed=5, random_flip=True)
    assert torch.equal(first[1]["pixel_values"], second[1]["pixel_values"])
    first.set_epoch(1)
    assert not torch.equal(first[1]["pixel_values"], second[1]["pixel_values"])


def test_step_generator_depends_only_on_keys():
    a = torch.rand(3, generator=step_generator(0, 0, 1, 2))
    torch.manual_seed(123)  # the global RNG state must not matter
    assert torch.equal(a, torch.rand(3, generator=step_generator(0, 0, 1, 2)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(0, 0, 1, 3)))


def test_one_step_map_returns_its_latents_on_request():
    from rp_diffusers.models import one_step_map
    from rp_diffusers.utils.testing import tiny_sd_components

    parts = tiny_sd_components()
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    embeds = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))
    alphas = parts["scheduler"].alphas_cumprod
    with torch.no_grad():
        for residual in (False, True):
            latents, output = one_step_map(
                parts["vae"], parts["unet"], image, embeds, 625, alphas, residual=residual, return_latents=True
            )
            expected = one_step_map(parts["vae"], parts["unet"], image, embeds, 625, alphas, residual=residual)
            assert latents.shape == (2, 4, 8, 8) and torch.equal(output, expected)


def test_checkpoint_rotation_and_latest(tmp_path):
    for step in (10, 2, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert resolve_resume_checkpoint(tmp_path, "latest").name == "checkpoint-30"
    removed = rotate_checkpoints(tmp_path, total_limit=2)  # room for the one about to be saved
    assert [p.name for p in removed] == ["checkpoint-2", "checkpoint-10"]
    assert [p.name for p in checkpoint_folders(tmp_path)] == ["checkpoint-30"]
    assert resolve_resume_checkpoint(tmp_path / "empty", "latest") is None
    with pytest.raises(FileNotFoundError, match="latest"):
        resolve_resume_checkpoint(tmp_path, "checkpoint-99")


def test_trainable_weights_round_trip_and_mismatch(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    save_trainable_weights(model, tmp_path / "w.safetensors")
    assert set(load_file(str(tmp_path / "w.safetensors"))) == {"1.weight", "1.bias"}
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other[0].requires_grad_(False)
    load_trainable_weights(other, tmp_path / "w.safetensors")
    assert torch.equal(other[1].weight, model[1].weight) and not torch.equal(other[0].weight, model[0].weight)
    other[0].requires_grad_(True)
    with pytest.raises(ValueError, match="missing"):
        load_trainable_weights(other, tmp_path / "w.safetensors")


def test_save_args_writes_json_without_token(tmp_path):
    path = save_args({"rank": 4, "output_dir": tmp_path, "hub_token": "secret"}, tmp_path)
    assert json.loads(path.read_text()) == {"rank": 4, "output_dir": str(tmp_path)}


def test_codec_validation_measures_real_codec(val_dir):
    from rp_diffusers.codecs import get_codec

    originals = [Image.open(val_dir / "face.png").convert("RGB").crop((0, 0, 176, 168))]
    identical = [originals[0].copy()]
    rows, decoded = codec_validation(originals, identical, get_codec("jpeg"), [20, 80])
    assert [(r["quality"], r["variant"]) for r in rows] == [
        (20, "codec alone"), (20, "rp + codec"), (80, "codec alone"), (80, "rp + codec")
    ]  # fmt: skip
    assert rows[0]["bpp"] == rows[1]["bpp"] and rows[0]["psnr-rgb"] == rows[1]["psnr-rgb"]  # same input, same file
    assert rows[2]["bpp"] > rows[0]["bpp"] and rows[2]["psnr-rgb"] > rows[0]["psnr-rgb"] and "ms-ssim-rgb" in rows[0]
    expected = get_codec("jpeg").run(originals[0], 20)
    assert rows[0]["bpp"] == pytest.approx(expected.bpp) and decoded[(20, "codec alone")][0].size == (176, 168)


def test_render_training_card_includes_validation_table():
    rows = [{"quality": 30, "setting": "codec alone", "bpp": 0.51234, "psnr": 30.1},
            {"quality": 30, "setting": "rp + codec", "bpp": 0.40001, "psnr": 28.7}]  # fmt: skip
    adapters = [{"name": "rp_jpeg_lambda_0p5", "codec": "jpeg", "lam": 0.5, "rank": 8}]
    card = str(render_training_card("me/rp-jpeg", adapters=adapters, validation_rows=rows, base_model="sd-turbo"))
    assert "| quality | setting | bpp | psnr |" in card
    assert "| 30 | rp + codec | 0.4 | 28.7 |" in card and "| 30 | codec alone | 0.5123 | 30.1 |" in card
    assert "rp_jpeg_lambda_0p5" in card and "me/rp-jpeg" in card


def test_finetune_rp_rejects_resolution_off_the_model_multiple(finetune_rp, workspace, tmp_path):
    args = finetune_rp.parse_args(_stage2_args(workspace, tmp_path / "out", "--resolution", "30"))
    with pytest.raises(ValueError, match="multiple of 4"):
        finetune_rp.main(args)


def test_scripts_require_a_dataset(finetune_rp, distill_cid):
    for script in (finetune_rp, distill_cid):
        with pytest.raises(ValueError, match="--train_data_dir"):
            script.parse_args(["--pretrained_model_name_or_path", "x"])


def test_load_image_dataset_keeps_files_named_like_splits(tmp_path):
    # imagefolder's data_dir mode reads names such as "train_railway_*.jpg" as split markers and drops the rest
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("train_railway_a.png", "abbey.png", "test_b.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    dataset, column = load_image_dataset(train_data_dir=folder, cache_dir=tmp_path / "cache")
    names = sorted(Path(row[column]["path"]).name for row in dataset)
    assert names == ["abbey.png", "test_b.png", "train_railway_a.png"]


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_distill_decode_denoiser_trains_a_one_step_student(workspace, tmp_path, lora_rank, tiny_edm_teacher):
    """The real-teacher script runs stage 1's step on a tiny EDM teacher and writes loadable student weights.

    ``--lora_rank 0`` trains every weight (SiD); ``r > 0`` trains a LoRA only and saves it fused into a plain
    ``UNet2DModel`` with the teacher's parameter names.
    """
    from diffusers import UNet2DModel

    script = _load_script("distill_decode_denoiser")
    teacher = tiny_edm_teacher
    unet = UNet2DModel.from_pretrained(teacher / "unet")
    output = tmp_path / "student"
    args = script.parse_args(
        ["--teacher", str(teacher), "--train_data_dir", str(workspace["data"]), "--cache_dir",
         str(workspace["root"] / "cache"), "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "3",
         "--learning_rate", "1e-3", "--output_dir", str(output), "--log_steps", "1", "--lora_rank", str(lora_rank)]
    )  # fmt: skip
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    script.main(args)
    student = UNet2DModel.from_pretrained(output / "student")
    assert set(student.state_dict()) == set(before), "the saved student is not a plain UNet2DModel"
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the student did not move"
    log = json.loads((output / "distill_log.json").read_text())
    trainable = log["trainable_parameters"]["student"]
    total = sum(v.numel() for v in before.values())
    assert (trainable == total) if lora_rank == 0 else (0 < trainable < total)
    assert log["steps"] == 3 and all(math.isfinite(e["loss_sid"]) for e in log["loss"])
    assert log["args"]["teacher"] == "teacher"  # a folder name, not this machine's path
    with pytest.raises(ValueError, match="Kodak"):
        script.parse_args(["--train_data_dir", "/data/kodak"])


def test_distill_decode_denoiser_resume_and_signal_stop_are_exact(workspace, tmp_path, tiny_edm_teacher):
    """The script's checkpoints are the runner's: a run resumed from ``checkpoint-2``, or stopped by SIGTERM in its
    first step and resumed, ends with the student of an uninterrupted run."""
    script = _load_script("distill_decode_denoiser")

    def run(output, *extra):
        script.main(script.parse_args(
            ["--teacher", str(tiny_edm_teacher), "--train_data_dir", str(workspace["data"]), "--cache_dir",
             str(workspace["root"] / "cache"), "--resolution", "16", "--train_batch_size", "2", "--max_train_steps",
             "4", "--checkpointing_steps", "2", "--learning_rate", "1e-3", "--output_dir", str(output), *extra]
        ))  # fmt: skip
        return output / "student" / "diffusion_pytorch_model.safetensors"

    full = load_file(str(run(tmp_path / "full")))
    assert [p.name for p in checkpoint_folders(tmp_path / "full")] == ["checkpoint-2", "checkpoint-4"]
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", part / "checkpoint-2")  # what a run killed at step 3 leaves
    again = load_file(str(run(part, "--resume_from_checkpoint", "latest")))
    assert json.loads((part / "distill_log.json").read_text())["resumed_from_step"] == 2
    assert max((full[k] - again[k]).abs().max().item() for k in full) <= 1e-6
    halfway = load_file(str(tmp_path / "full" / "checkpoint-2" / "model.safetensors"))
    assert max((full[k] - halfway[k]).abs().max().item() for k in full) > 1e-6  # steps 3-4 moved the student

    signalled, original = tmp_path / "signalled", script.step_generator

    def sigterm_in_first_step(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    with mock.patch.object(script, "step_generator", sigterm_in_first_step):
        run(signalled)
    assert [p.name for p in checkpoint_folders(signalled)] == ["checkpoint-1"]
    assert not (signalled / "student").exists()
    again = load_file(str(run(signalled, "--resume_from_checkpoint", "latest")))
    assert max((full[k] - again[k]).abs().max().item() for k in full) <= 1e-6


def test_resume_refuses_an_old_corrdiff_checkpoint_with_a_clear_message(tmp_path):
    """Checkpoints written by train_corrdiff.py before it used the runner (trainer_state.json) are refused by name,
    not by an Accelerate error about missing files."""
    from argparse import Namespace

    from accelerate import Accelerator

    from rp_diffusers.training_utils import resume

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    args = Namespace(output_dir=str(tmp_path), resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match="older train_corrdiff.py"):
        resume(Accelerator(cpu=True), args, 1)
