"""Raw HEVC (x265) and VVC (vvenc) intra bitstreams through the static ffmpeg of ``imageio_ffmpeg``.

Data path (identical for both, settings recorded in ``CodecResult.settings``):

- RGB -> YCbCr with ffmpeg's own swscale (``scale`` filter, explicit matrix and range, Lanczos chroma
  resampling, accurate rounding) from rgb24 rawvideo on stdin; the decoder side uses the same matrix and range
  back to rgb24. Defaults: BT.709 matrix, limited ("tv") range, signalled in the VUI so any player shows the
  right colours. (Measured on a Kodak image: swscale's limited-range path round-trips ~1 dB more accurately
  than its full-range path at 4:2:0.)
- x265 and vvenc refuse pictures under 16 pixels a side and 4:2:0 needs even sizes, so the image is padded by
  edge replication to even sizes of at least 16 before coding. The conformance window cannot express odd
  sizes at 4:2:0, so the bitstream holds the padded picture; ``run`` crops it back and ``bpp`` counts every
  byte over the ORIGINAL pixels. ``decode(data, size=(w, h))`` crops a standalone decode.
- A raw Annex-B stream has no length field and ffmpeg's decoders conceal a stream cut inside slice data,
  so by default a 5-byte end-of-bitstream NAL unit (HEVC type 37 / VVC type 22, standard syntax, 40 bits per
  image) is appended and ``decode`` refuses streams that lack it (``end_of_bitstream=False`` turns both off).
- Tools run as argv lists (no shell) with a timeout and die with their parent (``utils.processes.run_tool``);
  bitstreams go through a temporary folder that is always removed (one left by a killed process is removed by
  the next run, ``utils.processes.private_tempdir``); failures raise ``CodecError`` carrying ffmpeg's stderr.
"""

from __future__ import annotations

import io
import subprocess
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..utils.processes import private_tempdir, run_tool
from .base import Codec, CodecError
from .registry import register_codec

_MATRICES = {"bt709": ("bt709", "bt709"), "bt601": ("bt601", "smpte170m")}  # swscale name, VUI tag
_RANGES = {"limited": "tv", "full": "pc"}
_SWS_FLAGS = "lanczos+accurate_rnd+full_chroma_int+full_chroma_inp"
MIN_SIDE = 16  # x265 and vvenc refuse smaller pictures


def ffmpeg_exe() -> str:
    """Path of the static ffmpeg shipped by ``imageio-ffmpeg`` (raises ``CodecError`` when missing)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as error:
        raise CodecError(f"no ffmpeg found ({error}); install it with `pip install imageio-ffmpeg`") from error


def _run_tool(codec: str, argv: list[str], stdin: bytes | None, timeout: float) -> subprocess.CompletedProcess:
    try:
        process = run_tool(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        stderr = (error.stderr or b"").decode(errors="replace")[-2000:]
        raise CodecError(
            f"{codec}: ffmpeg took over {timeout} s and was stopped (pass a larger `timeout`). {stderr}"
        ) from error
    except OSError as error:
        raise CodecError(f"{codec}: could not start ffmpeg at {argv[0]}: {error}") from error
    return process


@cache
def ffmpeg_listing(kind: str) -> str:
    """Text of ``ffmpeg -hide_banner -{kind}`` (e.g. ``"encoders"``, ``"decoders"``, ``"filters"``), cached per kind.

    Example:
        >>> " libx265 " in ffmpeg_listing("encoders")  # doctest: +SKIP
        True
    """
    return run_tool(
        [ffmpeg_exe(), "-hide_banner", f"-{kind}"], capture_output=True, timeout=60, check=False
    ).stdout.decode(errors="replace")


@cache
def _tool_version(encoder: str, pix_fmt: str, pattern: str) -> str:
    """Version of the encoder library, parsed from ffmpeg's verbose log of a 16x16 encode (cached)."""
    argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "verbose", "-f", "lavfi", "-i", "color=c=gray:s=16x16"]
    argv += ["-frames:v", "1", "-pix_fmt", pix_fmt, "-c:v", encoder]
    if encoder == "libx265":
        argv += ["-x265-params", "log-level=info"]
    argv += ["-f", "null", "-"]
    text = run_tool(argv, capture_output=True, timeout=60, check=False).stderr.decode(errors="replace")
    for line in text.splitlines():
        if pattern in line:
            return line.split(pattern, 1)[1].strip()
    return "unknown version"


