"""The codec registry: names -> codec classes, with a check of which ones work on this machine."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import Any

from .. import CODEC_PLUGINS
from .base import Codec, CodecError, UnknownCodecError

_REGISTRY: dict[str, type[Codec]] = {}

# Codecs of higher layers register themselves with @register_codec when their module is imported. The package root
# lists them (``rp_diffusers.CODEC_PLUGINS``: name -> module) and get_codec imports that module on the first request,
# so this layer names none of them.

# Names users may try that are not codecs here, with what to use instead.
_HINTS = {
    "bpg": "BPG is HEVC intra: use 'hevc' (raw x265 bitstream, BPG's default colour settings) or 'heic'",
    "jpg": "use 'jpeg'",
    "h265": "use 'hevc'",
    "h266": "use 'vvc'",
    "jpegxl": "use 'jxl'",
    "heif": "use 'heic'",
}


def register_codec(name: str) -> Callable[[type[Codec]], type[Codec]]:
    """Class decorator that registers a ``Codec`` subclass under ``name`` (higher layers and plugins use it too).

    Args:
        name: lower-case registry name; registering a taken name raises ``ValueError``.

    Example:
        >>> from rp_diffusers.codecs import PillowCodec, get_codec, unregister_codec
        >>> @register_codec("identity-png")
        ... class PNG(PillowCodec):
        ...     pillow_format, extension = "PNG", ".png"
        >>> type(get_codec("identity-png")).__name__
        'PNG'
        >>> unregister_codec("identity-png")
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"codec names are non-empty lower-case strings, got {name!r}")

    def decorator(cls: type[Codec]) -> type[Codec]:
        if not (isinstance(cls, type) and issubclass(cls, Codec)):
            raise TypeError(f"register_codec({name!r}) decorates Codec subclasses, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a codec named {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def unregister_codec(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plugins that replace a codec)."""
    _REGISTRY.pop(name, None)
    _availability.cache_clear()


@cache
def _availability(cls: type[Codec]) -> str | None:
    """``None`` when the library/tool of ``cls`` is present here, else why not (checked once per process)."""
    try:
        return cls.availability_error()
    except Exception as error:  # a broken install must not break listing the others
        return f"{type(error).__name__}: {error}"


def all_codecs() -> list[str]:
    """Every registered codec name, whether or not its library works here (sorted)."""
    return sorted(_REGISTRY)


def available_codecs() -> list[str]:
    """Names of the registered codecs whose library or tool works on this machine (sorted).

    Example:
        >>> "jpeg" in available_codecs()
        True
    """
    return [name for name in all_codecs() if _availability(_REGISTRY[name]) is None]


def get_codec(name: str, **settings: Any) -> Codec:
    """Build the codec registered as ``name`` with optional setting overrides.

    Args:
        name: one of ``all_codecs()`` (case-insensitive), e.g. ``"jpeg"``, ``"hevc"``.
        **settings: overrides of the codec's ``default_settings`` (e.g. ``subsampling=0`` for JPEG,
            ``preset="slow"`` for HEVC, ``timeout=30`` for the ffmpeg codecs).

    Returns:
        A ``Codec`` instance.

    Raises:
        UnknownCodecError: no codec of that name (the message lists the available ones).
        CodecError: the codec is registered but its library or tool does not work here (says what to install).
        ValueError: unknown or invalid settings.

    Example:
        >>> from rp_diffusers.evaluation import EXAMPLES_DIR
        >>> round(get_codec("jpeg", subsampling=0).run(EXAMPLES_DIR / "chalet.png", quality=90).bpp, 2)  # 4:4:4
        4.18
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY and key in CODEC_PLUGINS:
        importlib.import_module(CODEC_PLUGINS[key])
    if key not in _REGISTRY:
        hint = f" ({_HINTS[key]})" if key in _HINTS else ""
        raise UnknownCodecError(f"unknown codec {name!r}{hint}; available codecs: {', '.join(available_codecs())}")
    cls = _REGISTRY[key]
    reason = _availability(cls)
    if reason is not None:
        raise CodecError(f"codec {key!r} is not usable on this machine: {reason}")
    return cls(**settings)


def card_example(name: str | None) -> dict:
    """``{"example_quality", "example_extension"}`` of codec ``name`` for a model card's usage snippet
    (:func:`rp_diffusers.utils.hub.render_model_card`); an unknown or unavailable codec gives 40 and ``.bin``."""
    try:
        codec = get_codec(name)
    except (ValueError, LookupError, CodecError, TypeError):  # unknown name, missing tool: the card still renders
        return {"example_quality": 40, "example_extension": ".bin"}
    return {"example_quality": codec.default_quality, "example_extension": codec.extension}


def encoded_bits(job: tuple[str, Any, int]) -> int:
    """``(codec name, image, quality)`` -> bits of the real file (a top-level function: process pools map it).

    Example:
        >>> from PIL import Image
        >>> encoded_bits(("jpeg", Image.new("RGB", (16, 16)), 50)) > 0
        True
    """
    codec, image, quality = job
    return 8 * len(get_codec(codec).encode(image, quality))
