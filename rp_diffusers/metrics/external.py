"""Butteraugli and VMAF / VMAF-NEG through their reference binaries: weight-free perceptual metrics.

Data path (both tools, every image of a batch on its own):

- Both images are clamped to [0, 1] and quantised to 8 bits (``round(255 * x)``, as
  :func:`~rp_diffusers.metrics.quantize_8bit`), written into a temporary folder that is always removed,
  even on error (``utils.processes.private_tempdir``); the tool runs there as an argv list (no shell) with a
  timeout, and dies with its parent (``utils.processes.run_tool``). Failures raise
  :class:`MetricToolError` carrying the tool's stderr; a missing tool raises :class:`MetricToolUnavailable`.
- **Butteraugli**: libjxl's ``butteraugli_main`` (Debian/Ubuntu package ``libjxl-devtools``, tested with 0.7)
  reads two 8-bit PNGs without colour profile, which it takes as sRGB, at its default intensity target of
  80 nits. One run prints the max distance and the ``--pnorm 3`` norm; both are kept. For images under 8 pixels
  a side the tool silently answers 0, so they are refused.
- **VMAF**: libvmaf in the static ffmpeg of ``imageio-ffmpeg``, built-in models ``vmaf_v0.6.1`` and
  ``vmaf_v0.6.1neg`` computed in one run. RGB -> Y'CbCr is done explicitly and identically for both images:
  swscale, BT.709 matrix, limited ("tv") range, ``accurate_rnd``, 4:4:4. Both models read luma only, so 4:4:4
  gives exactly the 4:2:0 scores (checked on Kodak) and needs no even sizes. A single frame has zero motion,
  so identical images score about 97.4, not 100; plain VMAF is clipped to [0, 100] and rewards sharpening
  (a strongly unsharp-masked photo scores 100), which VMAF-NEG does not. libvmaf crashes on images under
  17 pixels a side, so they are refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import torch
from PIL import Image

from ..codecs.base import CodecError
from ..codecs.ffmpeg_codecs import ffmpeg_exe, ffmpeg_listing
from ..utils.image import tensor_to_pil
from ..utils.processes import private_tempdir, run_tool
from .psnr import check_image_pair

BUTTERAUGLI_BINARY = "butteraugli_main"
BUTTERAUGLI_MIN_SIDE = 8  # butteraugli_main returns 0 for anything smaller
VMAF_MIN_SIDE = 17  # libvmaf 3.x (in imageio-ffmpeg's ffmpeg) segfaults on 16 pixels
VMAF_MODELS = {"vmaf": "vmaf_v0.6.1", "vmaf_neg": "vmaf_v0.6.1neg"}
_TO_YUV = "scale=out_color_matrix=bt709:out_range=tv:flags=accurate_rnd,format=yuv444p"


class MetricToolError(RuntimeError):
    """An external metric tool failed (non-zero exit, timeout, unreadable output); the message says why."""


class MetricToolUnavailable(MetricToolError):
    """An external metric tool is not installed here; the message says what to install."""


def _butteraugli_exe() -> str:
    exe = shutil.which(BUTTERAUGLI_BINARY)
    if exe is None:
        raise MetricToolUnavailable(
            f"butteraugli: `{BUTTERAUGLI_BINARY}` was not found on PATH; install it with "
            "`apt-get install libjxl-devtools` (Debian/Ubuntu) or build libjxl's tools "
            "(https://github.com/libjxl/libjxl, cmake -DJPEGXL_ENABLE_DEVTOOLS=ON) and put it on PATH"
        )
    return exe


def _vmaf_ffmpeg() -> str:
    try:
        exe, filters = ffmpeg_exe(), ffmpeg_listing("filters")
    except (CodecError, OSError, subprocess.SubprocessError) as error:
        raise MetricToolUnavailable(f"vmaf: {error}") from error
    if " libvmaf " not in filters:
        raise MetricToolUnavailable(
            f"vmaf: this ffmpeg ({exe}) has no libvmaf filter; install imageio-ffmpeg >= 0.5, whose static "
            "ffmpeg has it, or point IMAGEIO_FFMPEG_EXE at an ffmpeg built with --enable-libvmaf"
        )
    return exe


def butteraugli_available() -> bool:
    """Whether ``butteraugli_main`` is on PATH (``apt-get install libjxl-devtools`` provides it)."""
    try:
        return bool(_butteraugli_exe())
    except MetricToolUnavailable:
        return False


def vmaf_available() -> bool:
    """Whether the ffmpeg of ``imageio-ffmpeg`` is present and has the libvmaf filter."""
    try:
        return bool(_vmaf_ffmpeg())
    except MetricToolUnavailable:
        return False


def _image_pairs(
    reference: torch.Tensor, distorted: torch.Tensor, name: str, min_side: int, timeout: float
) -> list[tuple[Image.Image, Image.Image]]:
    """Check the batches, then return one ``(reference, distorted)`` pair of 8-bit RGB PIL images per image."""
    check_image_pair(reference, distorted, channels=3, name=name)
    height, width = reference.shape[-2:]
    if min(height, width) < min_side:
        raise ValueError(
            f"{name}: images must be at least {min_side}x{min_side} pixels, got {width}x{height}; "
            "compare larger crops (pad both images the same way if they are tiny)"
        )
    if not timeout > 0:
        raise ValueError(f"{name}: timeout must be a positive number of seconds, got {timeout!r}")
    return list(zip(tensor_to_pil(reference), tensor_to_pil(distorted)))


def _run_tool(name: str, argv: list[str], cwd: str, timeout: float) -> str:
    """Run ``argv`` in ``cwd``; return its stdout, or raise ``MetricToolError`` with the tail of its stderr."""
    try:
        process = run_tool(argv, cwd=cwd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise MetricToolError(
            f"{name}: {Path(argv[0]).name} took over {timeout} s and was stopped (pass a larger `timeout`)"
        ) from error
    except OSError as error:
        raise MetricToolError(f"{name}: could not start {argv[0]}: {error}") from error
    if process.returncode != 0:
        stderr = process.stderr.decode(errors="replace")[-2000:]
        raise MetricToolError(f"{name}: {Path(argv[0]).name} failed (exit {process.returncode}): {stderr}")
    return process.stdout.decode(errors="replace")


def _parse_butteraugli(stdout: str) -> tuple[float, float]:
    """``butteraugli_main --pnorm 3`` prints the max distance on one line and ``3-norm: <value>`` on the next."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    try:
        (max_line,) = [line for line in lines if ":" not in line]
        (norm_line,) = [line for line in lines if line.startswith("3-norm:")]
        return float(max_line), float(norm_line.split(":", 1)[1])
    except ValueError as error:
        raise MetricToolError(f"butteraugli: could not read the distances from its output {stdout!r}") from error


