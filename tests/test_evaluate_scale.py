"""``evaluate`` beyond one process: shards and ``merge``, ``accelerate launch``, resuming a killed run, and Hub-style
datasets (a local imagefolder, offline). Each must give the results of a one-process run, timings aside."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from rp_diffusers.cli import main
from rp_diffusers.evaluation import EXAMPLES_DIR
from rp_diffusers.evaluation.runs import PARTIAL_DIR, Journal

# One torch thread in this process, as in the launched ones (OMP_NUM_THREADS=1): float reductions depend on the
# thread count, so only runs on equal threads can give the same bits.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SWEEP = ["--codec", "jpeg,webp", "--qualities", "30,60", "--metrics", "psnr,ssimulacra2", "--workers", "1"]
TIMING = ("date", "preprocess_seconds_per_image")


def _normalized(folder: Path) -> dict[str, dict]:
    """Every results file of ``folder``, with what may differ between runs (timings, dates) removed."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if "meta" in data:
            for key in TIMING:
                data["meta"].pop(key)
            data["results"] = {k: v for k, v in data["results"].items() if not k.endswith("_time")}
            data["per_image"] = [{k: v for k, v in r.items() if not k.endswith("_time")} for r in data["per_image"]]
        found[path.name] = data
    return found


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five crops of the shipped photographs, three of one size (they batch together in the pipeline)."""
    folder = tmp_path_factory.mktemp("photos")
    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES_DIR.glob("*.png"))]
    boxes = [(0, 0, 96, 80), (40, 30, 136, 110), (100, 60, 196, 140), (0, 0, 120, 72), (10, 10, 74, 90)]
    for k, box in enumerate(boxes):
        sources[k % len(sources)].crop(box).save(folder / f"p{k}.png")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from rp_diffusers.pipelines.testing import build_tiny_random_model

    return build_tiny_random_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def one_run(photos, model_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("one") / "out"
    argv = ["evaluate", "--images", str(photos), *SWEEP, "--model", str(model_dir), "--output", str(output)]
    assert main([*argv, "--no-progress"]) == 0
    return output


def test_shards_merge_into_the_one_process_results(photos, model_dir, one_run, tmp_path, capsys):
    argv = ["evaluate", "--images", str(photos), *SWEEP, "--model", str(model_dir), "--no-progress"]
    for index in range(3):
        assert main([*argv, "--shard", f"{index}/3", "--output", str(tmp_path / f"s{index}")]) == 0
    shard = json.loads((tmp_path / "s1" / "jpeg.json").read_text())
    # whole pre-processing batches (same size, --batch-size 4): [p0 p1 p2] [p3] [p4], every 3rd from the 2nd
    assert shard["meta"]["images"] == ["p3"] and shard["meta"]["shard"]["count"] == 3
    assert not (tmp_path / "s1" / "rd.png").exists() and not (tmp_path / "s1" / PARTIAL_DIR).exists()
    folders = [str(tmp_path / f"s{index}") for index in (2, 0, 1)]  # any order
    assert main(["merge", *folders, "--output", str(tmp_path / "merged")]) == 0
    merged, one = _normalized(tmp_path / "merged"), _normalized(one_run)
    curves = ["jpeg.json", "rp+jpeg[rp_jpeg_lambda_0p5].json", "rp+webp[base].json", "webp.json"]
    assert sorted(merged) == sorted(one) == ["bd_rate.json", *curves]
    assert merged == one  # the same records, means, meta and BD-rates as one process
    assert (tmp_path / "merged" / "rd.png").is_file()
    capsys.readouterr()

    assert main(["merge", folders[0], folders[1], "--output", str(tmp_path / "m2")]) == 2  # shard 1/3 missing
    assert "shards 1/3 are missing" in capsys.readouterr().err
    other = ["evaluate", "--images", str(photos), "--codec", "jpeg,webp", "--qualities", "40", "--workers", "1"]
    assert (
        main([*other, "--metrics", "psnr", "--shard", "1/3", "--output", str(tmp_path / "x1"), "--no-progress"]) == 0
    )
    assert main(["merge", folders[0], folders[1], str(tmp_path / "x1"), "--output", str(tmp_path / "m3")]) == 2
    assert "different" in capsys.readouterr().err
    assert main(["merge", str(photos), "--output", str(tmp_path / "m4")]) == 2
    assert "holds no shard results" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shard", "2/2"], "0 <= I < N"),
        (["--shard", "one/2"], "I/N"),
        (["--shard", "0/2", "--fid"], "--fid needs every decoded image"),
        (["--shard", "5/6"], "has no image"),
    ],
)
def test_bad_shards_are_refused(photos, tmp_path, capsys, extra, message):
    argv = ["evaluate", "--images", str(photos), *SWEEP, "--output", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_killed_run_leaves_no_results_and_resumes_to_the_same(
    photos, model_dir, one_run, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "out"
    argv = ["evaluate", "--images", str(photos), *SWEEP, "--model", str(model_dir), "--output", str(output)]
    argv.append("--no-progress")
    appended = []
    original = Journal.append

    def append_then_stop(self, curve, image, records):
        original(self, curve, image, records)
        appended.append((curve, image))
        if len(appended) == 7:  # the 2nd image of the second curve: a kill between two images
            raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "append", append_then_stop)
    assert main(argv) == 130
    monkeypatch.undo()
    assert sorted(p.name for p in output.iterdir()) == [PARTIAL_DIR]  # nothing that looks like a result
    capsys.readouterr()

    assert main(argv) == 2  # a new run does not silently discard the unfinished one
    assert "--resume" in capsys.readouterr().err
    changed = [a if a != "30,60" else "30,70" for a in argv]
    assert main([*changed, "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err

    measured = []
    monkeypatch.setattr(Journal, "append", lambda self, c, i, r: (measured.append((c, i)), original(self, c, i, r)))
    assert main([*argv, "--resume"]) == 0
    assert "resuming, 2 of 5 images already measured" in capsys.readouterr().out
    assert len(measured) == 5 * 4 - 7  # only what the killed run had not measured
    assert not (output / PARTIAL_DIR).exists()
    assert _normalized(output) == _normalized(one_run)


def test_a_sigkilled_process_resumes(photos, tmp_path):
    """A real kill -9 in the middle of the sweep: the journal survives and the rerun completes it."""
    output = tmp_path / "out"
    command = [sys.executable, "-m", "rp_diffusers.cli", "evaluate", "--images", str(photos), "--output", str(output)]
    command += ["--codec", "jpeg", "--qualities", "20:90:5", "--metrics", "psnr,ssimulacra2", "--workers", "1"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([*command, "--no-progress"], env=environment, stdout=subprocess.DEVNULL)
    journal = output / PARTIAL_DIR / "jpeg.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or not journal.read_text().count("\n")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines = journal.read_text().count("\n")
    assert 1 <= lines < 5, "the kill came too late to test resuming"
    assert not (output / "jpeg.json").exists()
    done = subprocess.run([*command, "--no-progress", "--resume"], env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    straight = tmp_path / "straight"
    again = [a if a != str(output) else str(straight) for a in command]
    assert subprocess.run([*again, "--no-progress"], env=environment, capture_output=True).returncode == 0
    assert _normalized(output) == _normalized(straight)


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH")
def test_accelerate_launch_two_processes_gives_the_one_process_results(photos, model_dir, one_run, tmp_path):
    output = tmp_path / "out"
    config = Path(__file__).resolve().parents[1] / "training" / "configs" / "cpu_2proc.yaml"
    command = ["accelerate", "launch", "--config_file", str(config), "--main_process_port", str(_free_port())]
    command += ["-m", "rp_diffusers.cli", "evaluate"]
    command += ["--images", str(photos), *SWEEP, "--model", str(model_dir), "--output", str(output), "--no-progress"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged 2 process shards (5 images)" in done.stdout  # two processes ran, the main one merged
    assert sorted(p.name for p in output.iterdir()) == sorted([*(p.name for p in one_run.iterdir())])
    assert _normalized(output) == _normalized(one_run)  # no .shards left, the same results


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_local_imagefolder_dataset_is_the_same_as_its_folder(photos, tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dataset = tmp_path / "dataset" / "train"
    shutil.copytree(photos, dataset)
    (dataset / "notes.txt").write_text("not an image")
    sweep = ["--codec", "jpeg", "--qualities", "30,60", "--metrics", "psnr", "--workers", "1", "--no-progress"]
    assert main(["evaluate", "--images", str(photos), *sweep, "--output", str(tmp_path / "folder")]) == 0
    argv = ["evaluate", "--dataset", str(dataset.parent), "--split", "train", *sweep]
    assert main([*argv, "--output", str(tmp_path / "dataset_out")]) == 0
    assert main([*argv, "--streaming", "--output", str(tmp_path / "streamed")]) == 0
    folder = _normalized(tmp_path / "folder")
    assert _normalized(tmp_path / "dataset_out") == folder == _normalized(tmp_path / "streamed")
    one_by_one = [*argv, "--limit", "2", "--batch-size", "1", "--shard", "1/2"]
    assert main([*one_by_one, "--output", str(tmp_path / "shard")]) == 0
    assert json.loads((tmp_path / "shard" / "jpeg.json").read_text())["meta"]["images"] == ["p1"]
    assert main([*argv, "--image-column", "picture", "--output", str(tmp_path / "bad")]) == 2