@cache
def _ffmpeg_version() -> str:
    text = run_tool([ffmpeg_exe(), "-version"], capture_output=True, timeout=60, check=False).stdout
    return text.decode(errors="replace").split("\n", 1)[0].replace("ffmpeg version ", "").split(" ")[0]


class FFmpegCodec(Codec):
    """Base of the raw-bitstream codecs driven through ffmpeg (see the module docstring for the data path)."""

    encoder: ClassVar[str] = ""
    decoder: ClassVar[str] = ""
    raw_format: ClassVar[str] = ""
    pix_fmt: ClassVar[str] = ""
    end_of_bitstream_nal: ClassVar[bytes] = b""
    failure_hint: ClassVar[str] = ""
    common_settings: ClassVar[dict[str, Any]] = {
        "matrix": "bt709",
        "range": "limited",
        "end_of_bitstream": True,
        "timeout": 120.0,
    }

    @classmethod
    def availability_error(cls) -> str | None:
        try:
            encoders, decoders = ffmpeg_listing("encoders"), ffmpeg_listing("decoders")
        except (CodecError, OSError, subprocess.SubprocessError) as error:
            return str(error)
        if f" {cls.encoder} " not in encoders:
            return f"this ffmpeg ({ffmpeg_exe()}) has no {cls.encoder} encoder; install imageio-ffmpeg >= 0.5"
        if f" {cls.decoder} " not in decoders:
            return f"this ffmpeg ({ffmpeg_exe()}) has no native {cls.decoder} decoder"
        return None

    def _check_settings(self) -> None:
        if self.settings["matrix"] not in _MATRICES:
            raise ValueError(f"matrix must be one of {sorted(_MATRICES)}, got {self.settings['matrix']!r}")
        if self.settings["range"] not in _RANGES:
            raise ValueError(f"range must be one of {sorted(_RANGES)}, got {self.settings['range']!r}")
        if not float(self.settings["timeout"]) > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.settings['timeout']!r}")

    def _encoder_args(self, quality: int) -> list[str]:
        """ffmpeg output options selecting and configuring the encoder at ``quality``."""
        raise NotImplementedError

    def _colour_settings(self) -> dict[str, Any]:
        matrix, tag = _MATRICES[self.settings["matrix"]]
        return {
            "pix_fmt": self.pix_fmt,
            "matrix": matrix,
            "range": self.settings["range"],
            "vui": {"colorspace": tag, "color_range": _RANGES[self.settings["range"]], "color_primaries": "bt709"},
            "sws_flags": _SWS_FLAGS,
            "padding": f"edge replication to even sizes >= {MIN_SIDE}, cropped after decoding",
            "end_of_bitstream_nal": bool(self.settings["end_of_bitstream"]),
        }

    def _scale_filter(self, direction: str) -> str:
        matrix, _ = _MATRICES[self.settings["matrix"]]
        colour_range = _RANGES[self.settings["range"]]
        target = self.pix_fmt if direction == "out" else "rgb24"
        return f"scale={direction}_color_matrix={matrix}:{direction}_range={colour_range}:flags={_SWS_FLAGS},format={target}"

    def _encode(self, image: Image.Image, quality: int) -> bytes:
        pixels = np.asarray(image, dtype=np.uint8)
        height, width = pixels.shape[:2]
        pad_h = max(MIN_SIDE, height + height % 2) - height
        pad_w = max(MIN_SIDE, width + width % 2) - width
        # Edge replication (not reflection): it works for 1-pixel images and costs the fewest bits.
        pixels = np.ascontiguousarray(np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))
        matrix_tag = _MATRICES[self.settings["matrix"]][1]
        with private_tempdir("codec-") as tmp:
            out = Path(tmp) / f"out{self.extension}"
            argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
            argv += ["-s", f"{width + pad_w}x{height + pad_h}", "-i", "pipe:0", "-vf", self._scale_filter("out")]
            argv += ["-colorspace", matrix_tag, "-color_range", _RANGES[self.settings["range"]]]
            argv += ["-color_primaries", "bt709", "-frames:v", "1", *self._encoder_args(quality)]
            argv += ["-f", self.raw_format, "-y", str(out)]
            process = _run_tool(self.name, argv, pixels.tobytes(), float(self.settings["timeout"]))
            if process.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
                stderr = process.stderr.decode(errors="replace")[-2000:]
                raise CodecError(
                    f"{self.name}: ffmpeg/{self.encoder} failed (exit {process.returncode}){self.failure_hint}: {stderr}"
                )
            data = out.read_bytes()
        return data + self.end_of_bitstream_nal if self.settings["end_of_bitstream"] else data

    def _decode(self, data: bytes) -> Image.Image:
        if self.settings["end_of_bitstream"] and not data.endswith(self.end_of_bitstream_nal):
            raise CodecError(
                f"{self.name}: the stream does not end with the end-of-bitstream NAL unit, so it is truncated or "
                f"not from this codec; decode streams of other encoders with get_codec({self.name!r}, "
                "end_of_bitstream=False)"
            )
        with private_tempdir("codec-") as tmp:
            source = Path(tmp) / f"in{self.extension}"
            source.write_bytes(data)
            argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-err_detect", "explode"]
            argv += ["-xerror", "-f", self.raw_format, "-c:v", self.decoder, "-i", str(source), "-frames:v", "1"]
            argv += ["-vf", self._scale_filter("in"), "-f", "image2pipe", "-c:v", "png", "pipe:1"]
            process = _run_tool(self.name, argv, None, float(self.settings["timeout"]))
        stderr = process.stderr.decode(errors="replace")[-2000:]
        if process.returncode != 0 or not process.stdout:
            raise CodecError(f"{self.name}: ffmpeg's {self.decoder} decoder rejected the data (corrupt?): {stderr}")
        try:
            with Image.open(io.BytesIO(process.stdout), formats=["PNG"]) as decoded:
                return decoded.convert("RGB")
        except Exception as error:  # pragma: no cover - ffmpeg wrote something that is not a PNG
            raise CodecError(f"{self.name}: could not read ffmpeg's decoded picture: {error}. {stderr}") from error


