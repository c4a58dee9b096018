"""Child processes that die with their parent, and temporary folders that a killed run does not leave behind.

A ``SIGKILL`` (or an unhandled ``SIGTERM``) runs no Python cleanup: without help, an encoder started by a killed
``evaluate`` keeps running to the end of its picture, pool workers blocked on a pipe live on as orphans, and
``TemporaryDirectory`` folders stay in ``/tmp`` for ever. Three tools close those gaps:

- :func:`run_tool` runs an external program (ffmpeg, ``butteraugli_main``) as an argv list with the kernel's
  parent-death signal set (Linux: util-linux's ``setpriv --pdeathsig KILL``, which sets it and then executes the
  program, so no Python runs between ``fork`` and ``exec``), so the program is killed when its parent dies;
- :func:`die_with_parent` is the same for a worker process (a ``ProcessPoolExecutor`` initializer calls it);
- :func:`private_tempdir` is a ``TemporaryDirectory`` whose name carries the owner's PID; each new one first
  removes the folders of owners that are no longer alive.

Where the parent-death signal does not exist (macOS, Windows) the programs run as plain children, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

__all__ = ["die_with_parent", "private_tempdir", "run_tool", "tool_argv"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_TEMP_PREFIX = "rp-diffusers-"
_TEMP_NAME = re.compile(rf"^{re.escape(_TEMP_PREFIX)}(\d+)-")


@cache
def _setpriv() -> str | None:
    """``setpriv`` if it exists here and accepts ``--pdeathsig`` (checked once per process)."""
    if not sys.platform.startswith("linux"):
        return None
    exe = shutil.which("setpriv")
    if exe is None:
        return None
    try:
        probe = subprocess.run([exe, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if probe.returncode == 0 else None


def tool_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that the program is killed when the process that started it dies (where possible).

    Example:
        >>> tool_argv(["ffmpeg", "-version"])[-2:]
        ['ffmpeg', '-version']
    """
    argv = [str(part) for part in argv]
    exe = _setpriv()
    return [exe, "--pdeathsig", "KILL", "--", *argv] if exe else argv


def run_tool(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, **kwargs)`` with the program tied to its parent's life (see :func:`tool_argv`).

    The caller keeps its own timeout and error handling; ``OSError`` and ``subprocess.TimeoutExpired`` pass
    through unchanged. ``argv`` must be a list (never a shell string).
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("run_tool takes an argv list, not a shell string")
    if _setpriv() is not None and not Path(str(argv[0])).exists() and shutil.which(str(argv[0])) is None:
        # setpriv would report a missing program as its own failure (exit 127): keep Python's clear OSError.
        raise FileNotFoundError(2, "No such file or directory", str(argv[0]))
    return subprocess.run(tool_argv(argv), **kwargs)


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to ``SIGKILL`` this process when its parent dies (Linux; elsewhere nothing happens).

    Call it first thing in a child (a pool initializer). With ``parent_pid``, a parent that died before the call
    is caught too: the process exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust the signal check
    return state not in ("Z", "X")


def remove_stale_tempdirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the :func:`private_tempdir` folders in ``root`` (default: the system's) whose owner is dead.

    Only this user's folders named by this module are touched. Returns the folders removed.
    """
    root = Path(root if root is not None else tempfile.gettempdir())
    removed: list[Path] = []
    if os.name != "posix":  # os.kill(pid, 0) is a real kill on Windows
        return removed
    try:
        candidates = list(root.glob(f"{_TEMP_PREFIX}*"))
    except OSError:
        return removed
    for folder in candidates:
        match = _TEMP_NAME.match(folder.name)
        if match is None or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            if folder.stat().st_uid != os.getuid():
                continue
        except (OSError, AttributeError):
            continue
        if not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def private_tempdir(prefix: str = "tmp") -> Iterator[str]:
    """A temporary folder (its path as ``str``), removed on exit; one left by a killed owner is removed later.

    Example:
        >>> with private_tempdir("codec") as tmp:
        ...     Path(tmp).name.startswith(f"rp-diffusers-{os.getpid()}-codec")
        True
    """
    remove_stale_tempdirs()
    with tempfile.TemporaryDirectory(prefix=f"{_TEMP_PREFIX}{os.getpid()}-{prefix}") as folder:
        yield folder
