"""Evaluation runs beyond one process: shards, their merge, and a journal that lets a killed run resume.

``rp-diffusers evaluate`` measures each curve image by image; the records of one image do not depend on the
others (the codec, the metrics and the pre-processing are per image), so a run splits by image and joins back
exactly:

- :func:`shard_indices` gives shard ``I`` of ``N`` its images (every ``N``-th, from ``I``);
- :func:`merge_curves` joins the shards' (or the journal's) records of one curve into the curve a one-process
  run writes: same records in the same order, the meta of the whole set (timings and dates aside);
- :class:`Journal` keeps each image's records in ``<output>/.partial/`` as soon as they are final, so a killed
  run continues from the images already measured (``--resume``) and the results files appear only at the end.

Example:
    >>> shard_indices(5, 1, 2)
    [1, 3]
    >>> parse_shard("0/2")
    (0, 2)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .results import EvaluationResult

__all__ = ["PARTIAL_DIR", "Journal", "ShardError", "merge_curves", "parse_shard", "shard_indices", "read_shards"]

PARTIAL_DIR = ".partial"
RUN_FILE = "run.json"


class ShardError(ValueError):
    """Shards that do not make up one run (missing, repeated, or from different settings)."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``, or ``ValueError`` saying what is expected."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N (shard I of N, counted from 0), e.g. 0/4; got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: needs N >= 1 and 0 <= I < N (shards 0/{max(count, 1)} ...)")
    return index, count


def shard_indices(total: int, index: int, count: int) -> list[int]:
    """The image positions of shard ``index`` of ``count`` among ``total`` images (every ``count``-th)."""
    return list(range(index, total, count))


def merge_curves(parts: list[dict], images: list[str]) -> dict:
    """Join the pieces of one curve (results dicts of disjoint image sets) into the curve of all ``images``.

    Args:
        parts: ``EvaluationResult.to_dict()`` outputs of the same curve and settings, on disjoint images.
        images: every image name, in the order of the one-process run; each must be in exactly one part.

    Returns:
        The results dict a one-process run over ``images`` writes: records in image order, ``meta.images`` and
        ``meta.num_images`` of the whole set; the pre-processing time is the per-image mean over the parts and the
        date the latest part's.

    Raises:
        ShardError: the parts disagree on the curve or its settings, or do not cover ``images`` exactly once.
    """
    if not parts:
        raise ShardError("nothing to merge")
    first = parts[0]
    same = ("codec", "codec_settings", "codec_step", "qualities", "metrics")
    for part in parts[1:]:
        if part["name"] != first["name"] or any(part["meta"].get(k) != first["meta"].get(k) for k in same):
            raise ShardError(f"curve {first['name']!r}: its pieces were measured with different settings")
    by_image: dict[str, list[dict]] = {}
    for part in parts:
        for record in part["per_image"]:
            by_image.setdefault(record["image"], []).append(record)
    owners = {}
    for part_index, part in enumerate(parts):
        for name in dict.fromkeys(r["image"] for r in part["per_image"]):
            if name in owners:
                raise ShardError(f"curve {first['name']!r}: image {name!r} is in two pieces")
            owners[name] = part_index
    missing = [name for name in images if name not in by_image]
    extra = sorted(set(by_image) - set(images))
    if missing or extra:
        raise ShardError(
            f"curve {first['name']!r}: the pieces " + (f"lack {missing[:5]}" if missing else f"add {extra[:5]}")
        )
    records = [record for name in images for record in by_image[name]]
    counted = [(p["meta"].get("num_images", 0), p["meta"].get("preprocess_seconds_per_image", 0.0)) for p in parts]
    seconds = sum(n * s for n, s in counted) / max(1, sum(n for n, _ in counted))
    meta = {key: value for key, value in first["meta"].items() if key != "shard"}
    meta.update(num_images=len(images), images=list(images), preprocess_seconds_per_image=seconds)
    meta["date"] = max(str(p["meta"].get("date", "")) for p in parts)
    result = EvaluationResult(first["name"], first["description"], records, meta)
    return result.to_dict()