@register_codec("hevc")
class HEVCCodec(FFmpegCodec):
    """HEVC/H.265 intra, x265 through ffmpeg, raw Annex-B ``.hevc`` (BPG's coding tools without its header).

    Quality mapping: ``qp = 51 - quality`` with quality in [0, 51] (x265 constant QP; higher quality = lower QP).
    Settings: ``preset`` ("medium"), ``tune`` (None), 8-bit 4:2:0, ``keyint=1`` (intra only), ``info=0`` (no
    x265 version SEI: it would add ~1-2 kbit to every image), plus the common colour/padding settings.
    """

    extension = ".hevc"
    quality_range = (0, 51)
    default_quality = 23  # qp 28, bpgenc's default
    sweep_qualities = (5, 9, 13, 17, 21, 25)  # qp 46 ... 26
    encoder, decoder, raw_format, pix_fmt = "libx265", "hevc", "hevc", "yuv420p"
    end_of_bitstream_nal = b"\x00\x00\x01\x4a\x01"  # nal_unit_type 37 (EOB_NUT), layer 0, temporal id 0
    default_settings = {"preset": "medium", "tune": None, **FFmpegCodec.common_settings}

    def _x265_params(self, quality: int) -> str:
        return f"qp={51 - quality}:keyint=1:info=0:log-level=error"

    def _encoder_args(self, quality: int) -> list[str]:
        args = ["-c:v", "libx265", "-preset", self.settings["preset"]]
        if self.settings["tune"]:
            args += ["-tune", self.settings["tune"]]
        return args + ["-x265-params", self._x265_params(quality)]

    def encoder_settings(self, quality: int) -> dict[str, Any]:
        return {
            "encoder": "libx265",
            "qp": 51 - quality,
            "preset": self.settings["preset"],
            "tune": self.settings["tune"],
            "x265-params": self._x265_params(quality),
            **self._colour_settings(),
        }

    @property
    def description(self) -> str:
        version = _tool_version("libx265", "yuv420p", "HEVC encoder version")
        return (
            f"HEVC intra (x265 {version}, ffmpeg {_ffmpeg_version()}): raw Annex-B, 8-bit 4:2:0, "
            f"preset {self.settings['preset']}, constant QP = 51 - quality, keyint=1, "
            f"{self.settings['matrix']} {self.settings['range']}-range YCbCr"
        )


