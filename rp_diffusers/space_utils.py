"""The demo's non-UI logic: pick the model, read uploads within limits, compare "codec alone" with "rp + codec".

``space/app.py`` (the Gradio Space) is a thin layer over these functions, so they are tested without a browser.

Example:
    >>> from rp_diffusers.evaluation import EXAMPLES_DIR
    >>> from rp_diffusers.space_utils import compare, load_space_model, open_upload
    >>> model = load_space_model()  # RP_SPACE_MODEL, else the shipped compact model, else a tiny random one
    >>> image, note = open_upload(EXAMPLES_DIR / "chalet.png")
    >>> result = compare(model.pipe, image, "jpeg", quality=40)  # rp + codec at q=40, codec alone at its bpp
    >>> result.codec_alone.bpp <= result.rp.bpp, sorted(result.metrics["rp + codec"])[:2]
    (True, ['ms_ssim', 'psnr'])
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .codecs import CodecResult, get_codec
from .default_model import has_default_model, resolve_model
from .utils.image import ImageLoadError, load_image

logger = logging.getLogger(__name__)

SPACE_MODEL_ID = "rp-diffusers/rp-sd-turbo-compact"  # the published model the Space card links to
MODEL_ENV = "RP_SPACE_MODEL"
MAX_PIXELS = 4_000_000  # uploads above 4 megapixels are refused (CPU Space: seconds per megapixel)
MATCH_MODES = ("bpp", "quality", "target_bpp")
VARIANTS = ("codec alone", "rp + codec")
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"  # written next to the tiny random model so any page showing it says so
RANDOM_LABEL = "a tiny RANDOM model built in code (for tests and development: its outputs are noise)"

# The pipeline's adapter selection is state shared by every request: select-and-run must not interleave.
_PIPE_LOCK = threading.Lock()


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


def build_tiny_random_model(path: str | os.PathLike, seed: int = 0, adapters=(("jpeg", 0.5),)) -> Path:
    """Save a tiny RANDOM ``RPPreprocessPipeline`` (with random R-P adapters) to ``path``, for tests and dev.

    Args:
        path: folder to write (``RPPreprocessPipeline.from_pretrained(path)`` loads it).
        seed: seed of the weights.
        adapters: ``(codec, lambda)`` operating points to add as random rank-4 LoRA adapters.

    Returns:
        The folder as a ``Path``.
    """
    import torch

    from .adapters import format_adapter_name, rp_lora_config
    from .pipelines import RPPreprocessPipeline
    from .utils.testing import tiny_sd_components

    pipe = RPPreprocessPipeline(**tiny_sd_components(seed))
    for index, (codec, lam) in enumerate(adapters):
        torch.manual_seed(seed + 100 + index)
        pipe.load_lora_weights(
            _random_lora(pipe.unet, rp_lora_config(rank=4, init_lora_weights=False)),
            adapter_name=format_adapter_name(codec, lam),
        )
    pipe.save_pretrained(path)
    (Path(path) / RANDOM_MARKER).write_text("Random weights from rp_diffusers.space_utils.build_tiny_random_model.\n")
    return Path(path)


def _random_lora(unet, config) -> dict:
    """A random LoRA state dict in diffusers' format for ``unet`` (built on a throwaway peft copy)."""
    import copy

    from peft.utils import get_peft_model_state_dict

    scratch = copy.deepcopy(unet)
    scratch.add_adapter(config, adapter_name="scratch")
    layers = get_peft_model_state_dict(scratch, adapter_name="scratch")
    return {f"unet.{key}": value.detach().clone() for key, value in layers.items()}


def _load(source: str, random: bool = False):
    from .pipelines import RPPreprocessPipeline

    pipe = RPPreprocessPipeline.from_pretrained(source)
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


def adapter_choice_value(pipe, codec: str) -> str:
    """The adapter menu's value for ``codec``: the pipeline's policy (:meth:`adapter_for`) as a menu entry.

    An adapter name, :data:`NO_ADAPTER` (the base model) or :data:`NO_PREPROCESS` (the codec alone: no adapter of
    the model wins on this codec in validation).
    """
    choice = pipe.adapter_for(codec)
    if not choice.preprocess:
        return NO_PREPROCESS
    return choice.adapter or NO_ADAPTER


