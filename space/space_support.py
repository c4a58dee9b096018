"""The Space's non-UI logic: pick the model, read uploads within limits, name and write the two files.

``app.py`` (the Gradio page) is a thin layer over these functions and over
:func:`rp_diffusers.evaluation.compare.compare`, so they are tested without a browser (``tests/test_space.py``).
This file travels with ``app.py``; it is not part of the installed package.

Example:
    >>> from rp_diffusers.evaluation import EXAMPLES_DIR
    >>> from rp_diffusers.evaluation.compare import compare
    >>> from space_support import load_space_model, open_upload
    >>> model = load_space_model()  # RP_SPACE_MODEL, else the shipped compact model, else a tiny random one
    >>> image, note = open_upload(EXAMPLES_DIR / "chalet.png")
    >>> result = compare(model.pipe, image, "jpeg", quality=40)  # rp + codec at q=40, codec alone at its bpp
    >>> result.codec_alone.bpp <= result.rp.bpp, "psnr-rgb" in result.metrics["rp + codec"]  # CompressAI's keys
    (True, True)
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from rp_diffusers.default_model import has_default_model, resolve_model
from rp_diffusers.evaluation.compare import Comparison
from rp_diffusers.pipelines.testing import RANDOM_MARKER, build_tiny_random_model
from rp_diffusers.utils.image import ImageLoadError, load_image

logger = logging.getLogger(__name__)

SPACE_MODEL_ID = "rp-diffusers/rp-sd-turbo-compact"  # the published model the Space card links to
MODEL_ENV = "RP_SPACE_MODEL"
MAX_PIXELS = 4_000_000  # uploads above 4 megapixels are refused (CPU Space: seconds per megapixel)
RANDOM_LABEL = "a tiny RANDOM model built in code (for tests and development: its outputs are noise)"


@dataclass
class SpaceModel:
    """The pipeline the demo runs and what to tell users about it.

    Attributes:
        pipe: the loaded :class:`~rp_diffusers.RPPreprocessPipeline` (CPU, float32).
        source: the folder or Hub id it came from.
        label: one line for the page's banner.
        is_random: ``True`` for the tiny random test model (its outputs mean nothing).
        notes: the models tried before this one and why they failed.
    """

    pipe: object
    source: str
    label: str
    is_random: bool = False
    notes: list[str] = field(default_factory=list)


def _load(source: str, random: bool = False):
    from rp_diffusers.default_model import load_preprocessor

    pipe = load_preprocessor(source, "cpu")
    pipe.set_progress_bar_config(disable=True)
    if random:  # the tiny VAE downsamples only 2x: whole-image attention on 1000s of tokens; small tiles are 3x faster
        pipe.enable_tiling(tile_size=128, overlap=32)
    return pipe


def load_space_model(model: str | None = None) -> SpaceModel:
    """Load the demo's model: ``model`` or ``$RP_SPACE_MODEL``, else the shipped compact model, else the published
    Hub model (online only), else a tiny random model built in code (labelled as such).

    Args:
        model: a folder or Hub id; ``None`` reads ``$RP_SPACE_MODEL`` (unset or empty: skip this step).

    Returns:
        :class:`SpaceModel`; ``notes`` says why earlier choices were skipped.
    """
    model = model or os.environ.get(MODEL_ENV) or None
    candidates: list[tuple[str, str]] = []
    if model:
        candidates.append((model, f"`{model}`"))
    if has_default_model():
        candidates.append((resolve_model("default"), "the compact model shipped with rp-diffusers"))
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on") and model != SPACE_MODEL_ID:
        candidates.append((SPACE_MODEL_ID, f"`{SPACE_MODEL_ID}` from the Hugging Face Hub"))
    notes = []
    for source, label in candidates:
        try:
            random = (Path(source) / RANDOM_MARKER).is_file()
            pipe = _load(source, random)
            if random:
                return SpaceModel(pipe, source, f"{label}, {RANDOM_LABEL}", is_random=True, notes=notes)
            return SpaceModel(pipe, source, label, notes=notes)
        except Exception as error:  # any failure: say so on the page and try the next model
            logger.warning("cannot load %s: %s", source, error)
            notes.append(f"{label} could not be loaded ({type(error).__name__}: {str(error)[:200]})")
    folder = Path(tempfile.mkdtemp(prefix="rp-space-tiny-"))
    atexit.register(shutil.rmtree, folder, True)
    build_tiny_random_model(folder)
    return SpaceModel(_load(str(folder), True), str(folder), RANDOM_LABEL, is_random=True, notes=notes)


_CONVERSIONS = {
    "RGBA": "its transparency was composited onto white",
    "LA": "it is grayscale with transparency: composited onto white, then replicated to RGB",
    "L": "it is grayscale: replicated to 3 channels (the codecs code RGB)",
    "1": "it is black and white: converted to RGB",
    "P": "it is a palette image: converted to RGB",
    "I;16": "it is 16-bit grayscale: scaled to 8 bits and replicated to RGB",
    "I": "it is 16/32-bit grayscale: scaled to 8 bits and replicated to RGB",
    "F": "it is floating-point grayscale: scaled to 8 bits and replicated to RGB",
    "CMYK": "it is CMYK: converted to RGB",
}


def open_upload(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> tuple[Image.Image, str | None]:
    """Read an uploaded file as 8-bit RGB within the demo's pixel limit (decoding through ``load_image``).

    Args:
        path: the uploaded file.
        max_pixels: refuse larger images (``None``: no limit).

    Returns:
        ``(image, note)``: the RGB image and a sentence on how its mode was converted (``None`` for plain RGB).

    Raises:
        ImageLoadError: corrupt, truncated, empty or oversized files; the message is meant for the user.
    """
    name = Path(path).name
    try:  # header only: the size and mode, before anything is decoded
        with Image.open(path) as probe:
            (width, height), mode = probe.size, probe.mode
            transparent = mode == "P" and "transparency" in probe.info
    except Exception:  # unreadable: load_image below says why
        width = height = 0
        mode, transparent = None, False
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels; this demo takes images up to "
            f"{max_pixels / 1e6:.1f} megapixels: crop or downscale it, or run rp-diffusers on your own machine"
        )
    try:
        image = load_image(path, max_pixels=max_pixels)
    except ImageLoadError as error:
        raise ImageLoadError(str(error).replace(str(path), name)) from error
    if transparent:
        return image, "its transparent palette entries were composited onto white"
    return image, _CONVERSIONS.get("I;16" if mode and mode.startswith("I;16") else mode)


NO_ADAPTER = "none"  # the adapter menu's entry for the base one-step model
NO_PREPROCESS = "codec-alone"  # ... and for no pre-processing at all
NO_NETWORK = "codec-step"  # ... and for the model's codec step alone (e.g. the JPEG dead zone), no network


def adapter_choice_value(pipe, codec: str) -> str:
    """The adapter menu's value for ``codec``: the pipeline's policy (:meth:`adapter_for`) as a menu entry.

    An adapter name, :data:`NO_ADAPTER` (the base model), :data:`NO_NETWORK` (no network, the model's validated
    codec step only) or :data:`NO_PREPROCESS` (the codec alone: nothing of the model wins on this codec in
    validation). A codec step runs with every entry but the last.
    """
    choice = pipe.adapter_for(codec)
    if choice.codec_alone:
        return NO_PREPROCESS
    if not choice.preprocess:
        return NO_NETWORK
    return choice.adapter or NO_ADAPTER


def safe_stem(path: str | os.PathLike | None, default: str = "image") -> str:
    """A file-name stem safe for downloads: the upload's stem, letters/digits/._- only, at most 60 characters."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem if path else "")[:60].strip("._")
    return stem or default


