"""Quality-aware steps that run on the pixels just before an unmodified encoder, and a codec that applies one.

:class:`JPEGDeadzone` is a dead-zone quantiser expressed in pixels. Baseline libjpeg (libjpeg-turbo, which Pillow
uses) rounds every DCT coefficient to the nearest multiple of its quantisation step, so a coefficient at 0.55 steps
is coded as 1 and costs a (run, size) Huffman code plus its sign bit. Encoders with rate-distortion optimised
quantisation (mozjpeg's trellis, the RDOQ of HEVC and VVC encoders) set such coefficients to zero when the bits saved
are worth more than the error added. This step does the same before the encoder: for the luma table of the quality
the file will be written at, each AC coefficient of the image's luma whose magnitude lies in [0.5, ``threshold``)
quantisation steps is moved to 0.4 steps, so the unmodified encoder rounds it to zero. The change is made in the
luma plane only and added equally to R, G and B, which leaves Cb and Cr unchanged; the file is an ordinary JPEG.

Where it comes from: per-image pre-editing through DiffJPEG (``benchmarks/preedit_ceiling.py``, Adam on each image's
pixels against SSIMULACRA2 + VIF + rate) shrinks the coefficients that sit between 0.5 and 1 step and rarely any
other (``training/README.md``, "A dead zone before JPEG"). A network that does not know the quality and the 8x8 grid
cannot learn that edit; this step computes it.

Example:
    >>> from rp_diffusers.codecs import get_codec
    >>> from rp_diffusers.codecs.prequantize import JPEGDeadzone, with_codec_step
    >>> from rp_diffusers.evaluation import EXAMPLES_DIR
    >>> from rp_diffusers.utils import load_image
    >>> image = load_image(EXAMPLES_DIR / "chalet.png")
    >>> plain, stepped = get_codec("jpeg"), with_codec_step(get_codec("jpeg"), JPEGDeadzone())
    >>> stepped.run(image, quality=40).bpp < plain.run(image, quality=40).bpp  # an ordinary, smaller .jpg
    True
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..surrogates.jpeg_tables import STD_LUMA_QTABLE, ZIGZAG, scaled_qtable
from .base import Codec, _as_rgb

__all__ = ["CODEC_STEPS", "JPEGDeadzone", "SteppedCodec", "codec_step_from_config", "with_codec_step"]


def _dct_basis() -> np.ndarray:
    """Orthonormal 8-point DCT-II matrix (rows = frequencies)."""
    k, n = np.arange(8)[:, None], np.arange(8)[None]
    basis = np.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return basis


_DCT = _dct_basis()
_ZIGZAG_INDEX = np.argsort(np.array(ZIGZAG)).reshape(8, 8)  # natural position -> zigzag index


def _luma(rgb: np.ndarray) -> np.ndarray:
    """libjpeg's ``rgb_ycc_convert`` luma (jccolor.c, 16-bit fixed point) of int RGB (H, W, 3)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (19595 * r + 38470 * g + 7471 * b + 32768) >> 16


