"""The noise-level rule of arXiv:2506.16102: the sigma at which MSE(enhanced, source) is twice the codec's MSE.

The rule needs the source, which a decoder does not have, so it is applied offline on training photographs
(:func:`calibrate_sigmas`, the command ``rp-diffusers calibrate-decode``, on held-out photographs) and stored per
(model, preset, codec, quality) in a JSON table: ``decode_calibration.json`` next to the model's weights, or the
table shipped with the package (``sigma_table.json``); at run time the table is interpolated in quality.

The table also stores each codec's mean MSE per quality (model-independent). When the decoder is MMSE-optimal,
the enhanced image's error splits exactly: MSE(out, x) = MSE(out, x_dec) + MSE(x_dec, x) (out - x_dec depends
only on the bitstream and fresh noise, x - x_dec is orthogonal to every function of the bitstream), so "twice
the codec MSE" is also "MSE(out, x_dec) = codec MSE", which needs no source: ``sigma="auto"`` searches that per
image at run time (several model runs), for models that have no calibrated entry. For real codecs, which are
not exactly MMSE-optimal, this is an approximation.

All MSEs are on [0, 1] pixel values, averaged over channels and pixels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_TABLE_PATH = Path(__file__).with_name("sigma_table.json")
TABLE_FORMAT = "rp-diffusers-decode-sigma/1"
TARGET_RATIO = 2.0
# Qualities calibrated by default, per codec (the command and the training script use them).
DEFAULT_QUALITIES = {
    "jpeg": "5,10,20,30,40,50,60,75,90",
    "webp": "5,10,20,30,40,50,60,75,90",
    "avif": "5,10,20,30,40,50,60,75,90",
    "heic": "5,10,20,30,40,50,60,75,90",
    "jxl": "5,10,20,30,40,50,60,75,90",
    "hevc": "11,16,21,26,31,36,41",
    "vvc": "18,23,28,33,38,43,48",
}


def load_photographs(folder: str, num_images: int, crop: int) -> list:
    """The first ``num_images`` photographs of ``folder`` as (1, 3, h, w) tensors in [0, 1], centre-cropped."""
    from ..utils.image import list_images, load_image, pil_to_tensor

    root = Path(folder)
    if "kodak" in root.resolve().name.lower():
        raise ValueError("Kodak is the test set: calibrate on held-out photographs (e.g. val-set14)")
    paths = list_images(root)[:num_images]
    if not paths:
        raise ValueError(f"no images in {folder}")
    images = []
    for path in paths:
        image = load_image(path)
        if crop and min(image.size) > crop:
            left, top = (image.width - crop) // 2, (image.height - crop) // 2
            image = image.crop((left, top, left + crop, top + crop))
        images.append(pil_to_tensor(image))
    return images


class CalibrationError(ValueError):
    """No noise level can be chosen; the message says which sigma to pass or what to calibrate."""


def _interpolate(quality: float, qualities: list[float], values: list[float], log: bool) -> float:
    pairs = sorted(zip(qualities, values))
    qs = [q for q, _ in pairs]
    vs = [math.log(v) if log else v for _, v in pairs]
    for (q0, v0), (q1, v1) in zip(zip(qs, vs), zip(qs[1:], vs[1:])):
        if q0 <= quality <= q1:
            value = v0 if q1 == q0 else v0 + (v1 - v0) * (quality - q0) / (q1 - q0)
            return math.exp(value) if log else value
    if quality == qs[0]:
        return math.exp(vs[0]) if log else vs[0]
    raise CalibrationError(f"quality {quality} is outside the calibrated range [{qs[0]}, {qs[-1]}]")


def model_key_matches(key: str | None, entry_model: str) -> bool:
    """A table's model id matches a pipeline's id exactly or by its last path component (a local download)."""
    if not key:
        return False
    key, entry_model = str(key).rstrip("/"), entry_model.rstrip("/")
    return key == entry_model or Path(key).name == entry_model.split("/")[-1]


class SigmaTable:
    """Calibrated noise levels and codec MSEs, loaded from / saved to JSON.

    Schema: ``{"format", "rule", "codec_mse": {codec: {"qualities": [...], "mse": [...], "dataset"}},
    "entries": [{"model", "kind", "preset", "codec", "qualities", "sigmas", "ratios", "dataset", ...}]}``.

    Example:
        >>> table = SigmaTable.load()  # the table shipped with rp-diffusers
        >>> table.sigma_for("openai/diffusers-cd_imagenet64_lpips", "fast", "jpeg", 35)  # doctest: +SKIP
    """

    def __init__(self, data: dict | None = None, path: str | os.PathLike | None = None) -> None:
        data = data or {}
        self.path = Path(path) if path else None
        self.rule = data.get("rule", "MSE(enhanced, source) = 2 x MSE(decoded, source), mean over images")
        self.codec_mse: dict = dict(data.get("codec_mse", {}))
        self.entries: list[dict] = list(data.get("entries", []))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> SigmaTable:
        """Read a table (default: the one shipped in ``rp_diffusers/decode/sigma_table.json``)."""
        path = Path(path) if path else DEFAULT_TABLE_PATH
        if not path.is_file():
            raise CalibrationError(f"no calibration table at {path}; run training/calibrate_decode_sigma.py")
        data = json.loads(path.read_text())
        if data.get("format") != TABLE_FORMAT:
            raise CalibrationError(f"{path} is not a {TABLE_FORMAT} table (format={data.get('format')!r})")
        return cls(data, path)

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "rule": self.rule, "codec_mse": self.codec_mse, "entries": self.entries}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path or self.path or DEFAULT_TABLE_PATH)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def set_codec_mse(self, codec: str, qualities: list[float], mse: list[float], dataset: str) -> None:
        """Record the codec's mean MSE per quality on ``dataset``. Measured on the same dataset as the record
        already held, the qualities are merged (the new values win where both have one), so calibrating one preset
        over new qualities keeps the range another preset's ``sigma="auto"`` relies on; another dataset replaces
        the record."""
        merged = {}
        earlier = self.codec_mse.get(codec)
        if earlier is not None and earlier.get("dataset") == dataset:
            merged.update(zip(earlier["qualities"], earlier["mse"]))
        merged.update(zip(qualities, mse))
        ordered = sorted(merged)
        self.codec_mse[codec] = {"qualities": ordered, "mse": [merged[q] for q in ordered], "dataset": dataset}

    def add_entry(self, entry: dict) -> None:
        """Insert the entry for (model, preset, codec). One already held for the same settings (kind, steps, target
        ratio, dataset, seed) gains the new qualities (the new values win where both have one), so calibrating a
        few more qualities extends the table; an entry of other settings is replaced."""
        same = ("model", "preset", "codec")
        settings = ("kind", "num_steps", "target_ratio", "dataset", "seed")
        per_quality = [k for k in ("sigmas", "ratios", "codec_mse") if k in entry]
        kept = []
        for earlier in self.entries:
            if any(earlier.get(k) != entry.get(k) for k in same):
                kept.append(earlier)
            elif all(earlier.get(k) == entry.get(k) for k in settings) and all(k in earlier for k in per_quality):
                rows = {q: [earlier[k][i] for k in per_quality] for i, q in enumerate(earlier["qualities"])}
                rows.update({q: [entry[k][i] for k in per_quality] for i, q in enumerate(entry["qualities"])})
                ordered = sorted(rows)
                entry = {**entry, "qualities": ordered}
                entry.update({k: [rows[q][j] for q in ordered] for j, k in enumerate(per_quality)})
        self.entries = [*kept, entry]

    def codec_mse_for(self, codec: str, quality: float) -> float:
        """Mean MSE of ``codec`` at ``quality`` on the calibration photographs (log-interpolated)."""
        if codec not in self.codec_mse:
            raise CalibrationError(
                f"no codec MSE for {codec!r} in the calibration table (have: {sorted(self.codec_mse) or 'none'}); "
                "pass sigma=<float> or run training/calibrate_decode_sigma.py --codec-mse-only --codec " + codec
            )
        record = self.codec_mse[codec]
        return _interpolate(float(quality), record["qualities"], record["mse"], log=True)

    def find_entry(self, model_key: str | None, preset: str, codec: str) -> dict | None:
        """The entry for (model, preset, codec); falls back to another preset of the same model and codec."""
        candidates = [e for e in self.entries if e["codec"] == codec and model_key_matches(model_key, e["model"])]
        for entry in candidates:
            if entry["preset"] == preset:
                return entry
        if candidates:
            logger.warning(
                "no %s-preset calibration for %s / %s: using the %s preset's noise levels",
                preset,
                model_key,
                codec,
                candidates[0]["preset"],
            )
            return candidates[0]
        return None

    def sigma_for(self, model_key: str | None, preset: str, codec: str, quality: float) -> float:
        """The calibrated sigma for a model, preset, codec and quality (log-sigma interpolated in quality).

        Raises:
            CalibrationError: when no entry applies; the message lists what the table holds.
        """
        entry = self.find_entry(model_key, preset, codec)
        if entry is None:
            have = sorted({f"{e['model']} / {e['codec']}" for e in self.entries}) or ["no model entries"]
            raise CalibrationError(
                f"no calibrated noise level for model {model_key!r} with codec {codec!r} (the table holds: "
                f"{', '.join(have)}). Pass sigma=<float>, sigma='auto' (source-free search, needs the codec's MSE "
                "in the table), or compute the calibration once (cached next to the model): "
                + calibration_command(model_key or "MODEL", codec, preset)
            )
        try:
            return _interpolate(float(quality), entry["qualities"], entry["sigmas"], log=True)
        except CalibrationError as error:
            covering = [
                e["preset"]
                for e in self.entries
                if e is not entry
                and e["codec"] == codec
                and model_key_matches(model_key, e["model"])
                and min(e["qualities"]) <= quality <= max(e["qualities"])
            ]
            hint = f" The {', '.join(sorted(set(covering)))} preset's calibration covers it." if covering else ""
            raise CalibrationError(
                f"{codec} {error} of the {entry['preset']} preset for model {model_key!r}.{hint} Pass sigma=<float>, "
                f"or calibrate this quality once (cached next to the model): "
                + calibration_command(model_key or "MODEL", codec, entry["preset"], f"{quality:g}")
            ) from None


def search_sigma(
    mse_fn: Callable[[float], float],
    target: float,
    sigma_low: float,
    sigma_high: float,
    rtol: float = 0.02,
    max_iter: int = 24,
) -> tuple[float, float]:
    """Find sigma with ``mse_fn(sigma) = target`` for an increasing ``mse_fn``: bracketed secant in log-log space.

    Each step interpolates log(MSE) linearly in log(sigma) between the bracket ends (Illinois variant, so one end
    cannot stall), falling back to the geometric midpoint; a handful of evaluations usually suffice.

    Args:
        mse_fn: sigma -> MSE (evaluate with fixed noise so the function is deterministic).
        target: the MSE to hit.
        sigma_low, sigma_high: the bracket (e.g. 1e-3 and the model's useful maximum).
        rtol: stop when |mse / target - 1| <= rtol.
        max_iter: at most this many evaluations inside the bracket.

    Returns:
        ``(sigma, mse_fn(sigma))`` for the best evaluated sigma.

    Raises:
        CalibrationError: when the target is not bracketed (the model cannot move the image that far).

    Example:
        >>> sigma, value = search_sigma(lambda s: 1e-3 + s**2, 4.001e-2, 1e-3, 10.0)
        >>> abs(value / 4.001e-2 - 1) <= 0.02, abs(sigma - 0.2) < 0.005
        (True, True)
    """
    log_target = math.log(target)
    low, high = math.log(sigma_low), math.log(sigma_high)
    value_high = mse_fn(sigma_high)
    if value_high < target:
        raise CalibrationError(
            f"even sigma={sigma_high:.4g} gives MSE {value_high:.4g} < target {target:.4g}: the model cannot reach "
            "the target distortion; pass an explicit sigma"
        )
    value_low = mse_fn(sigma_low)
    best = min((sigma_high, value_high), (sigma_low, value_low), key=lambda p: abs(math.log(p[1]) - log_target))
    if value_low >= target:
        return best
    f_low, f_high = math.log(max(value_low, 1e-30)) - log_target, math.log(value_high) - log_target
    side = 0
    for _ in range(max_iter):
        guess = high - f_high * (high - low) / (f_high - f_low) if f_high != f_low else 0.5 * (low + high)
        if not low + 0.01 * (high - low) < guess < high - 0.01 * (high - low):
            guess = 0.5 * (low + high)
        value = mse_fn(math.exp(guess))
        if abs(math.log(value) - log_target) < abs(math.log(best[1]) - log_target):
            best = (math.exp(guess), value)
        if abs(value / target - 1) <= rtol:
            break
        f_guess = math.log(max(value, 1e-30)) - log_target
        if f_guess < 0:
            low, f_low = guess, f_guess
            if side == -1:
                f_high /= 2  # Illinois: halve the stale end's residual
            side = -1
        else:
            high, f_high = guess, f_guess
            if side == 1:
                f_low /= 2
            side = 1
    return best


CALIBRATION_FILE = "decode_calibration.json"  # a model's own table, stored next to its weights


def calibration_command(model: str, codec: str, preset: str, qualities: str | None = None) -> str:
    """The one command that computes (and caches next to the model) a missing calibration."""
    return (
        f"rp-diffusers calibrate-decode --model {model} --codec {codec} --preset {preset} "
        + (f"--qualities {qualities} " if qualities else "")
        + "--data PHOTOS (a folder of held-out photographs, e.g. Set14; never the test set)"
    )


def model_table_path(model_path: str | os.PathLike | None) -> Path | None:
    """Where a model's own calibration lives: ``decode_calibration.json`` in its local folder, or the Hub cache."""
    if not model_path:
        return None
    folder = Path(str(model_path))
    if folder.is_dir():
        return folder / CALIBRATION_FILE
    try:  # a Hub id: the file in the local snapshot cache, if the repository ships one
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model_path), CALIBRATION_FILE)
    except Exception:  # noqa: BLE001 - not a repo id; there is no table next to it
        return None
    return Path(cached) if isinstance(cached, str) else None