def read_shards(folders: list[Path]) -> tuple[list[dict], dict]:
    """The merged curves of the shard folders ``evaluate --shard I/N`` wrote, and the run's plan.

    Returns:
        ``(curves, plan)``: one merged results dict per curve in the run's order, and ``plan`` with ``curves``
        (names), ``anchor`` and ``images`` (every image, in order).

    Raises:
        ShardError: a folder holds no shard, shards are missing or repeated, or come from different runs.
    """
    pieces: dict[int, dict[str, dict]] = {}
    plans = {}
    for folder in map(Path, folders):
        found = 0
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, ValueError):
                continue
            shard = data.get("meta", {}).get("shard") if isinstance(data, dict) else None
            if not isinstance(shard, dict):
                continue
            found += 1
            index = int(shard["index"])
            if data["name"] in pieces.setdefault(index, {}):
                raise ShardError(f"shard {index}/{shard['count']} of curve {data['name']!r} is given twice")
            pieces[index][data["name"]] = data
            plans[index] = {k: shard[k] for k in ("count", "curves", "anchor", "images")}
        if not found:
            raise ShardError(f"{folder} holds no shard results (written by `rp-diffusers evaluate --shard I/N`)")
    plan = next(iter(plans.values()))
    if any(p != plan for p in plans.values()):
        raise ShardError("the shards come from different runs (their curves, images or shard counts differ)")
    missing = [i for i in range(plan["count"]) if i not in pieces]
    if missing:
        count = plan["count"]
        raise ShardError(f"shards {', '.join(f'{i}/{count}' for i in missing)} are missing")
    curves = []
    for name in plan["curves"]:
        lacking = [i for i in range(plan["count"]) if name not in pieces[i]]
        if lacking:
            raise ShardError(f"curve {name!r} is missing from shard(s) {lacking}")
        curves.append(merge_curves([pieces[i][name] for i in range(plan["count"])], plan["images"]))
    return curves, plan


class Journal:
    """Per-image records of a run in progress, in ``<output>/.partial/``: what ``--resume`` continues from.

    ``run.json`` holds the run's settings (a resumed run must have the same), ``<curve>.jsonl`` one line per
    measured image (``{"image": name, "records": [...]}``, appended and flushed as each image finishes). A line
    cut by a kill is ignored on resume (that image is measured again).
    """

    def __init__(self, output: Path, settings: dict, *, resume: bool, overwrite: bool):
        self.folder = Path(output) / PARTIAL_DIR
        run_file = self.folder / RUN_FILE
        if self.folder.exists():
            if resume:
                try:
                    earlier = json.loads(run_file.read_text())
                except (OSError, ValueError):
                    earlier = None
                if earlier != json.loads(json.dumps(settings)):
                    raise ValueError(
                        f"{self.folder} is a run with other settings (codecs, qualities, metrics, model or images); "
                        "resume with the same command, or pass --overwrite to start again"
                    )
            elif overwrite:
                shutil.rmtree(self.folder)
            else:
                self.check(output, resume, overwrite)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not run_file.exists():
            run_file.write_text(json.dumps(settings, indent=1) + "\n")

    @staticmethod
    def check(output: Path, resume: bool, overwrite: bool) -> None:
        """Refuse (``FileExistsError``) to start a new run over an unfinished one unless told what to do with it."""
        folder = Path(output) / PARTIAL_DIR
        if folder.exists() and not resume and not overwrite:
            raise FileExistsError(
                f"{output} holds an unfinished run ({folder}); pass --resume to continue it with the same command, "
                "or --overwrite to discard it"
            )

    def _path(self, curve: str) -> Path:
        return self.folder / f"{curve.replace('/', '_')}.jsonl"

    def done(self, curve: str) -> dict[str, list[dict]]:
        """The records journaled for ``curve``, by image name (complete lines only)."""
        found: dict[str, list[dict]] = {}
        path = self._path(curve)
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the line a kill cut short
                found[entry["image"]] = entry["records"]
        return found

    def append(self, curve: str, image: str, records: list[dict]) -> None:
        with open(self._path(curve), "a") as handle:
            handle.write(json.dumps({"image": image, "records": records}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def save_meta(self, curve: str, data: dict) -> None:
        """Keep a finished piece's name, description and meta (its records are in the journal)."""
        meta_path = self.folder / f"{curve.replace('/', '_')}.meta.jsonl"
        piece = {k: data[k] for k in ("name", "description", "meta")}
        with open(meta_path, "a") as handle:
            handle.write(json.dumps(piece) + "\n")

    def pieces(self, curve: str) -> list[dict]:
        """The finished pieces' headers of ``curve`` (one per run that measured some of its images)."""
        meta_path = self.folder / f"{curve.replace('/', '_')}.meta.jsonl"
        if not meta_path.exists():
            return []
        pieces = []
        for line in meta_path.read_text().splitlines():
            try:
                pieces.append(json.loads(line))
            except ValueError:
                continue
        return pieces

    def curve(self, curve: str, images: list[str]) -> dict:
        """The whole curve from the journal: every image's records, in ``images`` order, under the latest piece's
        header (the pre-processing time is the per-image mean over the pieces that finished)."""
        done, pieces = self.done(curve), self.pieces(curve)
        if not pieces:
            raise ShardError(f"curve {curve!r}: no finished piece in {self.folder}")
        timed = [(p["meta"]["num_images"], p["meta"].get("preprocess_seconds_per_image", 0.0)) for p in pieces]
        header = pieces[-1]
        meta = {**header["meta"], "num_images": len(images), "images": list(images)}
        meta["preprocess_seconds_per_image"] = sum(n * s for n, s in timed) / max(1, sum(n for n, _ in timed))
        part = {**header, "meta": meta, "per_image": [r for name in images for r in done.get(name, [])]}
        return merge_curves([part], images)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
