"""Size calibration of the learned proxies: a linear model of ``log(real bits / proxy bits)`` and its fit.

A proxy's rate head is fitted on crops; :func:`fit_rate_calibration` measures its bias on whole and cropped
training photographs at several qualities, and :func:`rate_correction` applies the fitted correction when the
proxy runs (``CodecProxySurrogate.forward``). The result is stored as ``rate_calibration`` in ``proxy_{codec}.json``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BASE_TERMS = ("1", "log_pixels", "q")
RATE_TERMS = ("1", "log_pixels", "q", "q2", "noise", "noise*q", "noise*q2")


def noise_level(image: torch.Tensor) -> torch.Tensor:
    """``log(sigma + 0.05)`` per image (N,), float32, no gradient: the luma noise level on the 0-255 scale.

    ``sigma`` is Donoho's robust estimate, ``median(|HH|) / 0.6745`` of the finest diagonal Haar coefficients of
    the luma. It is the content feature of the ``noise`` calibration terms: how much of an image's detail sits at
    the level a quantiser can remove. Clean, smooth photographs (low sigma) are cheaper for VVC at mid qualities
    than the proxy, fitted on crops of JPEG-compressed photographs, predicts.
    """
    with torch.no_grad():
        x = image.detach().float() * 255.0
        luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        height, width = luma.shape[-2] // 2 * 2, luma.shape[-1] // 2 * 2
        if height == 0 or width == 0:
            return torch.zeros(image.shape[0], device=image.device)
        luma = luma[:, :height, :width]
        diagonal = (luma[:, 0::2, 0::2] - luma[:, 1::2, 0::2] - luma[:, 0::2, 1::2] + luma[:, 1::2, 1::2]) / 2
        sigma = diagonal.abs().flatten(1).median(dim=1).values / 0.6745
        return torch.log(sigma + 0.05)


def _rate_design(terms, log_size, q_norm, noise):
    """The columns of the calibration's linear model, one per term name in ``terms``."""
    columns = []
    for term in terms:
        factors = term.split("*")
        value = 1.0
        for factor in factors:
            if factor == "1":
                continue
            if factor == "log_pixels":
                value = value * log_size
            elif factor in ("q", "q2"):
                value = value * (q_norm if factor == "q" else q_norm * q_norm)
            elif factor == "noise":
                if noise is None:
                    raise ValueError("this rate calibration has noise terms: pass the image (or its noise level)")
                value = value * noise
            else:
                raise ValueError(f"unknown rate calibration term {term!r}; known: {RATE_TERMS}")
        columns.append(value)
    return columns


def rate_correction(
    calibration: dict | None,
    pixels: int,
    q_norm: torch.Tensor,
    image: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multiplicative size correction ``exp(sum_k coef_k * term_k)``, (N,) float32, no gradient through the image.

    ``calibration["terms"]`` names the terms (default ``1, log_pixels, q``: ``log_pixels`` is ``log(pixels) -
    log_pixels_ref``, ``q`` the normalised quality, ``q2`` its square, ``noise`` :func:`noise_level` of ``image``
    (or ``noise`` given directly), ``a*b`` a product). The proxy's rate head is fitted on crops;
    ``fit_rate_calibration`` measures its bias on whole (resized) and cropped training photographs at several
    qualities. ``None`` means no correction (1).
    """
    q_norm = q_norm.float()
    if calibration is None:
        return torch.ones_like(q_norm)
    terms = calibration.get("terms", BASE_TERMS)
    log_size = math.log(max(pixels, 1)) - calibration["log_pixels_ref"]
    if noise is None and image is not None and any("noise" in term for term in terms):
        noise = noise_level(image)
    if noise is not None:
        noise = torch.as_tensor(noise, dtype=torch.float32, device=q_norm.device)
    columns = _rate_design(terms, log_size, q_norm, noise)
    total = sum(coef * column for coef, column in zip(calibration["coef"], columns))
    return torch.exp(torch.as_tensor(total, dtype=torch.float32, device=q_norm.device).expand_as(q_norm)).clone()


def fit_rate_calibration(records: list[tuple], terms: tuple[str, ...] = BASE_TERMS) -> dict:
    """Least-squares fit of ``log(real / proxy) = sum_k coef_k * term_k`` (see :func:`rate_correction`).

    Args:
        records: ``(pixels, q_norm, proxy_bits, real_bits)`` rows, plus ``noise_level`` as a fifth column when
            ``terms`` use it; proxy bits measured WITHOUT any calibration, from training photographs (never the
            test set) at several sizes and qualities.
        terms: the model's terms (``BASE_TERMS`` or a subset of ``RATE_TERMS``).

    Returns:
        ``{"terms": [...], "coef": [...], "log_pixels_ref": ref, "n": rows, "rms_log_residual": ...,
        "rms_log_before": ...}``.
    """
    terms = tuple(terms)
    if len(records) < len(terms) + 1:
        raise ValueError(
            f"need at least {len(terms) + 1} (pixels, q, proxy, real) records to fit {len(terms)} coefficients, "
            f"got {len(records)}"
        )
    rows = np.asarray(records, dtype=np.float64)
    uses_noise = any("noise" in term for term in terms)
    if uses_noise and rows.shape[1] < 5:
        raise ValueError("noise terms need a fifth column (noise_level) in every record")
    log_pixels, q_norm = np.log(rows[:, 0]), rows[:, 1]
    ref = float(np.mean(log_pixels))
    target = np.log(rows[:, 3] / rows[:, 2])
    columns = _rate_design(terms, log_pixels - ref, q_norm, rows[:, 4] if uses_noise else None)
    design = np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), q_norm.shape) for c in columns], axis=1)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coef
    return {
        "terms": list(terms),
        "coef": [round(float(v), 6) for v in coef],
        "log_pixels_ref": round(ref, 6),
        "n": int(len(rows)),
        "rms_log_residual": round(float(np.sqrt(np.mean(residual**2))), 4),
        "rms_log_before": round(float(np.sqrt(np.mean(target**2))), 4),
    }
