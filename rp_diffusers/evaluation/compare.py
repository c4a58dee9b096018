"""One image, two files: the codec alone and rate-perception pre-processing + the same codec, at a matched rate.

:func:`compare` is the single-image form of the main job (``evaluate`` sweeps qualities over folders): it runs the
pipeline with one adapter (or none), encodes both images with the real codec, matches the rates as asked, and
measures both decodes against the original with :func:`~rp_diffusers.evaluation.measure`. The Gradio Space shows
exactly this. Its two steps after the pre-processing, :func:`encode_pair` (the rate matching) and
:func:`measure_pair`, are the one alone-vs-rp measurement that ``rp-diffusers compress``, training validation and
the benchmarks reuse.

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

import time
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from ..codecs import Codec, CodecResult, get_codec

__all__ = ["MATCH_MODES", "VARIANTS", "Comparison", "compare", "encode_pair", "measure_pair", "preprocess"]

MATCH_MODES = ("bpp", "quality", "target_bpp", "bpp_or_more")
VARIANTS = ("codec alone", "rp + codec")


@dataclass
class Comparison:
    """One demo run: the original, the pre-processed image and both encodes, with their metrics.

    Attributes:
        original: the input (RGB).
        preprocessed: what the codec of rp + codec encoded (same size): the pipeline's output, after the codec
            step at rp + codec's quality where there is one.
        codec_alone: the codec's result on the original.
        rp: the codec's result on the pre-processed image.
        metrics: ``{"codec alone": {...}, "rp + codec": {...}}``, each results key (CompressAI's: ``psnr-rgb``,
            ``ms-ssim-rgb``, ``ssimulacra2``, ...) -> value against the ORIGINAL (``ms-ssim-rgb`` is absent for
            images under 161 px per side, network metrics when their weights are).
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

    Thread-safe: the call scopes the adapter selection and holds the pipeline's ``adapter_lock`` while it runs, so
    concurrent requests take turns.
    """
    if not 0.0 <= float(adapter_weight) <= 1.0:
        raise ValueError(f"the adapter strength must lie in [0, 1], got {adapter_weight}")
    if adapter_name:
        return pipe(image, adapter_name=adapter_name, adapter_weights=float(adapter_weight)).images[0]
    return pipe(image, adapter_name=[] if pipe.available_adapters() else None).images[0]


def _check_match(coder: Codec, match: str, quality: int | None, target_bpp: float | None) -> int | None:
    """The checked quality (``None`` for ``"target_bpp"``), or ``ValueError`` for a bad mode, quality or budget."""
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    if match == "target_bpp":
        if target_bpp is None or not 0 < float(target_bpp) <= 24:
            raise ValueError(f"the target bpp must lie in (0, 24] bits per pixel, got {target_bpp}")
        return None
    return coder.check_quality(quality)


def encode_pair(
    coder: Codec | str,
    image: Image.Image,
    pre: Image.Image | None,
    *,
    quality: int | None = None,
    target_bpp: float | None = None,
    match: str = "bpp",
    codec_step=None,
) -> tuple[CodecResult, CodecResult | None]:
    """Encode the original (codec alone) and the pre-processed image (rp + codec) with the real codec, at a rate
    matched as asked: the one place the rates of the two variants are chosen.

    Args:
        coder: a ``Codec`` (``get_codec(name)``) or its name.
        image: the original (RGB); every rate is in bits per pixel of its pixels.
        pre: the pre-processed image, same size; ``None``: the codec alone only (modes ``"quality"`` and
            ``"target_bpp"``, which need no rp + codec rate).
        quality: codec quality (higher = better); ``None`` uses the codec's default. Unused for ``"target_bpp"``.
        target_bpp: the rate budget for ``match="target_bpp"`` (bits per pixel, in (0, 24]).
        match: ``"bpp"``: rp + codec at ``quality``, the codec alone at the highest quality within that bpp;
            ``"bpp_or_more"``: the same, but the codec alone at the lowest quality whose file is at least as large
            (it never has fewer bits than rp + codec); ``"quality"``: both at ``quality``; ``"target_bpp"``: each
            at its highest quality within ``target_bpp``.
        codec_step: a quality-aware step (``rp_diffusers.codecs.prequantize``) run on ``pre`` just before the
            encoder, at the quality rp + codec is encoded at; the codec alone never gets it.

    Returns:
        ``(codec_alone, rp)``: the two ``CodecResult`` (``rp`` is ``None`` when ``pre`` is).

    Raises:
        ValueError: bad ``match``, quality or bpp, or ``pre=None`` with a mode that matches rp + codec's rate.
        CodecError: the codec failed.

    Example:
        >>> from PIL import Image
        >>> image = Image.effect_noise((64, 48), 40).convert("RGB")
        >>> alone, rp = encode_pair("jpeg", image, image.resize((16, 12)).resize((64, 48)), quality=50)
        >>> rp.quality == 50 and alone.bpp <= rp.bpp
        True
    """
    from ..codecs.prequantize import with_codec_step

    coder = get_codec(coder) if isinstance(coder, str) else coder
    quality = _check_match(coder, match, quality, target_bpp)
    if pre is None and match in ("bpp", "bpp_or_more"):
        raise ValueError(f"match={match!r} matches the rate of rp + codec: give the pre-processed image")
    rp_coder = with_codec_step(coder, codec_step)
    if match == "target_bpp":
        rp = rp_coder.find_quality(pre, float(target_bpp)) if pre is not None else None
        return coder.find_quality(image, float(target_bpp)), rp
    rp = rp_coder.run(pre, quality) if pre is not None else None
    if match == "quality":
        return coder.run(image, quality), rp
    alone = coder.find_quality(image, rp.bpp)
    if match == "bpp_or_more" and alone.bpp < rp.bpp and alone.quality < coder.quality_range[1]:
        alone = coder.run(image, alone.quality + 1)  # the next quality up is the first above rp + codec's rate
    return alone, rp


def measure_pair(
    image: Image.Image,
    pair: tuple[CodecResult, CodecResult | None],
    metrics: Sequence[str],
    *,
    models: dict | None = None,
) -> dict[str, dict[str, float]]:
    """The metrics of both decodes of :func:`encode_pair` against the original, under CompressAI's results keys.

    Args:
        image: the original (RGB), the reference of every metric.
        pair: ``(codec_alone, rp)`` from :func:`encode_pair` (``rp`` may be ``None``: left out).
        metrics: metric names for :func:`~rp_diffusers.evaluation.measure`.
        models: ready LPIPS / DISTS networks by name.

    Returns:
        ``{"codec alone": {"psnr-rgb": ..., ...}, "rp + codec": {...}}``.
    """
    from .sweep import measure

    return {
        variant: measure(image, result.reconstruction, metrics, models=models, result_keys=True)
        for variant, result in zip(VARIANTS, pair)
        if result is not None
    }


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
    codec_step=None,
) -> Comparison:
    """Encode the image with the codec alone and after rate-perception pre-processing, at a matched rate.

    Args:
        pipe: an :class:`~rp_diffusers.RPPreprocessPipeline`.
        image: RGB input (e.g. from :func:`open_upload`).
        codec: a name from ``available_codecs()``.
        quality: codec quality (higher = better); ``None`` uses the codec's default. Unused for ``"target_bpp"``.
        target_bpp: the rate budget for ``match="target_bpp"`` (bits per pixel of the original, > 0).
        match: one of :data:`MATCH_MODES`, as in :func:`encode_pair` (``"bpp"``: rp + codec at ``quality``, the
            codec alone at the highest quality within that bpp; ``"quality"``: both at ``quality``;
            ``"target_bpp"``: each at its highest quality within ``target_bpp``).
        adapter_name, adapter_weight: the R-P adapter and its strength in [0, 1] (``None``: the base model).
        metrics: metric names for ``compute_metrics`` (drop the ones whose weights are unavailable beforehand);
            :attr:`Comparison.metrics` holds them under CompressAI's results keys (``psnr`` -> ``psnr-rgb``).
        pre_process: ``False``: no network ("rp + codec" is then the codec alone on the original, or the codec
            step alone where ``codec_step`` is given, as ``--model default`` does for a codec no network wins on).
        codec_step: a quality-aware step run before the encoder of rp + codec only (``AdapterChoice.codec_step``);
            :attr:`Comparison.preprocessed` is then what that encoder got. ``None`` (the default): no step, even
            where the model's policy would run one; pass ``pipe.adapter_for(codec).codec_step`` to follow it.

    Returns:
        :class:`Comparison`.

    Raises:
        ValueError: bad ``match``, quality, bpp or strength. ``CodecError``: the codec failed.
    """
    coder = get_codec(codec)
    _check_match(coder, match, quality, target_bpp)  # before the pre-processing, the slow part
    seconds = {}
    start = time.perf_counter()
    pre = preprocess(pipe, image, adapter_name, adapter_weight) if pre_process else image.copy()
    seconds["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    alone, rp = encode_pair(
        coder, image, pre, quality=quality, target_bpp=target_bpp, match=match, codec_step=codec_step
    )
    seconds["codec"] = time.perf_counter() - start
    if codec_step is not None:
        pre = codec_step(pre, rp.quality)  # what the encoder of rp + codec got
    start = time.perf_counter()
    scores = measure_pair(image, (alone, rp), metrics)
    seconds["metrics"] = time.perf_counter() - start
    return Comparison(image, pre, alone, rp, scores, match, seconds)
