"""Files a command writes: planned together, refused before anything is written when they clash, published whole.

- :func:`check_outputs` refuses, up front, two outputs with one name, an output that is an input, and (without
  ``overwrite``) existing files;
- :func:`atomic_path` / :func:`write_atomic` write next to the target and publish the finished file in one step,
  so a killed run never leaves half a file under the final name; without ``overwrite`` a file that appeared
  meanwhile (a parallel run) is left alone;
- :func:`write_json` writes strict JSON that way (:func:`json_safe`: NaN and infinities become ``null``).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "check_outputs", "json_safe", "write_atomic", "write_json"]


def check_outputs(planned: Sequence[tuple[str, Path]], inputs: Sequence[Path], overwrite: bool, flag: str = "--out"):
    """Refuse, before anything is written, outputs that would clash: the checks every writing command shares.

    Args:
        planned: ``(what writes it, target path)`` for every file the command will write.
        inputs: the command's input files; no target may be one of them, even with ``overwrite``.
        overwrite: allow replacing existing files (the ``--overwrite`` flag).
        flag: the option naming the output place, for the messages.

    Raises:
        ValueError: two outputs share a path (compared ignoring case: they clash on macOS and Windows), or an
            output is an input.
        FileExistsError: a target exists and ``overwrite`` is off; the message names the files.
    """
    seen: dict[str, str] = {}
    for source, target in planned:
        key = os.path.abspath(target).lower()
        if key in seen:
            raise ValueError(
                f"{seen[key]} and {source} would both write {target}; give each input once and inputs distinct "
                f"names apart from the extension (rename one, or run them separately with another {flag})"
            )
        seen[key] = source
    sources = {Path(path).resolve() for path in inputs}
    for _, target in planned:
        if Path(target).resolve() in sources:
            raise ValueError(f"{target} would overwrite its input; choose another {flag}")
    existing = [str(target) for _, target in planned if Path(target).exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise FileExistsError(
            f"{shown} already exist{'s' if len(existing) == 1 else ''}; pass --overwrite to replace "
            f"{'it' if len(existing) == 1 else 'them'}, or choose another {flag}"
        )


@contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """A fresh temporary path next to ``target`` (same suffix) that becomes ``target`` when the block succeeds.

    A run killed or failing inside the block leaves ``target`` as it was (missing, or the earlier file), never
    half written; the temporary file is removed on errors. With ``overwrite=False`` the file is published with a
    hard link, which fails if ``target`` exists: a file that appeared meanwhile (another run writing into the
    same folder) is never replaced, and ``FileExistsError`` says so.

    Example:
        >>> with atomic_path("out/a.png") as tmp:  # doctest: +SKIP
        ...     image.save(tmp, format="PNG")
    """
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial{target.suffix}")
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # 0o666: the umask applies
    try:
        yield temporary
        if overwrite:
            os.replace(temporary, target)
        else:
            _publish_new(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _publish_new(temporary: Path, target: Path) -> None:
    """Move ``temporary`` to ``target`` only if ``target`` does not exist (atomic where hard links work)."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise FileExistsError(
            f"{target} appeared while this run was writing it (another run writing into the same folder?); it was "
            "left as it is: pass --overwrite to replace it, or give each run its own output folder"
        ) from None
    except OSError:  # no hard links on this file system: the next best check
        if target.exists():
            raise FileExistsError(f"{target} appeared while this run was writing it; it was left as it is") from None
        os.replace(temporary, target)
        return
    temporary.unlink()


def write_atomic(target: str | os.PathLike, data: bytes | str, overwrite: bool = True) -> Path:
    """Write ``data`` to ``target`` through :func:`atomic_path` (flushed to disk before it is published)."""
    with atomic_path(target, overwrite) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(target)


def json_safe(value):
    """``value`` with every NaN or infinite float replaced by ``None``: strict JSON (``null``) for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json(target: str | os.PathLike, value, overwrite: bool = True, sort_keys: bool = False) -> Path:
    """``value`` as strict, indented JSON (NaN and infinities as ``null``), written with :func:`write_atomic`."""
    text = json.dumps(json_safe(value), indent=2, allow_nan=False, sort_keys=sort_keys) + "\n"
    return write_atomic(target, text, overwrite)