def butteraugli_scores(
    reference: torch.Tensor, distorted: torch.Tensor, *, timeout: float = 120.0
) -> dict[str, torch.Tensor]:
    """Per-image Butteraugli max distance and 3-norm from one ``butteraugli_main`` run per image.

    Args:
        reference (`torch.Tensor` of shape `(N, 3, H, W)`): original images in [0, 1] (nonlinear sRGB),
            H and W >= 8.
        distorted (`torch.Tensor` of shape `(N, 3, H, W)`): decoded images in [0, 1].
        timeout (`float`): seconds allowed for one image (a 768x512 image takes about 0.3 s).

    Returns:
        `dict[str, torch.Tensor]`: ``"butteraugli"`` (max distance) and ``"butteraugli_3norm"``, each float64 of
        shape `(N,)`, >= 0, lower = better (0 for identical images; about 1 is "just noticeable").

    Raises:
        ValueError: mismatched batches or images under 8 pixels a side.
        MetricToolUnavailable: ``butteraugli_main`` is not installed (``apt-get install libjxl-devtools``).
        MetricToolError: the tool failed or ran over ``timeout``.

    Example:
        >>> x = torch.rand(1, 3, 64, 64)
        >>> butteraugli_scores(x, x)
        {'butteraugli': tensor([0.], dtype=torch.float64), 'butteraugli_3norm': tensor([0.], dtype=torch.float64)}
    """
    pairs = _image_pairs(reference, distorted, "butteraugli", BUTTERAUGLI_MIN_SIDE, timeout)
    exe = _butteraugli_exe()
    values = []
    for ref, dist in pairs:
        with private_tempdir("metric-") as tmp:
            ref.save(Path(tmp) / "ref.png", compress_level=1)  # fast zlib level: the pixels are the same
            dist.save(Path(tmp) / "dist.png", compress_level=1)
            stdout = _run_tool("butteraugli", [exe, "ref.png", "dist.png", "--pnorm", "3"], tmp, timeout)
        values.append(_parse_butteraugli(stdout))
    table = torch.tensor(values, dtype=torch.float64).reshape(-1, 2)
    return {"butteraugli": table[:, 0], "butteraugli_3norm": table[:, 1]}


def butteraugli_max(reference: torch.Tensor, distorted: torch.Tensor, *, timeout: float = 120.0) -> torch.Tensor:
    """Per-image Butteraugli max distance, float64 of shape `(N,)`; see :func:`butteraugli_scores`."""
    return butteraugli_scores(reference, distorted, timeout=timeout)["butteraugli"]