def write_files(comparison: Comparison, folder: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """Write the two bitstreams as ordinary files: ``STEM.EXT`` (codec alone) and ``STEM.rp.EXT`` (rp + codec)."""
    folder = Path(folder)
    paths = (folder / f"{stem}{comparison.codec_alone.extension}", folder / f"{stem}.rp{comparison.rp.extension}")
    for path, result in zip(paths, (comparison.codec_alone, comparison.rp)):
        path.write_bytes(result.data)
    return paths


class RequestFolders:
    """Per-request temporary folders under one root, removed once older than ``max_age`` seconds and at exit.

    Gradio copies returned files into its own cache (cleaned by ``delete_cache``) right after the handler returns,
    so a request's folder is only needed for seconds; stale ones are purged whenever a new one is made.
    """

    def __init__(self, max_age: float = 300.0, root: str | os.PathLike | None = None):
        self.max_age = float(max_age)
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="rp-space-requests-"))
        self.root.mkdir(parents=True, exist_ok=True)
        atexit.register(shutil.rmtree, self.root, True)

    def new(self) -> Path:
        """Purge stale folders, then make and return a fresh one."""
        self.purge()
        return Path(tempfile.mkdtemp(prefix="request-", dir=self.root))

    def purge(self, max_age: float | None = None) -> int:
        """Remove folders older than ``max_age`` seconds (default: ``self.max_age``); return how many."""
        limit = time.time() - (self.max_age if max_age is None else max_age)
        removed = 0
        for folder in self.root.glob("request-*"):
            try:
                if folder.stat().st_mtime < limit:
                    shutil.rmtree(folder)
                    removed += 1
            except FileNotFoundError:  # a concurrent purge got there first
                continue
        return removed
