"""R-D sweeps: every image at every quality through a real codec (optionally pre-processed or enhanced)."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..utils.assets import ASSETS_DIR
from ..utils.image import list_images, load_image, pil_to_tensor
from ..utils.processes import die_with_parent
from .results import RESULT_KEYS, EvaluationResult

logger = logging.getLogger(__name__)

EXAMPLES_DIR = ASSETS_DIR / "examples"

# Per-process caches: a worker builds its codec and metric networks once, not once per image.
_WORKER_STATE: dict = {}


def parse_qualities(spec: str | Sequence[float]) -> list[float]:
    """``"10,20,30"`` or ``"10:90:10"`` (start:stop:step, stop included) -> sorted unique qualities."""
    if not isinstance(spec, str):
        return sorted({float(q) for q in spec})
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = [float(p) for p in spec.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            values = [start + i * step for i in range(count)]
        else:
            values = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ValueError(
            f"cannot read qualities {spec!r}: use a list like 10,20,30 or a range like 10:90:10"
        ) from None
    if not values:
        raise ValueError("no qualities given")
    return sorted({int(v) if float(v).is_integer() else v for v in values})


def parse_metrics(spec: str | Sequence[str]) -> list[str]:
    """``"psnr,ms_ssim"`` or a list -> metric names, ``"default"`` expanded to
    :func:`rp_diffusers.metrics.default_metrics`; repeated names once.

    Example:
        >>> parse_metrics("psnr, ssimulacra2,psnr")
        ['psnr', 'ssimulacra2']
    """
    from ..metrics import default_metrics

    names = [name.strip() for name in spec.split(",")] if isinstance(spec, str) else list(spec)
    expanded = [m for name in names if name for m in (default_metrics() if name == "default" else (name,))]
    if not expanded:
        raise ValueError("no metrics given: name some (e.g. psnr,ssimulacra2) or 'default'")
    return list(dict.fromkeys(expanded))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return pil_to_tensor(image)  # any mode (L, P, RGBA, I;16) -> (1, 3, H, W) RGB in [0, 1]


def measure(
    reference: Image.Image,
    distorted: Image.Image,
    metrics: Sequence[str],
    *,
    models: dict | None = None,
    result_keys: bool = False,
) -> dict[str, float]:
    """Full-reference metrics of one image pair: the one measurement every entry point uses (the sweep,
    ``compress``, the Space and training validation).

    Args:
        reference, distorted: RGB images of one size (the original and what a decoder returned).
        metrics: names of :data:`rp_diffusers.metrics.AVAILABLE_METRICS`. Those undefined at this size (MS-SSIM
            under 161 px a side) are left out; those whose tool or weights are missing, with a warning.
        models: ready LPIPS / DISTS networks by name (see :func:`rp_diffusers.metrics.compute_metrics`).
        result_keys: key the values as CompressAI's results files do (``psnr-rgb``, ``ms-ssim-rgb``, ...).

    Returns:
        `dict[str, float]`: one value per metric computed.

    Example:
        >>> from PIL import Image
        >>> image = Image.new("RGB", (200, 180), "gray")
        >>> measure(image, image, ["psnr", "ms_ssim", "ssimulacra2"], result_keys=True)
        {'psnr-rgb': inf, 'ms-ssim-rgb': 1.0, 'ssimulacra2': 100.0}
    """
    from ..metrics import compute_metrics

    if reference.size != distorted.size:
        raise ValueError(f"reconstruction is {distorted.size}, original {reference.size}: sizes must match")
    values = compute_metrics(_to_tensor(reference), _to_tensor(distorted), metrics=tuple(metrics), models=models)
    return {(RESULT_KEYS.get(name, name) if result_keys else name): float(v[0]) for name, v in values.items()}


def usable_metrics(metrics: Sequence[str]) -> list[str]:
    """The metrics whose networks load here; the others are dropped with one warning each.

    Probed once, in parallel threads, before a sweep: offline, each missing weight file costs the Hub client's
    retries (about 30 s), which must not be paid once per image or per worker process.
    """
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from ..metrics import compute_metrics

    probe = torch.zeros(1, 3, 176, 176)

    def works(metric: str) -> tuple[bool, str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = compute_metrics(probe, probe, metrics=(metric,))
        return metric in values, "; ".join(str(w.message) for w in caught)

    with ThreadPoolExecutor(max_workers=max(1, len(metrics))) as pool:
        outcomes = list(pool.map(works, metrics))
    usable = []
    for metric, (ok, message) in zip(metrics, outcomes):
        if ok:
            usable.append(metric)
        else:
            warnings.warn(message or f"skipping {metric}: its weights are unavailable", UserWarning, stacklevel=2)
    return usable


def _init_worker(codec_name: str, codec_settings: dict, threads: int, parent_pid: int | None = None) -> None:
    die_with_parent(parent_pid)  # a killed sweep leaves no worker behind
    torch.set_num_threads(threads)
    _WORKER_STATE.clear()
    _WORKER_STATE["codec"] = (codec_name, codec_settings)


def _codec(codec_name: str, codec_settings: dict, codec_step=None):
    from ..codecs import get_codec
    from ..codecs.prequantize import with_codec_step

    step_key = json.dumps(codec_step.config(), sort_keys=True) if codec_step is not None else None
    key = ("codec_obj", codec_name, tuple(sorted(codec_settings.items())), step_key)
    if key not in _WORKER_STATE:
        _WORKER_STATE[key] = with_codec_step(get_codec(codec_name, **codec_settings), codec_step)
    return _WORKER_STATE[key]


def _run_one(job: tuple) -> tuple[dict, np.ndarray | None]:
    """Worker task: encode/decode one (image, quality); measure unless the caller enhances first."""
    index, name, original, coded_input, quality, codec_name, codec_settings, codec_step, metrics, keep = job
    result = _codec(codec_name, codec_settings, codec_step).run(coded_input, quality=quality)
    record = {
        "image": name,
        "quality": quality,
        "bpp": float(result.bpp),
        "encoding_time": float(result.encode_seconds),
        "decoding_time": float(result.decode_seconds),
    }
    if metrics:
        record.update(measure(original, result.reconstruction, metrics, result_keys=True))
    return record, (np.asarray(result.reconstruction) if keep else None)


def evaluate(
    images: Sequence[str | os.PathLike | Image.Image] | str | os.PathLike,
    codec: str,
    qualities: Sequence[float] | str | None = None,
    *,
    metrics: Sequence[str] | None = None,
    codec_settings: dict | None = None,
    preprocess: Callable[[list[Image.Image]], list[Image.Image]] | None = None,
    codec_step=None,
    enhance: Callable[[list[Image.Image], float], list[Image.Image]] | None = None,
    name: str | None = None,
    set_metrics: Sequence[str] = (),
    workers: int | None = None,
    progress: bool = True,
    names: Sequence[str] | None = None,
    on_image: Callable[[str, list[dict]], None] | None = None,
) -> EvaluationResult:
    """Encode every image at every quality with a real codec and measure the reconstructions.

    Args:
        images: a folder, a list of files, or PIL images (named ``image_{i}``).
        codec: a codec name of ``rp_diffusers.codecs.available_codecs()``.
        qualities: the sweep (``"10:90:10"``, ``"10,30"`` or numbers); default: the codec's ``sweep_qualities``.
        metrics: full-reference metrics per image, names of ``rp_diffusers.metrics.AVAILABLE_METRICS``
            (default :func:`rp_diffusers.metrics.default_metrics`: PSNR, MS-SSIM, every installed weight-free
            perceptual metric, LPIPS and DISTS); those whose tool or weights are unavailable are skipped with a
            warning.
        preprocess: maps the original images to what is encoded (e.g. an ``RPPreprocessPipeline``); run once per
            image, before the sweep. bpp is always counted on the original image's pixels.
        codec_step: a quality-aware step run on what is encoded, at each quality, just before the unmodified
            encoder (``rp_diffusers.codecs.prequantize``, e.g. ``JPEGDeadzone``: picklable, with a ``config()``);
            its time counts in ``encoding_time``. ``None``: the codec as it is.
        enhance: ``enhance(decoded_images, quality) -> images`` applied after decoding (perceptual decoding).
        set_metrics: metrics over the whole set per quality: ``"fid"``, ``"kid"`` (patch-based).
        workers: processes for the codec and metric work (default ``min(4, cpu_count)``; 0 or 1 runs in-process).
            Results do not depend on it.
        names: one name per image for the records (default: the files' stems, ``image_{i}`` for PIL images).
        on_image: ``on_image(name, records)`` once an image's records at every quality are final, in image order
            (as they stream without ``enhance``; after the enhancement otherwise): what a resumable run journals.

    Returns:
        EvaluationResult: per-image records sorted by (image, quality), and per-quality means.

    Example:
        >>> result = evaluate("photos/", "jpeg", "10:90:20")  # doctest: +SKIP
        >>> result.save("jpeg.json")  # doctest: +SKIP
    """
    from ..codecs import get_codec
    from ..codecs.prequantize import with_codec_step

    codec_settings = dict(codec_settings or {})
    codec_obj = with_codec_step(get_codec(codec, **codec_settings), codec_step)  # a step for another codec: error
    qualities = parse_qualities(qualities) if qualities is not None else list(codec_obj.sweep_qualities)
    lo, hi = codec_obj.quality_range
    if any(q < lo or q > hi for q in qualities):
        raise ValueError(f"qualities {qualities} outside {codec}'s range [{lo}, {hi}]")

    if isinstance(images, (str, os.PathLike)) or (
        isinstance(images, Sequence) and images and not isinstance(images[0], Image.Image)
    ):
        paths = list_images(images)
        default_names = [p.stem for p in paths]
        originals = [load_image(p) for p in paths]
    else:
        originals = [load_image(image) for image in images]
        default_names = [f"image_{i}" for i in range(len(originals))]
    if not originals:
        raise ValueError("no images to evaluate")
    if names is None:
        names = default_names
    else:
        names = [str(n) for n in names]
        if len(names) != len(originals) or len(set(names)) != len(names):
            raise ValueError(f"names must be {len(originals)} distinct strings, one per image; got {names[:5]}...")

    from ..metrics import default_metrics

    metrics = usable_metrics(default_metrics() if metrics is None else metrics)

    # 1. Pre-process once per image (the encoder side of rp + codec).
    preprocess_seconds = 0.0
    coded_inputs = originals
    if preprocess is not None:
        start = time.perf_counter()
        coded_inputs = list(preprocess(originals))
        preprocess_seconds = time.perf_counter() - start
        if [im.size for im in coded_inputs] != [im.size for im in originals]:
            raise RuntimeError("the pre-processor changed image sizes; it must return images of the input sizes")

    # 2. Encode, decode and (without enhancement) measure, in parallel processes.
    keep = enhance is not None or bool(set_metrics)
    per_image_metrics = tuple(metrics) if enhance is None else ()
    jobs = [
        (i, names[i], originals[i], coded_inputs[i], q, codec, codec_settings, codec_step, per_image_metrics, keep)
        for i in range(len(originals))
        for q in qualities
    ]
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    bar = tqdm(total=len(jobs), desc=f"{name or codec}", unit="encode", disable=not progress)
    outputs: list[tuple[dict, np.ndarray | None]] = []
    streamed = on_image is not None and enhance is None

    def finished(output) -> None:
        outputs.append(output)
        bar.update()
        if streamed and len(outputs) % len(qualities) == 0:  # jobs run image by image, quality by quality
            on_image(output[0]["image"], [dict(record) for record, _ in outputs[-len(qualities) :]])

    if workers <= 1:
        for job in jobs:
            finished(_run_one(job))
    else:
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker, initargs=(codec, codec_settings, 1, os.getpid())
        ) as pool:
            for output in pool.map(_run_one, jobs, chunksize=1):  # map keeps job order: deterministic output
                finished(output)
    bar.close()
    records = [record for record, _ in outputs]

    # 3. Optional decoder-side enhancement, then measurement against the originals.
    if enhance is not None:
        # the enhancement runs a quality's decodes in one call; the bar moves as each of them is measured
        bar = tqdm(total=len(jobs), desc=f"{name or codec}: enhance, measure", unit="image", disable=not progress)
        for q in qualities:
            rows = [k for k, job in enumerate(jobs) if job[4] == q]
            decoded = [Image.fromarray(outputs[k][1]) for k in rows]
            bar.set_postfix_str(f"enhancing quality {q:g}")
            start = time.perf_counter()
            enhanced = enhance(decoded, q)
            seconds = (time.perf_counter() - start) / max(1, len(rows))
            bar.set_postfix_str(f"measuring quality {q:g}")
            for k, image in zip(rows, enhanced):
                records[k]["enhance_time"] = seconds
                records[k].update(measure(originals[jobs[k][0]], image, metrics, result_keys=True))
                outputs[k] = (records[k], np.asarray(image))
                bar.update(1)
        bar.close()
        if on_image is not None:
            for i in range(len(originals)):
                on_image(names[i], [dict(r) for r in records[i * len(qualities) : (i + 1) * len(qualities)]])

    result = EvaluationResult(
        name=name or codec,
        description=codec_obj.description,
        records=records,
        meta={
            "codec": codec,
            "codec_settings": {**codec_settings},
            "codec_step": codec_step.config() if codec_step is not None else None,
            "qualities": qualities,
            "metrics": list(metrics),
            "num_images": len(originals),
            "images": names,
            "preprocess_seconds_per_image": preprocess_seconds / len(originals),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    )
    # 4. Set-level perceptual metrics (patch FID/KID as HiFiC and MS-ILLM evaluate small sets).
    if set_metrics:
        result.set_metrics = _set_level(originals, jobs, outputs, qualities, set_metrics)
    return result


def _set_level(originals, jobs, outputs, qualities, set_metrics) -> dict[float, dict[str, float]]:
    import warnings

    from ..metrics import MetricWeightsUnavailable, patch_fid, patch_kid

    functions = {"fid": patch_fid, "kid": patch_kid}
    unknown = set(set_metrics) - set(functions)
    if unknown:
        raise ValueError(f"unknown set metrics {sorted(unknown)}; use fid and/or kid")
    reference = [_to_tensor(image) for image in originals]
    table: dict[float, dict[str, float]] = {}
    for q in qualities:
        rows = [k for k, job in enumerate(jobs) if job[4] == q]
        decoded = [_to_tensor(Image.fromarray(outputs[k][1])) for k in rows]
        for metric in set_metrics:
            try:
                table.setdefault(q, {})[metric] = float(functions[metric](reference, decoded))
            except MetricWeightsUnavailable as error:
                warnings.warn(f"skipping {metric}: {error}", stacklevel=2)
                return {}
    return table