@dataclass
class Comparison:
    """One demo run: the original, the pre-processed image and both encodes, with their metrics.

    Attributes:
        original: the input (RGB).
        preprocessed: the pipeline's output (same size), before the codec.
        codec_alone: the codec's result on the original.
        rp: the codec's result on the pre-processed image.
        metrics: ``{"codec alone": {...}, "rp + codec": {...}}``, each metric name -> value against the ORIGINAL
            (``ms_ssim`` is absent for images under 161 px per side, network metrics when their weights are).
        match: how the rates were chosen (one of :data:`MATCH_MODES`).
        seconds: wall-clock seconds of the pre-processing, the encodes and the metrics.
    """

    original: Image.Image
    preprocessed: Image.Image
    codec_alone: CodecResult
    rp: CodecResult
    metrics: dict[str, dict[str, float]]
    match: str
    seconds: dict[str, float]

    def results(self) -> dict[str, CodecResult]:
        return dict(zip(VARIANTS, (self.codec_alone, self.rp)))


def preprocess(pipe, image: Image.Image, adapter_name: str | None = None, adapter_weight: float = 1.0) -> Image.Image:
    """Run the pipeline on one image with one adapter at ``adapter_weight`` in [0, 1] (``None``: base model).

    Thread-safe: the call scopes the adapter selection, but the selection lives on the UNet's layers while the
    call runs, so concurrent requests take turns.
    """
    if not 0.0 <= float(adapter_weight) <= 1.0:
        raise ValueError(f"the adapter strength must lie in [0, 1], got {adapter_weight}")
    with _PIPE_LOCK:
        if adapter_name:
            return pipe(image, adapter_name=adapter_name, adapter_weights=float(adapter_weight)).images[0]
        return pipe(image, adapter_name=[] if pipe.available_adapters() else None).images[0]


def compare(
    pipe,
    image: Image.Image,
    codec: str,
    *,
    quality: int | None = None,
    target_bpp: float | None = None,
    match: str = "bpp",
    adapter_name: str | None = None,
    adapter_weight: float = 1.0,
    metrics: tuple[str, ...] = ("psnr", "ms_ssim"),
    pre_process: bool = True,
) -> Comparison:
    """Encode the image with the codec alone and after rate-perception pre-processing, at a matched rate.

    Args:
        pipe: an :class:`~rp_diffusers.RPPreprocessPipeline`.
        image: RGB input (e.g. from :func:`open_upload`).
        codec: a name from ``available_codecs()``.
        quality: codec quality (higher = better); ``None`` uses the codec's default. Unused for ``"target_bpp"``.
        target_bpp: the rate budget for ``match="target_bpp"`` (bits per pixel of the original, > 0).
        match: ``"bpp"``: rp + codec at ``quality``, the codec alone at the highest quality within that bpp;
            ``"quality"``: both at ``quality``; ``"target_bpp"``: each at its highest quality within ``target_bpp``.
        adapter_name, adapter_weight: the R-P adapter and its strength in [0, 1] (``None``: the base model).
        metrics: metric names for ``compute_metrics`` (drop the ones whose weights are unavailable beforehand).
        pre_process: ``False``: no pre-processing ("rp + codec" is then the codec alone on the original, as
            ``--model default`` does for a codec none of whose adapters wins).

    Returns:
        :class:`Comparison`.

    Raises:
        ValueError: bad ``match``, quality, bpp or strength. ``CodecError``: the codec failed.
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    coder = get_codec(codec)
    if match == "target_bpp":
        if target_bpp is None or not 0 < float(target_bpp) <= 24:
            raise ValueError(f"the target bpp must lie in (0, 24] bits per pixel, got {target_bpp}")
    else:
        quality = coder.check_quality(quality)
    seconds = {}
    start = time.perf_counter()
    pre = preprocess(pipe, image, adapter_name, adapter_weight) if pre_process else image.copy()
    seconds["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    if match == "target_bpp":
        rp = coder.find_quality(pre, float(target_bpp))
        alone = coder.find_quality(image, float(target_bpp))
    else:
        rp = coder.run(pre, quality)
        alone = coder.run(image, quality) if match == "quality" else coder.find_quality(image, rp.bpp)
    seconds["codec"] = time.perf_counter() - start
    start = time.perf_counter()
    from .evaluation import measure

    scores = {
        variant: measure(image, result.reconstruction, metrics) for variant, result in zip(VARIANTS, (alone, rp))
    }
    seconds["metrics"] = time.perf_counter() - start
    return Comparison(image, pre, alone, rp, scores, match, seconds)


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