def calibrate_sigmas(
    pipe,
    sources: list,
    codec_name: str,
    qualities: list[float],
    preset: str = "fast",
    num_steps: int | None = None,
    ratio: float = TARGET_RATIO,
    rtol: float = 0.03,
    sigma_max: float | None = None,
    seed: int = 0,
    dataset: str = "",
    progress: bool = True,
) -> tuple[dict, dict]:
    """The paper's rule for one model, preset and codec: per quality, the sigma at which MSE(enhanced, source)
    is ``ratio`` times MSE(decoded, source), averaged over ``sources``.

    Args:
        pipe: a :class:`~rp_diffusers.pipelines.perceptual_decode.PerceptualDecodePipeline`.
        sources: (1, 3, H, W) tensors in [0, 1], held-out photographs (never the test set).
        codec_name: a codec of :func:`rp_diffusers.codecs.get_codec`; real encodes and decodes.
        qualities: the qualities to calibrate (interpolated in between at run time).

    Returns:
        ``(entry, codec_mse)``: the table entry (``SigmaTable.add_entry``) and the codec's MSE record.
    """
    import torch
    from tqdm.auto import tqdm

    from ..codecs import get_codec
    from ..utils.image import pil_to_tensor, tensor_to_pil

    codec = get_codec(codec_name)
    model = pipe.model_key or "model"
    if Path(model).is_dir():  # a local folder: its name, not this machine's path
        model = Path(model).name
    mses, sigmas, ratios = [], [], []
    high = sigma_max or min(make_sigma_range(pipe)[1], 10.0)
    for quality in tqdm(qualities, desc=f"calibrate {codec_name}", disable=not progress):
        decoded = [pil_to_tensor(codec.run(tensor_to_pil(s)[0], quality).reconstruction) for s in sources]
        codec_mse = sum(float((d - s).pow(2).mean()) for d, s in zip(decoded, sources)) / len(sources)

        def mse(sigma: float, decoded=decoded) -> float:
            total = 0.0
            for index, (image, source) in enumerate(zip(decoded, sources)):
                with torch.no_grad():
                    out = pipe.enhance_tensor(
                        image, sigma, preset, num_steps, generator=torch.Generator().manual_seed(seed + index)
                    )
                total += float((out - source).pow(2).mean())
            return total / len(sources)

        sigma, value = search_sigma(mse, ratio * codec_mse, 1e-3, high, rtol=rtol, max_iter=12)
        mses.append(codec_mse)
        sigmas.append(sigma)
        ratios.append(value / codec_mse)
        logger.info(
            "%s %s q=%s codec MSE %.3e sigma %.4g ratio %.3f",
            model,
            codec_name,
            quality,
            codec_mse,
            sigma,
            value / codec_mse,
        )
    entry = {
        "model": model,
        "kind": pipe.model_kind,
        "preset": preset,
        "num_steps": num_steps,
        "codec": codec_name,
        "qualities": list(qualities),
        "sigmas": sigmas,
        "ratios": ratios,
        "codec_mse": mses,
        "target_ratio": ratio,
        "dataset": dataset,
        "seed": seed,
    }
    return entry, {"qualities": list(qualities), "mse": mses, "dataset": dataset}


def make_sigma_range(pipe) -> tuple[float, float]:
    """The (sigma_min, sigma_max) the pipeline's model was trained on."""
    from .denoisers import make_denoiser

    space = make_denoiser(lambda x, t: x, pipe.scheduler)
    return max(space.sigma_min, 1e-3), space.sigma_max