@dataclass(frozen=True)
class JPEGDeadzone:
    """Dead-zone pre-quantisation for baseline JPEG (IJG tables scaled by quality, as Pillow writes them).

    Args:
        threshold: AC coefficients of the luma with magnitude in [0.5, ``threshold``) quantisation steps are moved
            to ``target`` steps (the encoder then codes them as zero), in [0.5, 1.5]: 0.5 does nothing, 1.5 zeroes
            every coefficient libjpeg would code as +-1.
        frequency_ramp: make the threshold grow with the coefficient's zigzag index k, from 0.5 at k = 0 to
            ``2 * threshold - 0.5`` at k = 63, capped at 1.5 (about the same mean threshold, more of it at high
            frequencies; it lost on val-set14, see ``benchmarks/jpeg_deadzone.py --frequency_ramp``).
        target: where a coefficient is moved to, in steps (< 0.5, with a margin for the 8-bit rounding of RGB).
        passes: how many times the luma is re-analysed after the RGB rounding (the second pass catches the few
            coefficients the rounding pushed back over 0.5).
        tail_threshold: also code as zero, from the end of each block's zigzag order, the last nonzero
            coefficients under this many steps, one after the other while the new last one is too (``None``: off).
            A block's last nonzero coefficients cost the most: each ends a run of zeros that the end-of-block code
            would otherwise cover. In [``threshold``, 1.5].

    Calling it with an image and the quality the file will be written at returns the image to encode. It is
    exact for the blocks inside the image; blocks cut by the right or bottom edge are padded by libjpeg with the
    last row or column, which the step approximates.
    """

    threshold: float = 0.75
    frequency_ramp: bool = False
    target: float = 0.4
    passes: int = 2
    tail_threshold: float | None = None

    name: ClassVar[str] = "jpeg_deadzone"
    codec: ClassVar[str] = "jpeg"

    def __post_init__(self) -> None:
        for field, value in (("threshold", self.threshold), ("target", self.target)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{field} must be a finite number, got {value!r}")
        if not 0.5 <= self.threshold <= 1.5:
            raise ValueError(f"threshold must lie in [0.5, 1.5] quantisation steps, got {self.threshold}")
        if not 0.0 <= self.target < 0.5:
            raise ValueError(
                f"target must lie in [0, 0.5) steps (the encoder must round it to zero), got {self.target}"
            )
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or not 1 <= self.passes <= 8:
            raise ValueError(f"passes must be an integer in [1, 8], got {self.passes!r}")
        if self.tail_threshold is not None and (
            isinstance(self.tail_threshold, bool)
            or not isinstance(self.tail_threshold, numbers.Real)
            or not self.threshold <= self.tail_threshold <= 1.5
        ):
            raise ValueError(
                f"tail_threshold must be None or lie in [threshold, 1.5] = [{self.threshold}, 1.5], got "
                f"{self.tail_threshold!r}"
            )
        if not isinstance(self.frequency_ramp, bool):
            raise ValueError(f"frequency_ramp must be true or false, got {self.frequency_ramp!r}")

    @property
    def description(self) -> str:
        ramp = ", growing with frequency" if self.frequency_ramp else ""
        tail = f", a block's last ones under {self.tail_threshold:g}" if self.tail_threshold is not None else ""
        return f"JPEG dead zone (luma AC coefficients under {self.threshold:g} steps coded as zero{ramp}{tail})"

    def config(self) -> dict[str, Any]:
        """The settings as stored in a model's ``codec_steps`` (see :func:`codec_step_from_config`)."""
        return {"step": self.name, **asdict(self)}

    def thresholds(self) -> np.ndarray:
        """(8, 8) per-coefficient thresholds in natural order (DC excluded: 0)."""
        if self.frequency_ramp:
            limits = np.minimum(0.5 + (self.threshold - 0.5) * 2 * _ZIGZAG_INDEX / 63, 1.5)
        else:
            limits = np.full((8, 8), float(self.threshold))
        limits[0, 0] = 0.0  # the DC coefficient is never moved: a block's mean is what the eye sees first
        return limits

    def __call__(self, image, quality: int) -> Image.Image:
        """The image to hand to the JPEG encoder at ``quality`` (integer in [1, 100]); same size, 8-bit RGB."""
        if (
            isinstance(quality, bool)
            or not isinstance(quality, numbers.Real)
            or not math.isfinite(quality)
            or int(quality) != quality
            or not 1 <= int(quality) <= 100
        ):
            raise ValueError(f"JPEG quality must be an integer in [1, 100], got {quality!r}")
        image = _as_rgb(image)
        rgb = np.asarray(image, dtype=np.int64).copy()
        height, width = rgb.shape[:2]
        rows, cols = math.ceil(height / 8), math.ceil(width / 8)
        table = np.asarray(scaled_qtable(STD_LUMA_QTABLE, int(quality)), dtype=np.float64).reshape(8, 8)
        limits = self.thresholds()
        for _ in range(self.passes):
            luma = _luma(rgb).astype(np.float64) - 128
            luma = np.pad(luma, ((0, 8 * rows - height), (0, 8 * cols - width)), mode="edge")
            blocks = luma.reshape(rows, 8, cols, 8).transpose(0, 2, 1, 3)
            steps = (_DCT @ blocks @ _DCT.T) / table  # 2-D DCT of every block, in quantisation steps
            magnitude = np.abs(steps)
            move = (magnitude >= 0.5) & (magnitude < limits)
            if self.tail_threshold is not None:
                move = self._tail(magnitude, move)
            if not move.any():
                break
            change = np.where(move, np.sign(steps) * self.target - steps, 0.0) * table
            delta = (_DCT.T @ change @ _DCT).transpose(0, 2, 1, 3)  # back to pixels
            delta = delta.reshape(8 * rows, 8 * cols)[:height, :width]
            rgb = np.clip(np.rint(rgb + delta[..., None]), 0, 255).astype(np.int64)
        return Image.fromarray(rgb.astype(np.uint8))

    def _tail(self, magnitude: np.ndarray, move: np.ndarray) -> np.ndarray:
        """``move`` plus, per block, the trailing nonzero coefficients under ``tail_threshold`` (zigzag order)."""
        rows, cols = magnitude.shape[:2]
        order = np.array(ZIGZAG)
        size = magnitude.reshape(rows, cols, 64)[..., order]
        moved = move.reshape(rows, cols, 64)[..., order].copy()
        kept = (size >= 0.5) & ~moved  # what the encoder still codes as nonzero
        kept[..., 0] = False  # the DC coefficient is coded on its own, never part of the run
        index = np.arange(64)
        for _ in range(63):
            last = np.where(kept, index, -1).max(-1)
            rows_, cols_ = np.nonzero(last > 0)
            cut = size[rows_, cols_, last[rows_, cols_]] < self.tail_threshold
            if not cut.any():
                break
            rows_, cols_, at = rows_[cut], cols_[cut], last[rows_, cols_][cut]
            kept[rows_, cols_, at] = False
            moved[rows_, cols_, at] = True
        natural = np.empty_like(moved)
        natural[..., order] = moved
        return natural.reshape(rows, cols, 8, 8)


CODEC_STEPS: dict[str, type] = {JPEGDeadzone.name: JPEGDeadzone}


def codec_step_from_config(config: dict[str, Any]):
    """Build a step from its stored settings (``{"step": "jpeg_deadzone", "threshold": 0.75, ...}``).

    Besides the step's settings only ``step`` and ``validation`` (its verdict, a dict with a boolean ``wins``) may
    appear: a misspelt setting is an error, not silently the default.
    """
    if not isinstance(config, dict) or config.get("step") not in CODEC_STEPS:
        raise ValueError(f"a codec step needs 'step' in {sorted(CODEC_STEPS)}, got {config!r}")
    cls = CODEC_STEPS[config["step"]]
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(config) - fields - {"step", "validation"})
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown} of the codec step {config['step']!r}; allowed: {sorted(fields)}"
        )
    validation = config.get("validation")
    if validation is not None and not (isinstance(validation, dict) and isinstance(validation.get("wins"), bool)):
        raise ValueError(f"a codec step's 'validation' must be a dict with a boolean 'wins', got {validation!r}")
    return cls(**{k: v for k, v in config.items() if k in fields})


