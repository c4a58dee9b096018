"""JPEG, WebP, AVIF, JPEG XL and HEIC through Pillow and its plugins (in-process, no temporary files).

Every encode starts from a metadata-free copy of the 8-bit RGB image: no EXIF, XMP or ICC profile is written,
so the file size is the coded image alone. The exact keyword arguments given to the library are what
``encoder_settings`` returns and ``CodecResult.settings`` records.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

import PIL
from PIL import Image, features

from .base import Codec, CodecError
from .registry import register_codec

_JPEG_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2, 0: 0, 1: 1, 2: 2}
_HEIC_CHROMA = {420: "4:2:0", 422: "4:2:2", 444: "4:4:4"}


class PillowCodec(Codec):
    """A codec that is one ``Image.save(format=...)`` call and one ``Image.open`` call."""

    save_format: ClassVar[str] = ""
    open_format: ClassVar[str] = ""

    def _save_kwargs(self, quality: int) -> dict[str, Any]:
        raise NotImplementedError

    def encoder_settings(self, quality: int) -> dict[str, Any]:
        return self._save_kwargs(quality)

    def _encode(self, image: Image.Image, quality: int) -> bytes:
        clean = Image.frombytes("RGB", image.size, image.convert("RGB").tobytes())  # no info: no EXIF/ICC
        buffer = io.BytesIO()
        try:
            clean.save(buffer, format=self.save_format, **self._save_kwargs(quality))
        except Exception as error:
            raise CodecError(f"{self.name}: encoding a {clean.size} image failed: {error}") from error
        return buffer.getvalue()

    def _decode(self, data: bytes) -> Image.Image:
        try:
            with Image.open(io.BytesIO(data), formats=[self.open_format]) as opened:
                opened.load()
                return opened.convert("RGB")
        except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, RuntimeError...
            raise CodecError(
                f"{self.name}: cannot decode {len(data)} bytes as {self.open_format} "
                f"(truncated or corrupt?): {type(error).__name__}: {error}"
            ) from error


@register_codec("jpeg")
class JPEGCodec(PillowCodec):
    """Baseline JPEG by libjpeg(-turbo) through Pillow; the surrogate DiffJPEG reproduces exactly these settings.

    Pillow call: ``image.save(f, format="JPEG", quality=q, subsampling=2, optimize=False, progressive=False)``:
    IJG standard quantisation tables scaled by ``quality`` (1-100, libjpeg's ``jpeg_set_quality``), BT.601
    full-range YCbCr, 4:2:0 chroma (``subsampling=2``), the standard Huffman tables (``optimize=False``),
    baseline sequential, no EXIF/ICC. ``subsampling`` (0/1/2 or "4:4:4"/"4:2:2"/"4:2:0") and ``optimize`` are
    overridable; the bytes equal Pillow's own ``save`` with the same arguments.
    """

    extension = ".jpg"
    quality_range = (1, 100)
    default_quality = 75  # Pillow's and libjpeg's default
    sweep_qualities = (5, 10, 20, 35, 55, 75)
    save_format = open_format = "JPEG"
    default_settings = {"subsampling": 2, "optimize": False, "progressive": False}

    @classmethod
    def availability_error(cls) -> str | None:
        return None if features.check("jpg") else "Pillow was built without libjpeg; reinstall pillow from wheels"

    def _check_settings(self) -> None:
        if self.settings["subsampling"] not in _JPEG_SUBSAMPLING:
            raise ValueError(f"subsampling must be 0, 1, 2, '4:4:4', '4:2:2' or '4:2:0', got {self.settings}")
        self.settings["subsampling"] = _JPEG_SUBSAMPLING[self.settings["subsampling"]]

    def _save_kwargs(self, quality: int) -> dict[str, Any]:
        return {
            "quality": quality,
            "subsampling": self.settings["subsampling"],
            "optimize": bool(self.settings["optimize"]),
            "progressive": bool(self.settings["progressive"]),
        }

    @property
    def description(self) -> str:
        chroma = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}[self.settings["subsampling"]]
        return (
            f"JPEG (Pillow {PIL.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}): 8-bit "
            f"{'progressive' if self.settings['progressive'] else 'baseline'}, {chroma} chroma, IJG tables scaled "
            f"by quality, optimize={bool(self.settings['optimize'])}, no EXIF/ICC"
        )


@register_codec("webp")
class WebPCodec(PillowCodec):
    """Lossy WebP (VP8 intra) by libwebp through Pillow: ``quality`` 0-100, ``method`` 4 (0 fast - 6 slow), 4:2:0."""

    extension = ".webp"
    quality_range = (0, 100)
    default_quality = 75  # libwebp's default
    sweep_qualities = (0, 5, 20, 40, 60, 80)
    save_format = open_format = "WEBP"
    default_settings = {"method": 4}

    @classmethod
    def availability_error(cls) -> str | None:
        return None if features.check("webp") else "Pillow was built without libwebp; reinstall pillow from wheels"

    def _save_kwargs(self, quality: int) -> dict[str, Any]:
        return {"quality": quality, "method": int(self.settings["method"]), "lossless": False, "exact": False}

    @property
    def description(self) -> str:
        return (
            f"WebP lossy (Pillow {PIL.__version__}, libwebp {features.version('webp')}): 8-bit 4:2:0, "
            f"method={self.settings['method']}"
        )


@register_codec("avif")
class AVIFCodec(PillowCodec):
    """AVIF (AV1 intra) by libavif + libaom through Pillow: ``quality`` 0-100, ``speed`` 6, 8-bit 4:2:0."""

    extension = ".avif"
    quality_range = (0, 100)
    default_quality = 75  # Pillow's default
    sweep_qualities = (10, 25, 40, 50, 60, 75)
    save_format = open_format = "AVIF"
    default_settings = {"speed": 6, "subsampling": "4:2:0", "range": "full"}

    @classmethod
    def availability_error(cls) -> str | None:
        if not features.check("avif"):
            return "Pillow was built without libavif (Pillow >= 11.3 wheels include it)"
        from PIL import _avif

        return None if _avif.encoder_codec_available("aom") else "libavif here has no AV1 encoder (aom)"

    def _save_kwargs(self, quality: int) -> dict[str, Any]:
        return {
            "quality": quality,
            "speed": int(self.settings["speed"]),
            "subsampling": self.settings["subsampling"],
            "range": self.settings["range"],
            "codec": "aom",
        }

    @property
    def description(self) -> str:
        from PIL import _avif

        return (
            f"AVIF (Pillow {PIL.__version__}, libavif {features.version('avif')}, {_avif.codec_versions()}): "
            f"8-bit {self.settings['subsampling']}, speed={self.settings['speed']}, {self.settings['range']} range"
        )


@register_codec("jxl")
class JXLCodec(PillowCodec):
    """JPEG XL (VarDCT) by libjxl through pillow-jxl-plugin: ``quality`` 0-100 (libjxl maps it to a
    Butteraugli distance), ``effort`` 7, bare codestream (no container)."""

    extension = ".jxl"
    quality_range = (0, 99)  # libjxl refuses 100 (distance 0) outside lossless mode
    default_quality = 75  # the plugin's 90 is near-visually-lossless (~2 bpp)
    sweep_qualities = (0, 20, 40, 60, 75, 85)
    save_format = open_format = "JXL"
    default_settings = {"effort": 7, "decoding_speed": 0}

    @classmethod
    def availability_error(cls) -> str | None:
        try:
            import pillow_jxl  # noqa: F401 (registers the JXL plugin)
        except ImportError as error:
            return f"{error}; install it with `pip install pillow-jxl-plugin`"
        return None

    def _save_kwargs(self, quality: int) -> dict[str, Any]:
        return {
            "quality": quality,
            "effort": int(self.settings["effort"]),
            "decoding_speed": int(self.settings["decoding_speed"]),
            "lossless": False,
            "use_container": False,
        }

    @property
    def description(self) -> str:
        from importlib.metadata import version

        return (
            f"JPEG XL VarDCT (pillow-jxl-plugin {version('pillow-jxl-plugin')}, libjxl 0.12 vendored): "
            f"effort={self.settings['effort']}, decoding_speed={self.settings['decoding_speed']}, XYB, 8-bit input"
        )


@register_codec("heic")
class HEICCodec(PillowCodec):
    """HEIC: HEVC intra (x265) in a HEIF container by libheif through pillow-heif, the stand-in for BPG.

    ``quality`` 0-100 is libheif's (mapped by its x265 plugin to a CRF); chroma 4:2:0; x265 preset ``slow``
    and tune ``ssim`` (libheif's own defaults, passed explicitly so they stay fixed); 8-bit; BT.601 full-range
    YCbCr signalled in an nclx box (pillow-heif's default).
    """

    extension = ".heic"
    quality_range = (0, 100)
    default_quality = 50  # libheif's default
    sweep_qualities = (10, 18, 26, 34, 42, 50)
    save_format = open_format = "HEIF"
    default_settings = {"chroma": 420, "preset": "slow", "tune": "ssim"}

    @classmethod
    def availability_error(cls) -> str | None:
        try:
            import pillow_heif
        except ImportError as error:
            return f"{error}; install it with `pip install pillow-heif`"
        info = pillow_heif.libheif_info()
        if "x265" not in info.get("encoders", {}) or not info.get("decoders"):
            return f"pillow-heif's libheif lacks an x265 encoder or an HEVC decoder: {info}"
        return None  # no side effect: the HEIF plugin is registered once, by utils.image.register_image_plugins

    def _check_settings(self) -> None:
        if self.settings["chroma"] not in (420, 422, 444):
            raise ValueError(f"chroma must be 420, 422 or 444, got {self.settings['chroma']!r}")

    def _save_kwargs(self, quality: int) -> dict[str, Any]:
        return {
            "quality": quality,
            "chroma": self.settings["chroma"],
            "enc_params": {"preset": self.settings["preset"], "tune": self.settings["tune"]},
            "save_nclx_profile": True,
            "matrix_coefficients": 6,  # BT.601
            "full_range_flag": 1,
        }

    @property
    def description(self) -> str:
        import pillow_heif

        info = pillow_heif.libheif_info()
        return (
            f"HEIC (pillow-heif {pillow_heif.__version__}, libheif {info['libheif']}, {info['HEIF']}, "
            f"decoder {', '.join(info['decoders'].values())}): 8-bit {_HEIC_CHROMA[self.settings['chroma']]} chroma, "
            f"x265 preset {self.settings['preset']}, "
            f"tune {self.settings['tune']}, BT.601 full range"
        )
