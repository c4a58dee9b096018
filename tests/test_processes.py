"""Nothing is left running or left behind when a run is killed: external tools, pool workers, temporary folders.

The kill tests start a real run in a child process, wait until it has children of its own, kill it with
``SIGKILL`` or ``SIGTERM`` (no Python cleanup runs) and check by PID that every descendant is gone.
"""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rp_diffusers.utils import processes
from rp_diffusers.utils.processes import private_tempdir, remove_stale_tempdirs, run_tool, tool_argv

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or processes._setpriv() is None,
    reason="the parent-death signal needs Linux and util-linux's setpriv --pdeathsig",
)


def _children() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":  # a zombie has exited already
                table[int(entry.name)] = int(fields[1])
    return table


def _descendants(pid: int) -> set[int]:
    table, found, frontier = _children(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _alive(pids: set[int]) -> set[int]:
    table = _children()
    return {pid for pid in pids if pid in table}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_tool_argv_keeps_the_program_and_refuses_shell_strings():
    assert tool_argv(["prog", "a b"])[-2:] == ["prog", "a b"]
    with pytest.raises(TypeError, match="argv list"):
        run_tool("ls -l")
    with pytest.raises(FileNotFoundError):
        run_tool(["/no/such/program-rp"], capture_output=True)


def test_stale_tempdirs_of_dead_owners_are_removed_and_nothing_else(tmp_path):
    dead = tmp_path / f"rp-diffusers-{_dead_pid()}-codec-abc"
    mine = tmp_path / f"rp-diffusers-{os.getpid()}-codec-def"
    other = tmp_path / "rp-diffusers-notapid-x"
    user_file = tmp_path / f"rp-diffusers-{_dead_pid()}-a-file"
    for folder in (dead, mine, other):
        folder.mkdir()
        (folder / "out.hevc").write_bytes(b"x")
    user_file.write_text("keep")
    assert remove_stale_tempdirs(tmp_path) == [dead]
    assert not dead.exists() and mine.is_dir() and other.is_dir() and user_file.read_text() == "keep"


def test_private_tempdir_is_named_by_its_owner_and_removed():
    with private_tempdir("codec-") as folder:
        assert Path(folder).name.startswith(f"rp-diffusers-{os.getpid()}-codec-")
        (Path(folder) / "x").write_bytes(b"1")
    assert not Path(folder).exists()


@linux_only
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_parent_takes_its_tool_with_it(tmp_path, how):
    script = textwrap.dedent(
        """
        import sys
        from rp_diffusers.utils.processes import run_tool
        run_tool(["sleep", "120"])
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        tools = _wait_for(lambda: _descendants(parent.pid), 30, "the tool to start")
        os.kill(parent.pid, how)
        parent.wait(timeout=30)
        _wait_for(lambda: not _alive(tools), 10, f"the tool {sorted(tools)} to die with its parent")
    finally:
        parent.kill()
        parent.wait()


@linux_only
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_evaluate_leaves_no_worker_or_encoder_running(tmp_path, how):
    """``rp-diffusers evaluate`` killed halfway (4 workers running HEVC encodes): every descendant dies."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (256, 384, 3), dtype=np.uint8)).save(images / f"noise{i}.png")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "rp_diffusers.cli", "evaluate", "--images", str(images), "--codec", "hevc"]
    argv += ["--qualities", "10,20,30,40,50", "--metrics", "psnr", "--workers", "4", "--output", str(out)]
    argv += ["--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def workers_and_an_encoder():
            found = _descendants(run.pid)
            names = set()
            for pid in found:
                try:
                    names.add(Path(f"/proc/{pid}/comm").read_text().strip())
                except OSError:
                    pass
            return found if len(found) >= 4 and any(name.startswith("ffmpeg") for name in names) else None

        descendants = _wait_for(workers_and_an_encoder, 120, "the pool workers and an ffmpeg encode")
        os.kill(run.pid, how)
        run.wait(timeout=60)
        _wait_for(lambda: not _alive(descendants), 15, f"the workers and encoders {sorted(descendants)} to die")
    finally:
        run.kill()
        run.wait()
        run.stderr.close()
    owners = {run.pid, *descendants}
    leftovers = [
        p for p in Path(tempfile.gettempdir()).glob("rp-diffusers-*-*") if int(p.name.split("-")[2]) in owners
    ]
    remove_stale_tempdirs()  # the killed processes could not clean up; the next private_tempdir does
    assert not any(folder.exists() for folder in leftovers)