class SteppedCodec(Codec):
    """A real codec with a quality-aware step on the pixels before its encoder; the encoder and files are unchanged.

    Everything else (quality range, decoding, ``run``, ``find_quality``) is the wrapped codec's; each quality the
    encoder is asked for gets the step made for that quality. ``encoder_settings`` records the step.
    """

    def __init__(self, codec: Codec, step) -> None:  # noqa: D107 - no settings of its own
        if getattr(step, "codec", None) != codec.name:
            made_for = getattr(step, "codec", "no codec (it has no `codec` attribute)")
            raise ValueError(f"the step {getattr(step, 'name', step)!r} is made for {made_for}, not {codec.name}")
        if isinstance(codec, SteppedCodec):
            raise ValueError(f"{codec!r} already runs a step before its encoder; wrap the plain codec")
        self.inner, self.step = codec, step
        self.name, self.extension = codec.name, codec.extension
        self.quality_range, self.default_quality = codec.quality_range, codec.default_quality
        self.sweep_qualities, self.settings = codec.sweep_qualities, codec.settings

    def availability_error(self) -> str | None:
        return self.inner.availability_error()

    def encoder_settings(self, quality: int) -> dict[str, Any]:
        return {**self.inner.encoder_settings(quality), "before_encoding": self.step.config()}

    def _encode(self, image: Image.Image, quality: int) -> bytes:
        return self.inner._encode(self.step(image, quality), quality)

    def _decode(self, data: bytes) -> Image.Image:
        return self.inner._decode(data)

    @property
    def description(self) -> str:
        return f"{self.inner.description}; before encoding: {self.step.description}"

    def __repr__(self) -> str:
        return f"SteppedCodec({self.inner!r}, {self.step!r})"


def with_codec_step(codec: Codec, step) -> Codec:
    """``codec`` with ``step`` before its encoder (``step=None``: ``codec`` itself)."""
    return codec if step is None else SteppedCodec(codec, step)