def butteraugli_pnorm(reference: torch.Tensor, distorted: torch.Tensor, *, timeout: float = 120.0) -> torch.Tensor:
    """Per-image Butteraugli 3-norm, float64 of shape `(N,)`; see :func:`butteraugli_scores`."""
    return butteraugli_scores(reference, distorted, timeout=timeout)["butteraugli_3norm"]


def _vmaf_argv(exe: str, width: int, height: int) -> list[str]:
    # libvmaf's inputs are (main = distorted, reference); paths are relative to the temporary directory so
    # that nothing in the filter string needs escaping.
    models = "|".join(f"version={version}\\:name={key}" for key, version in VMAF_MODELS.items())
    graph = f"[0:v]{_TO_YUV}[dist];[1:v]{_TO_YUV}[ref];[dist][ref]libvmaf=model='{models}'"
    graph += ":log_fmt=json:log_path=vmaf.json"
    raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
    argv = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", *raw, "-i", "dist.rgb", *raw, "-i", "ref.rgb"]
    return argv + ["-lavfi", graph, "-f", "null", "-"]


def vmaf_scores(
    reference: torch.Tensor, distorted: torch.Tensor, *, timeout: float = 120.0
) -> dict[str, torch.Tensor]:
    """Per-image VMAF (``vmaf_v0.6.1``) and VMAF-NEG (``vmaf_v0.6.1neg``) from one ffmpeg/libvmaf run per image.

    Each image is scored as a one-frame video (zero motion) on BT.709 limited-range 4:4:4 Y'CbCr; see the module
    docstring for why and for what identical images score.

    Args:
        reference (`torch.Tensor` of shape `(N, 3, H, W)`): original images in [0, 1], H and W >= 17.
        distorted (`torch.Tensor` of shape `(N, 3, H, W)`): decoded images in [0, 1].
        timeout (`float`): seconds allowed for one image (a 768x512 image takes about 0.15 s).

    Returns:
        `dict[str, torch.Tensor]`: ``"vmaf"`` and ``"vmaf_neg"``, each float64 of shape `(N,)`, in [0, 100],
        higher = better (identical images: about 97.4 for both).

    Raises:
        ValueError: mismatched batches or images under 17 pixels a side.
        MetricToolUnavailable: no ffmpeg with libvmaf (``pip install imageio-ffmpeg``).
        MetricToolError: ffmpeg failed or ran over ``timeout``.

    Example:
        >>> x = torch.rand(1, 3, 64, 64)
        >>> {key: value.shape for key, value in vmaf_scores(x, x).items()}
        {'vmaf': torch.Size([1]), 'vmaf_neg': torch.Size([1])}
    """
    pairs = _image_pairs(reference, distorted, "vmaf", VMAF_MIN_SIDE, timeout)
    exe = _vmaf_ffmpeg()
    height, width = reference.shape[-2:]
    values = []
    for ref, dist in pairs:
        with private_tempdir("metric-") as tmp:
            (Path(tmp) / "ref.rgb").write_bytes(ref.tobytes())  # rgb24 rawvideo, row-major
            (Path(tmp) / "dist.rgb").write_bytes(dist.tobytes())
            _run_tool("vmaf", _vmaf_argv(exe, width, height), tmp, timeout)
            try:
                metrics = json.loads((Path(tmp) / "vmaf.json").read_text())["frames"][0]["metrics"]
                values.append([float(metrics[key]) for key in VMAF_MODELS])
            except (OSError, ValueError, KeyError, IndexError) as error:
                raise MetricToolError(f"vmaf: could not read libvmaf's JSON log: {error!r}") from error
    table = torch.tensor(values, dtype=torch.float64).reshape(-1, len(VMAF_MODELS))
    return {key: table[:, index] for index, key in enumerate(VMAF_MODELS)}


def vmaf(reference: torch.Tensor, distorted: torch.Tensor, *, timeout: float = 120.0) -> torch.Tensor:
    """Per-image VMAF (``vmaf_v0.6.1``), float64 of shape `(N,)`; see :func:`vmaf_scores`."""
    return vmaf_scores(reference, distorted, timeout=timeout)["vmaf"]


def vmaf_neg(reference: torch.Tensor, distorted: torch.Tensor, *, timeout: float = 120.0) -> torch.Tensor:
    """Per-image VMAF-NEG (``vmaf_v0.6.1neg``, no gain from enhancement), float64 `(N,)`; see :func:`vmaf_scores`."""
    return vmaf_scores(reference, distorted, timeout=timeout)["vmaf_neg"]
