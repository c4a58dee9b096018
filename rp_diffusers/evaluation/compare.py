"""One image, two files: the codec alone and rate-perception pre-processing + the same codec, at a matched rate.

:func:`compare` is the single-image form of the main job (``evaluate`` sweeps qualities over folders): it runs the
pipeline with one adapter (or none), encodes both images with the real codec, matches the rates as asked, and
measures both decodes against the original with :func:`~rp_diffusers.evaluation.measure`. The Gradio Space shows
exactly this.

Example:
    >>> from rp_diffusers.evaluation import EXAMPLES_DIR
    >>> from rp_diffusers.evaluation.compare import compare
    >>> from rp_diffusers.default_model import load_preprocessor
    >>> from rp_diffusers.utils import load_image
    >>> pipe = load_preprocessor("default")  # doctest: +SKIP
    >>> image = load_image(EXAMPLES_DIR / "chalet.png")
    >>> result = compare(pipe, image, "jpeg", quality=40)  # doctest: +SKIP
    >>> result.codec_alone.bpp <= result.rp.bpp  # doctest: +SKIP
    True
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from PIL import Image

from ..codecs import CodecResult, get_codec

__all__ = ["MATCH_MODES", "VARIANTS", "Comparison", "compare", "preprocess"]

MATCH_MODES = ("bpp", "quality", "target_bpp")
VARIANTS = ("codec alone", "rp + codec")

# The adapter selection of a call lives on the UNet's layers while it runs: concurrent calls take turns.
_PIPE_LOCK = threading.Lock()


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
    from .sweep import measure

    scores = {
        variant: measure(image, result.reconstruction, metrics) for variant, result in zip(VARIANTS, (alone, rp))
    }
    seconds["metrics"] = time.perf_counter() - start
    return Comparison(image, pre, alone, rp, scores, match, seconds)