@register_codec("vvc")
class VVCCodec(FFmpegCodec):
    """VVC/H.266 intra, vvenc through ffmpeg, raw Annex-B ``.266``, decoded by ffmpeg's native vvc decoder.

    Quality mapping: ``qp = 63 - quality`` with quality in [0, 63] (vvenc constant QP). vvenc takes 10-bit
    4:2:0 input only (yuv420p10le). Settings: ``preset`` ("fast": ~1.3-2.4 CPU-s per 768x512 Kodak image at
    qp 38-26; "medium" takes ~3.5x longer for ~0.2 dB at equal rate; "faster" ~2.5x less for ~0.4 dB less),
    ``qpa`` (False: no perceptual QP adaptation, so the QP is what the quality says), ``threads`` (4: vvenc's
    bitstream changes above 4 threads, so it is pinned for reproducibility), plus the common settings.

    Limitation: ffmpeg's libvvenc wrapper allocates width*height bytes for the coded picture, so a picture that
    needs more than 8 bpp (qualities near 63 on detailed images) fails with a ``CodecError`` saying so.
    """

    extension = ".266"
    quality_range = (0, 63)
    default_quality = 31  # qp 32, vvenc's default
    sweep_qualities = (17, 21, 25, 29, 33, 37)  # qp 46 ... 26
    encoder, decoder, raw_format, pix_fmt = "libvvenc", "vvc", "vvc", "yuv420p10le"
    end_of_bitstream_nal = b"\x00\x00\x01\x00\xb1"  # nal_unit_type 22 (EOB_NUT), layer 0, temporal id 0
    failure_hint = (
        " (ffmpeg's libvvenc wrapper holds at most width*height bytes per picture, so qualities needing more than "
        "8 bits per pixel, near qp 0 on detailed images, fail: lower the quality)"
    )
    default_settings = {"preset": "fast", "qpa": False, "threads": 4, **FFmpegCodec.common_settings}

    def _encoder_args(self, quality: int) -> list[str]:
        return [
            "-c:v",
            "libvvenc",
            "-threads",
            str(self.settings["threads"]),
            "-preset",
            self.settings["preset"],
            "-qp",
            str(63 - quality),
            "-qpa",
            "1" if self.settings["qpa"] else "0",
        ]

    def encoder_settings(self, quality: int) -> dict[str, Any]:
        return {
            "encoder": "libvvenc",
            "qp": 63 - quality,
            "preset": self.settings["preset"],
            "qpa": bool(self.settings["qpa"]),
            "threads": self.settings["threads"],
            **self._colour_settings(),
        }

    @property
    def description(self) -> str:
        version = _tool_version("libvvenc", "yuv420p10le", "libvvenc version:")
        return (
            f"VVC intra (vvenc {version}, ffmpeg {_ffmpeg_version()}, native vvc decoder): raw Annex-B, "
            f"10-bit 4:2:0, preset {self.settings['preset']}, constant QP = 63 - quality, "
            f"qpa={self.settings['qpa']}, {self.settings['matrix']} {self.settings['range']}-range YCbCr"
        )
