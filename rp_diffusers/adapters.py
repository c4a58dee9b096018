"""Rate-perception LoRA adapters: names, target modules, configs, and save/load through diffusers' LoRA API.

One adapter per (codec, lambda) operating point, named ``rp_{codec}_lambda_{value}``.
peft keeps adapters in ``nn.ModuleDict``s, whose keys cannot hold a dot, so the decimal point of lambda is spelled
``p`` (``rp_bpg_lambda_0p5`` for lambda 0.5) and a minus sign ``m`` (``rp_jpeg_lambda_1em05`` for 1e-05); every
function here also accepts the dotted spelling and normalises it.

Files: :func:`save_rp_adapter` writes ``pytorch_lora_weights.safetensors`` in diffusers' pipeline format (keys
prefixed ``unet.``, LoraConfig in the safetensors metadata), so ``pipe.load_lora_weights(folder)`` loads it, and
``rp_adapter.json`` with the codec, lambda and rank.

``rp_adapter.json`` is the one record of an adapter (codec, lambda, rank, training facts, held-out ``validation``):
a saved pipeline keeps its adapters as ``adapters/<name>/`` folders and nothing else about them (its
``model_index.json`` lists none); :meth:`RPLoraLoaderMixin.available_adapters`, :meth:`~RPLoraLoaderMixin.adapter_for`,
:func:`saved_adapter_infos` and :func:`validation_table` all read these files.
"""

from __future__ import annotations

import json
import os
import re
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin

from .utils.hub import PICKLE_SUFFIXES, resolve_optional_file

# One re-entrant lock per UNet (weakly keyed: it goes with the UNet), for ``RPLoraLoaderMixin.adapter_lock``.
_ADAPTER_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ADAPTER_LOCKS_GUARD = threading.Lock()

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_INFO_NAME = "rp_adapter.json"
ADAPTERS_FOLDER = "adapters"  # inside a saved pipeline: adapters/<name>/ and adapters/active_adapters.json
ACTIVE_ADAPTERS_NAME = "active_adapters.json"
BASE_VALIDATION_NAME = "base_validation.json"  # adapters/base_validation.json: the base model's verdict per codec
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_RANK = 8
RECORD_KEYS = ("codec", "lambda", "rank", "lora_alpha")  # what available_adapters() shows of each rp_adapter.json

_NAME_PATTERN = re.compile(r"^rp_(?P<codec>[A-Za-z0-9][A-Za-z0-9_\-]*?)_lambda_(?P<value>[0-9.pem+\-]+)$")


def _format_value(lam: float) -> str:
    return f"{float(lam):g}".replace("+", "").replace("-", "m").replace(".", "p")


def format_adapter_name(codec: str, lam: float) -> str:
    """Adapter name of a (codec, lambda) operating point.

    Example:
        >>> format_adapter_name("bpg", 0.5)
        'rp_bpg_lambda_0p5'
    """
    if not codec or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", codec):
        raise ValueError(f"codec name {codec!r} must be letters, digits, '_' or '-' (e.g. 'jpeg', 'bpg')")
    lam = float(lam)
    if not lam >= 0:
        raise ValueError(f"lambda must be a non-negative number, got {lam}")
    return f"rp_{codec.lower()}_lambda_{_format_value(lam)}"


def parse_adapter_name(name: str) -> tuple[str, float]:
    """``"rp_{codec}_lambda_{value}"`` (either spelling of the decimal point) -> ``(codec, lambda)``.

    Example:
        >>> parse_adapter_name("rp_jpeg_lambda_0.25")
        ('jpeg', 0.25)
    """
    match = _NAME_PATTERN.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"{name!r} is not an rp adapter name; expected 'rp_{{codec}}_lambda_{{value}}', e.g. 'rp_jpeg_lambda_0p5'"
        )
    text = match["value"].replace("p", ".").replace("em", "e-").replace("m", "-")
    try:
        return match["codec"].lower(), float(text)
    except ValueError as error:
        raise ValueError(f"cannot read lambda {match['value']!r} in adapter name {name!r}") from error


def normalize_adapter_name(name: str) -> str:
    """The canonical (dot-free) spelling of an rp adapter name; other names are returned unchanged."""
    try:
        return format_adapter_name(*parse_adapter_name(name))
    except ValueError:
        return name


def rp_lora_config(
    rank: int = DEFAULT_RANK,
    alpha: float | None = None,
    target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGET_MODULES,
    dropout: float = 0.0,
    init_lora_weights: bool | str = "gaussian",
):
    """A ``peft.LoraConfig`` for an R-P adapter on the UNet's attention projections.

    Args:
        rank: LoRA rank r (the paper's range: 4-16).
        alpha: LoRA alpha; ``None`` uses ``rank`` (scale 1).
        target_modules: module-name suffixes to adapt; the default covers ``to_q``, ``to_k``, ``to_v``, ``to_out.0``
            of every attention block.
        dropout: LoRA dropout during training.
        init_lora_weights: peft's initialisation (``"gaussian"``: B = 0, so a new adapter starts as the identity).

    Example:
        >>> unet.add_adapter(rp_lora_config(rank=4), adapter_name=format_adapter_name("jpeg", 0.5))  # doctest: +SKIP
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        init_lora_weights=init_lora_weights,
        target_modules=list(target_modules),
    )


def add_rp_adapter(unet, codec: str, lam: float, rank: int = DEFAULT_RANK, **config_kwargs) -> str:
    """Add a fresh R-P adapter to ``unet`` (training), make it the active one, and return its name."""
    name = format_adapter_name(codec, lam)
    unet.add_adapter(rp_lora_config(rank=rank, **config_kwargs), adapter_name=name)
    unet.set_adapters([name])
    return name


def save_rp_adapter(
    unet,
    output_dir: str | os.PathLike,
    adapter_name: str,
    codec: str | None = None,
    lam: float | None = None,
    rank: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Write one adapter of ``unet`` as a folder that ``pipe.load_lora_weights(output_dir)`` loads.

    Args:
        unet: a ``UNet2DConditionModel`` holding the peft adapter ``adapter_name``.
        output_dir: folder to write ``pytorch_lora_weights.safetensors`` and ``rp_adapter.json`` into.
        adapter_name: the adapter to save (dotted spelling accepted).
        codec, lam: the operating point; read from ``adapter_name`` when omitted (``None`` for other names).
        rank: recorded rank; the adapter's own ``r`` when omitted.
        extra: more JSON-serialisable facts to record (training steps, quality range, base model, ...).

    Returns:
        The folder as a ``Path``.
    """
    from peft.utils import get_peft_model_state_dict

    adapter_name = normalize_adapter_name(adapter_name)
    configs = getattr(unet, "peft_config", {})
    if adapter_name not in configs:
        raise ValueError(f"the UNet has no adapter {adapter_name!r}; it has {sorted(configs)}")
    if codec is None or lam is None:
        try:
            parsed_codec, parsed_lam = parse_adapter_name(adapter_name)
        except ValueError:  # a LoRA that is not an R-P operating point: record what is known
            parsed_codec, parsed_lam = None, None
        codec = parsed_codec if codec is None else codec
        lam = parsed_lam if lam is None else lam
    config = configs[adapter_name]
    layers = {
        k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()
    }
    metadata = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.to_dict().items()}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        output_dir, unet_lora_layers=layers, unet_lora_adapter_metadata=metadata, weight_name=LORA_WEIGHT_NAME
    )
    info = {
        "adapter_name": adapter_name,
        "codec": codec,
        "lambda": None if lam is None else float(lam),
        "rank": int(rank if rank is not None else config.r),
        "lora_alpha": float(config.lora_alpha),
        "target_modules": sorted(config.target_modules) if config.target_modules else None,
        **(extra or {}),
    }
    (output_dir / ADAPTER_INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return output_dir


def read_adapter_info(source: str | os.PathLike, subfolder: str | None = None, **hub_kwargs) -> dict | None:
    """Read ``rp_adapter.json`` from a local folder or a Hub repo; ``None`` when it has none (a plain LoRA)."""
    if Path(source).is_file():
        return None  # a single weights file: no info next to it
    path = resolve_optional_file(source, ADAPTER_INFO_NAME, subfolder=subfolder, **hub_kwargs)
    return json.loads(path.read_text()) if path is not None else None


def adapter_record(name: str, info: dict | None, lora_config=None) -> dict:
    """The ``{codec, lambda, rank, lora_alpha}`` of adapter ``name``, read from its ``rp_adapter.json`` content.

    Where ``info`` has no codec (a plain LoRA), codec and lambda come from the name (``None`` for other names);
    rank and alpha missing from ``info`` come from ``lora_config`` (the loaded adapter's ``peft`` config), if given.

    Example:
        >>> adapter_record("rp_jpeg_lambda_0p5", {"codec": "jpeg", "lambda": 0.5, "rank": 4, "train_steps": 10})
        {'codec': 'jpeg', 'lambda': 0.5, 'rank': 4}
    """
    info = info or {}
    record = {key: info[key] for key in RECORD_KEYS if key in info}
    if "codec" not in record:
        try:
            record["codec"], record["lambda"] = parse_adapter_name(name)
        except ValueError:
            record.update(codec=None, **{"lambda": None})
    if lora_config is not None:
        record.setdefault("rank", int(lora_config.r))
        record.setdefault("lora_alpha", float(lora_config.lora_alpha))
    return record


def saved_adapters_dir(source: str | os.PathLike, **hub_kwargs) -> Path | None:
    """The local ``adapters/`` folder of a saved pipeline (a folder, or a Hub repo: its ``adapters/`` JSON and
    safetensors files are downloaded), or ``None`` when it has none (or the repo cannot be reached or is not cached).
    """
    if Path(source).exists():
        folder = Path(source) / ADAPTERS_FOLDER
        return folder if folder.is_dir() else None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    allowed = {k: hub_kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in hub_kwargs}
    patterns = [f"{ADAPTERS_FOLDER}/*.json", f"{ADAPTERS_FOLDER}/*/{LORA_WEIGHT_NAME}"]
    try:
        root = Path(snapshot_download(str(source), allow_patterns=patterns, **allowed))
    except (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    ):
        return None
    folder = root / ADAPTERS_FOLDER
    return folder if folder.is_dir() else None


def _adapter_dirs(adapters_dir: Path | None) -> dict[str, Path]:
    """``adapters/<name>/`` folders holding an adapter (its weights or its ``rp_adapter.json``), by name."""
    if adapters_dir is None:
        return {}
    return {
        path.name: path
        for path in sorted(adapters_dir.iterdir())
        if path.is_dir() and any((path / name).is_file() for name in (LORA_WEIGHT_NAME, ADAPTER_INFO_NAME))
    }


def saved_adapter_infos(source: str | os.PathLike, **hub_kwargs) -> dict[str, dict]:
    """The adapters saved in a pipeline folder or Hub repo, without loading them: name -> its ``rp_adapter.json``.

    Sorted by name; ``{}`` for an adapter folder without ``rp_adapter.json``. This is what ``from_pretrained``
    loads and what :meth:`RPLoraLoaderMixin.available_adapters` then reports.
    """
    infos = {}
    for name, path in _adapter_dirs(saved_adapters_dir(source, **hub_kwargs)).items():
        info_path = path / ADAPTER_INFO_NAME
        infos[name] = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return infos


def saved_base_validation(source: str | os.PathLike, **hub_kwargs) -> dict:
    """The base model's held-out verdicts saved with a pipeline (``adapters/base_validation.json``): codec -> one."""
    folder = saved_adapters_dir(source, **hub_kwargs)
    path = folder / BASE_VALIDATION_NAME if folder is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


VALIDATION_TABLE_METRICS = ("ssimulacra2", "butteraugli-3norm", "vmaf-neg", "psnr-rgb")


def validation_table(source: str | os.PathLike, base_trained_on: str = "-", **hub_kwargs) -> str:
    """Markdown table of the held-out verdicts saved with a pipeline: the base model per codec, then each adapter.

    Read from ``adapters/base_validation.json`` and each adapter's ``rp_adapter.json`` (``validation``), the
    records :meth:`RPLoraLoaderMixin.adapter_for` decides from. ``base_trained_on`` fills the base rows' "trained
    on" cell. ``python benchmarks/compact_model.py --validation_table`` prints it for the shipped model (the table
    of ``training/README.md`` and of its model card).
    """
    entries = [
        (f"base + {codec}", base_trained_on, verdict)
        for codec, verdict in sorted(saved_base_validation(source, **hub_kwargs).items())
    ]
    for name, info in saved_adapter_infos(source, **hub_kwargs).items():
        verdict = info.get("validation")
        if verdict:
            label = f"{info.get('adapter_name') or name} + {verdict.get('codec') or info.get('codec')}"
            entries.append((label, verdict.get("trained_on") or "-", verdict))
    rows = [
        "| configuration | trained on | SSIMULACRA2 | Butteraugli 3-norm | VMAF-NEG | PSNR | held-out verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, trained_on, verdict in entries:
        rates = verdict.get("bd_rate") or {}
        cells = [
            f"{rates[m]:+.2f}%" if isinstance(rates.get(m), (int, float)) else "-" for m in VALIDATION_TABLE_METRICS
        ]
        outcome = "**wins (default)**" if verdict.get("wins") else "loses"
        rows.append(f"| {label} | {trained_on} | " + " | ".join(cells) + f" | {outcome} |")
    return "\n".join(rows)


def lora_state_dict_for_unet(
    state_dict: dict[str, torch.Tensor], metadata: dict | None
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Give keys (and LoraConfig metadata) of a UNet-only LoRA file the ``unet.`` prefix that pipelines expect.

    ``unet.save_lora_adapter`` writes unprefixed keys; ``pipe.load_lora_weights`` looks for ``unet.``-prefixed ones.
    Files that already carry a ``unet.`` or ``text_encoder.`` prefix, or kohya-style ``lora_unet_`` keys, are
    returned unchanged.
    """
    if any(k.startswith(("unet.", "text_encoder.", "lora_unet_", "lora_te")) for k in state_dict):
        return state_dict, metadata
    state_dict = {f"unet.{k}": v for k, v in state_dict.items()}
    if metadata is not None and not any(k.startswith("unet.") for k in metadata):
        metadata = {f"unet.{k}": v for k, v in metadata.items()}
    return state_dict, metadata


@contextmanager
def base_weights_only(unet: torch.nn.Module):
    """While active, ``unet.state_dict()`` holds base weights only: LoRA tensors dropped, ``base_layer`` unwrapped."""

    def hook(module, state_dict, prefix, local_metadata):
        for key in list(state_dict):
            if ".lora_" in key:
                del state_dict[key]
            elif ".base_layer." in key:
                state_dict[key.replace(".base_layer.", ".")] = state_dict.pop(key)

    handle = unet.register_state_dict_post_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class AdapterChoice:
    """What :meth:`RPLoraLoaderMixin.adapter_for` decided for a codec.

    Attributes:
        adapter: the adapter to run, or ``None`` (the base model when ``preprocess``, else nothing).
        preprocess: whether the network runs; ``False``: no network (no adapter, nor the base model, wins for this
            codec).
        reason: one line for the user, e.g. ``"webp alone (no adapter of this model beats webp alone ...)"``.
        codec_step: a quality-aware step the model validated for this codec, run on the pixels just before the
            unmodified encoder at the quality it encodes at (``rp_diffusers.codecs.prequantize``, e.g. the JPEG
            dead zone), or ``None``. It runs after the network, or on the original when ``preprocess`` is False.
    """

    adapter: str | None
    preprocess: bool
    reason: str
    codec_step: Any = None

    @property
    def codec_alone(self) -> bool:
        """True when nothing runs before the codec: no network and no codec step."""
        return not self.preprocess and self.codec_step is None

    @property
    def label(self) -> str:
        """A short name of what runs, for curve names: ``"base"``, an adapter, ``"deadzone"``, ``"base+deadzone"``."""
        parts = [self.adapter or "base"] if self.preprocess else []
        if self.codec_step is not None:
            parts.append(self.codec_step.name.rsplit("_", 1)[-1])
        return "+".join(parts)


def choose_adapter(pipe, codec: str, asked: str | os.PathLike | None = None) -> AdapterChoice:
    """What to run before ``codec``: the adapter a user asked for, else the pipeline's policy (``adapter_for``).

    The one selection rule of ``compress``, ``evaluate`` and the Space.

    Args:
        pipe: an :class:`RPLoraLoaderMixin` pipeline (``RPPreprocessPipeline``).
        codec: the codec's name.
        asked: ``None`` (the policy), an adapter name of the model, or a folder of LoRA weights
            (``finetune_rp.py``'s output): it is loaded, replacing the model's adapter of the same name.

    Raises:
        ValueError: the name is not one of the model's adapters, or the folder holds no weights the UNet accepts.
    """
    if asked is None or asked == "":
        return pipe.adapter_for(codec)
    return _asked_adapter(pipe, asked)  # that adapter alone: its combination with a codec step was not validated


def _asked_adapter(pipe, asked: str | os.PathLike) -> AdapterChoice:
    if Path(asked).is_dir():
        name = (read_adapter_info(asked) or {}).get("adapter_name")
        if name in pipe.available_adapters():  # the folder's weights replace the model's copy of that adapter
            pipe.delete_adapters(name)
        before = set(pipe.available_adapters())
        pipe.load_lora_weights(asked)
        added = sorted(set(pipe.available_adapters()) - before)
        if not added:
            raise ValueError(f"{asked} holds no LoRA weights the UNet accepts")
        return AdapterChoice(added[0], True, f"{added[0]} (loaded from {asked}, asked for with --adapter)")
    name = normalize_adapter_name(str(asked))
    if name not in pipe.available_adapters():
        known = ", ".join(pipe.available_adapters()) or "none"
        raise ValueError(f"--adapter {str(asked)!r} is neither a folder nor one of the model's adapters ({known})")
    return AdapterChoice(name, True, f"{name} (asked for with --adapter)")


def _headline_mean(record: dict) -> float | None:
    """Mean of a record's headline BD-rates (``None`` without a validation record or numbers)."""
    validation = record.get("validation") or {}
    rates = validation.get("bd_rate") or {}
    values = [rates[m] for m in validation.get("headline") or list(rates) if isinstance(rates.get(m), (int, float))]
    return sum(values) / len(values) if values else None


def _validation_summary(record: dict) -> str:
    validation = record.get("validation") or {}
    rates = validation.get("bd_rate") or {}
    headline = validation.get("headline") or list(rates)
    parts = [f"{m} {rates[m]:+.1f}%" for m in headline if isinstance(rates.get(m), (int, float))]
    where = validation.get("images", "validation")
    return f"BD-rate on {where}: " + ", ".join(parts) if parts else "no validation numbers"


class RPLoraLoaderMixin(StableDiffusionLoraLoaderMixin):
    """diffusers' SD LoRA loader for UNet-only R-P adapters, keeping each one's ``rp_adapter.json`` record.

    For pipelines with a ``unet``. Each loaded adapter's record is the content of its ``rp_adapter.json`` (kept up
    to date by every method here, ``{}`` for a LoRA loaded without one): :meth:`available_adapters`,
    :meth:`adapter_info` and :meth:`adapter_for` read it, :meth:`save_adapters` writes it back as
    ``adapters/<name>/rp_adapter.json`` and :meth:`load_saved_adapters` reads it from there. The pipeline's config
    (``model_index.json``) holds no copy.
    """

    def available_adapters(self) -> dict[str, dict]:
        """Adapters loaded on the UNet -> their {codec, lambda, rank, lora_alpha}, from each one's record
        (:func:`adapter_record`; an empty dict for an adapter added to the UNet outside these methods)."""
        loaded = getattr(self.unet, "peft_config", {})
        infos = getattr(self, "_adapter_info", {})
        return {name: adapter_record(name, infos[name], loaded[name]) if name in infos else {} for name in loaded}

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None, **kwargs):
        """Load a UNet LoRA (folder, Hub repo, file or state dict) as an adapter and record its operating point.

        Accepts diffusers' pipeline format (``unet.``-prefixed keys, as :func:`~rp_diffusers.adapters.save_rp_adapter`
        and the training examples write) and the bare format of ``unet.save_lora_adapter``. With no ``adapter_name``,
        the name in the folder's ``rp_adapter.json`` is used. Text-encoder LoRAs are refused: the prompt is encoded
        once and the text encoder is usually dropped. Weights load from ``.safetensors`` only: a pickled file
        (``pytorch_lora_weights.bin``, ``.pt``, ``.ckpt``) is refused, never unpickled.
        """
        source = pretrained_model_name_or_path_or_dict
        if kwargs.get("use_safetensors") is False:
            raise ValueError("rp-diffusers loads LoRA weights from .safetensors only: drop use_safetensors=False")
        kwargs["use_safetensors"] = True  # diffusers' default falls back to unpickling a .bin
        if not isinstance(source, dict):
            weight_name = kwargs.get("weight_name")
            local = Path(source) / (kwargs.get("subfolder") or "")
            pickled = []
            if weight_name is not None and not str(weight_name).endswith(".safetensors"):
                pickled = [str(weight_name)]
            elif local.is_file() and local.suffix != ".safetensors":
                pickled = [local.name]
            elif local.is_dir() and weight_name is None and not any(local.glob("*.safetensors")):
                pickled = sorted(p.name for p in local.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickled:
                where = source if local.is_file() else ", ".join(str(local / name) for name in pickled)
                raise ValueError(
                    f"{where} is not a .safetensors file; rp-diffusers never unpickles LoRA weights (loading a pickle "
                    "can run code from the file). Convert it once, where you trust the file: "
                    f"safetensors.torch.save_file(torch.load(PATH, weights_only=True), '{LORA_WEIGHT_NAME}'), then "
                    "load the folder again"
                )
        info = None
        if not isinstance(source, dict):
            info = read_adapter_info(source, **kwargs)
        adapter_name = adapter_name or (info or {}).get("adapter_name")
        adapter_name = normalize_adapter_name(adapter_name) if adapter_name else None
        if isinstance(source, dict):
            source = dict(source)
        hotswap = kwargs.pop("hotswap", False)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        state_dict, network_alphas, metadata = self.lora_state_dict(source, return_lora_metadata=True, **kwargs)
        state_dict, metadata = lora_state_dict_for_unet(state_dict, metadata)
        if any(key.startswith("text_encoder.") for key in state_dict):
            raise ValueError(
                "text-encoder LoRA is not supported: the prompt is encoded once; train UNet-only adapters"
            )
        if not all("lora" in key for key in state_dict):
            raise ValueError("invalid LoRA checkpoint: every parameter name must contain 'lora'")
        before = set(getattr(self.unet, "peft_config", {}))
        self.load_lora_into_unet(
            state_dict,
            network_alphas=network_alphas,
            unet=self.unet,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )
        added = set(getattr(self.unet, "peft_config", {})) - before
        for name in added or ({adapter_name} if adapter_name else set()):
            self._record_adapter(name, info)

    def _record_adapter(self, name: str, info: dict | None) -> None:
        self._adapter_info = {**getattr(self, "_adapter_info", {}), name: dict(info or {})}
        self._adapter_weights = {**getattr(self, "_adapter_weights", {}), name: 1.0}

    def set_adapters(self, adapter_names: list[str] | str, adapter_weights: float | list[float] | None = None):
        """Activate adapter(s) with weights (``None``: 1 each); dotted names such as ``rp_jpeg_lambda_0.5`` work.

        Waits for a call that is running on another thread (the selection lives on the UNet's layers)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        names = [normalize_adapter_name(name) for name in names]
        weights = adapter_weights if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
        with self.adapter_lock:
            super().set_adapters(names, weights)
            self._adapter_weights = {name: 1.0 if w is None else float(w) for name, w in zip(names, weights)}

    @property
    def adapter_lock(self) -> threading.RLock:
        """The lock on the adapter selection of this pipeline's UNet, held by every call and every ``set_adapters``.

        The selection lives on the UNet's layers while a call runs, so calls from several threads (a Gradio
        Space, a thread pool) take turns, also on pipelines that share one UNet (``components=``); each call
        still runs with its own adapters. The lock is kept outside the pipeline, which stays copyable and
        picklable.
        """
        with _ADAPTER_LOCKS_GUARD:
            lock = _ADAPTER_LOCKS.get(self.unet)
            if lock is None:
                lock = _ADAPTER_LOCKS[self.unet] = threading.RLock()
        return lock

    @contextmanager
    def scoped_adapters(self, adapter_names: list[str] | str | None, adapter_weights=None):
        """Use ``adapter_names`` (``[]``: none, the base model) inside the block; restore the selection after it.

        ``None`` leaves the current selection as it is. The pipeline's ``__call__`` uses this, so that
        ``pipe(image, adapter_name=...)`` never changes what later calls run. The block holds
        :attr:`adapter_lock`, so calls on other threads wait rather than change the selection under this one.
        """
        with self.adapter_lock:
            if adapter_names is None:
                yield
            else:
                with self._scoped_selection(adapter_names, adapter_weights):
                    yield

    @contextmanager
    def _scoped_selection(self, adapter_names: list[str] | str, adapter_weights=None):
        layers = self._lora_layers()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if names and not layers:
            raise ValueError(f"adapter {names[0]!r} is not loaded: this pipeline has no adapters")
        before_enabled = not any(layer.disable_adapters for layer in layers)
        before_names = list(self.get_active_adapters()) if layers else []
        before_weights = dict(getattr(self, "_adapter_weights", {}))
        try:
            if names:
                self.enable_lora()
                self.set_adapters(names, adapter_weights)
            elif layers:
                self.disable_lora()
            yield
        finally:
            if layers:
                if before_names:
                    self.set_adapters(before_names, [before_weights.get(name, 1.0) for name in before_names])
                self._adapter_weights = before_weights
                if before_enabled:
                    self.enable_lora()
                else:
                    self.disable_lora()

    def adapter_info(self, name: str) -> dict:
        """Everything the adapter's ``rp_adapter.json`` recorded (training record, ``validation``), ``{}`` if none.

        That file is the one place an adapter's facts live: :meth:`save_adapters` writes it back unchanged.
        """
        return dict(getattr(self, "_adapter_info", {}).get(normalize_adapter_name(name), {}))

    def base_validation(self, codec: str | None = None) -> dict:
        """The base model's held-out verdicts (``adapters/base_validation.json``): codec -> record, or one codec's."""
        verdicts = dict(getattr(self, "_base_validation", None) or {})
        return dict(verdicts.get(codec) or {}) if codec is not None else verdicts

    def set_base_validation(self, codec: str, verdict: dict) -> None:
        """Record the base model's verdict for ``codec`` (saved with the pipeline; :meth:`adapter_for` reads it)."""
        self._base_validation = {**self.base_validation(), codec: dict(verdict)}

    def update_adapter_info(self, name: str, **facts) -> None:
        """Add facts (e.g. ``validation=...``, ``base_model=...``) to adapter ``name``'s record, saved with it."""
        name = normalize_adapter_name(name)
        if name not in getattr(self.unet, "peft_config", {}):
            raise ValueError(f"no adapter {name!r} is loaded; loaded: {sorted(getattr(self.unet, 'peft_config', {}))}")
        self._adapter_info = {**getattr(self, "_adapter_info", {}), name: {**self.adapter_info(name), **facts}}

    def adapter_for(self, codec: str) -> AdapterChoice:
        """What to run before ``codec``: the policy that ``--model default``, ``compress``, ``evaluate`` and the
        Space all follow.

        - If the model carries validation records (an adapter's ``rp_adapter.json`` ``validation``, or the base
          model's ``adapters/base_validation.json``: held-out BD-rates against the codec alone), only an adapter
          for ``codec`` whose record says it wins is chosen (the best mean headline BD-rate); else the base model
          if its record for ``codec`` wins; else no network runs (``preprocess=False``: the codec alone, unless a
          codec step runs). What lost in validation is never picked without being asked for.
        - Without validation records (a model you trained and did not validate): the first adapter trained for
          ``codec`` by name; none: the base model with adapters off.

        - The codec step: a quality-aware step run just before the encoder, when the model's ``codec_steps``
          config holds one for ``codec`` whose validation record wins (see :meth:`codec_step_for`). It runs
          instead of the network, never with it (each was validated against the codec alone, their combination
          was not): where both won, the one with the better mean headline BD-rate runs.

        Returns:
            :class:`AdapterChoice` with ``adapter`` (a name, or ``None`` for the base model), ``preprocess``, a
            one-line ``reason`` for the user and ``codec_step``.
        """
        return self.attach_codec_step(self._network_for(codec), codec)

    def codec_step_for(self, codec: str) -> tuple[Any, str]:
        """The codec step this model runs before ``codec``'s encoder, and why: ``(step or None, reason)``.

        The model's config (``model_index.json``) may hold ``codec_steps: {codec: {"step": NAME, ...settings,
        "validation": {...}}}``. A step with a validation record runs only if the record says it wins (held-out
        BD-rates against the codec alone, like an adapter's); one without a record runs, and the reason says it
        was not validated.
        """
        from .codecs.prequantize import codec_step_from_config

        record = self.steps_record(codec)
        if not record:
            return None, ""
        step = codec_step_from_config(record)
        validation = record.get("validation")
        if validation is None:
            return step, f"{step.description} (not validated)"
        if not validation.get("wins"):
            return None, f"{step.description} did not win ({_validation_summary(record)})"
        return step, f"{step.description} ({_validation_summary(record)})"

    def attach_codec_step(self, choice: AdapterChoice, codec: str) -> AdapterChoice:
        """The policy's choice between the network ``choice`` and the codec step of :meth:`codec_step_for`.

        A step that won runs where no network won. Where both won, the better mean headline BD-rate on the
        validation photographs runs and the other does not: the two were each validated against the codec alone,
        not together.
        """
        step, why = self.codec_step_for(codec)
        if step is None:
            return choice
        if choice.preprocess:
            network, own = self._choice_score(codec, choice), _headline_mean(self.steps_record(codec))
            if network is None or own is None or own >= network:  # an unvalidated step never displaces a network
                why_not = "which was not validated" if own is None else "which scored less"
                return replace(choice, reason=f"{choice.reason}; not also {step.description}, {why_not}")
            return AdapterChoice(None, False, f"{why}; no network: it scored less", step)
        network = choice.reason.split(": ", 1)[-1]  # "jpeg alone: <why no network>" -> "<why no network>"
        return replace(choice, codec_step=step, reason=f"{why}; no network: {network}")

    def steps_record(self, codec: str) -> dict:
        """The model's stored record of its codec step for ``codec`` (``{}`` where there is none)."""
        config = getattr(self, "config", None)
        return dict(((config.get("codec_steps") if config is not None else None) or {}).get(codec) or {})

    def _choice_score(self, codec: str, choice: AdapterChoice) -> float | None:
        """The mean headline BD-rate of the network a choice runs, from its validation record (None: none)."""
        if choice.adapter is not None:
            return _headline_mean({"validation": self.adapter_info(choice.adapter).get("validation")})
        return _headline_mean({"validation": self.base_validation(codec)})

    def _network_for(self, codec: str) -> AdapterChoice:
        """The network part of :meth:`adapter_for`: which adapter, the base model, or none."""
        adapters = self.available_adapters()
        for name, record in adapters.items():
            record["validation"] = self.adapter_info(name).get("validation")
        base = self.base_validation(codec)
        validated = any(record.get("validation") for record in adapters.values()) or bool(self.base_validation())
        matching = sorted(name for name, record in adapters.items() if record.get("codec") == codec)
        if not validated:
            if matching:
                return AdapterChoice(matching[0], True, f"{matching[0]} (trained for {codec}; not validated)")
            return AdapterChoice(None, True, f"the base model (no adapter trained for {codec})")
        winners = [name for name in matching if (adapters[name].get("validation") or {}).get("wins")]
        if not winners:
            if base and base.get("wins"):
                return AdapterChoice(
                    None, True, f"the base model ({_validation_summary({'validation': base})}; no adapter won there)"
                )
            lost = [n for n in matching if adapters[n].get("validation")] + (["the base model"] if base else [])
            unvalidated = [n for n in matching if not adapters[n].get("validation")]
            where = base.get("images") or next(
                (adapters[n]["validation"].get("images") for n in matching if adapters[n].get("validation")), None
            )
            parts = []
            if lost:
                parts.append(f"on {where or 'the validation photographs'} {', '.join(lost)} did not beat it")
            if unvalidated:
                parts.append(f"{', '.join(unvalidated)} {'was' if len(unvalidated) == 1 else 'were'} not validated")
            why = "; ".join(parts) or f"nothing in this model is for {codec} or was validated on it"
            return AdapterChoice(None, False, f"{codec} alone: {why}; --adapter NAME runs one anyway")

        def score(name: str) -> float:
            rates = adapters[name]["validation"].get("bd_rate", {})
            headline = adapters[name]["validation"].get("headline") or list(rates)
            values = [rates[m] for m in headline if m in rates]
            return sum(values) / len(values) if values else 0.0

        best = min(winners, key=score)
        return AdapterChoice(best, True, f"{best} ({_validation_summary(adapters[best])})")

    def disable_adapters(self) -> None:
        """Run the base model (adapters stay loaded; :meth:`enable_adapters` or an ``adapter_name`` brings them back)."""
        self.disable_lora()

    def enable_adapters(self) -> None:
        """Undo :meth:`disable_adapters`."""
        self.enable_lora()

    def delete_adapters(self, adapter_names: list[str] | str):
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        names = [normalize_adapter_name(name) for name in names]
        super().delete_adapters(names)
        self._adapter_info = {k: v for k, v in getattr(self, "_adapter_info", {}).items() if k not in names}

    def unload_lora_weights(self):
        super().unload_lora_weights()
        self._adapter_weights, self._adapter_info = {}, {}

    def _lora_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [module for module in self.unet.modules() if isinstance(module, BaseTunerLayer)]

    def check_adapters_saveable(self) -> None:
        """Fused LoRA weights cannot be saved next to their adapters (they would apply twice on reload)."""
        if any(layer.merged for layer in self._lora_layers()):
            raise ValueError(
                "fused LoRA weights cannot be saved next to their adapters: call unfuse_lora() first, or "
                "unload_lora_weights() after fuse_lora() to save the fused weights as the base model"
            )

    def save_adapters(self, save_directory: str | os.PathLike) -> None:
        """Write every loaded adapter to ``adapters/<name>/`` (weights and ``rp_adapter.json``, its one record) and
        the active selection to ``active_adapters.json``.

        The folder's ``adapters/`` then holds exactly these adapters: ``from_pretrained`` loads every adapter folder
        it finds there, so the weights and ``rp_adapter.json`` of an adapter saved there earlier and no longer
        loaded are removed (other files are left alone).
        """
        self.check_adapters_saveable()
        folder = Path(save_directory) / ADAPTERS_FOLDER
        names = list(getattr(self.unet, "peft_config", {}))
        records = self.available_adapters()
        for stale, path in _adapter_dirs(folder if folder.is_dir() else None).items():
            if stale in names:
                continue
            for file_name in (LORA_WEIGHT_NAME, ADAPTER_INFO_NAME):
                (path / file_name).unlink(missing_ok=True)
            if not any(path.iterdir()):
                path.rmdir()
        if not names:
            (folder / ACTIVE_ADAPTERS_NAME).unlink(missing_ok=True)  # it would name adapters no longer there
        for name in names:
            record = records[name]
            regenerated = ("adapter_name", "codec", "lambda", "rank", "lora_alpha", "target_modules")
            extra = {k: v for k, v in self.adapter_info(name).items() if k not in regenerated}
            save_rp_adapter(
                self.unet, folder / name, name, codec=record.get("codec"), lam=record.get("lambda"), extra=extra
            )
        if names:
            active = list(self.get_active_adapters())
            weights = getattr(self, "_adapter_weights", {})
            selection = {
                "enabled": not any(layer.disable_adapters for layer in self._lora_layers()),
                "names": active,
                "weights": [weights.get(name, 1.0) for name in active],
            }
            (folder / ACTIVE_ADAPTERS_NAME).write_text(json.dumps(selection, indent=2) + "\n")
        if getattr(self, "_base_validation", None):
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self._base_validation, indent=2, sort_keys=True)
            (folder / BASE_VALIDATION_NAME).write_text(text + "\n")

    def load_saved_adapters(self, source: str | os.PathLike, **hub_kwargs) -> None:
        """Load every adapter saved in ``source``'s ``adapters/`` (each ``adapters/<name>/`` folder with its weights
        and ``rp_adapter.json``, by name), restore the selection and read the base model's verdicts."""
        folder = saved_adapters_dir(source, **hub_kwargs)
        for name, path in _adapter_dirs(folder).items():
            if not (path / LORA_WEIGHT_NAME).is_file():
                raise ValueError(f"{source} has adapter {name!r} but no {ADAPTERS_FOLDER}/{name}/{LORA_WEIGHT_NAME}")
            self.load_lora_weights(str(path), adapter_name=name)
        selection_path = folder / ACTIVE_ADAPTERS_NAME if folder is not None else None
        if selection_path is not None and selection_path.is_file():
            selection = json.loads(selection_path.read_text())
            if selection["names"]:
                self.set_adapters(selection["names"], selection["weights"])
            if not selection["enabled"]:
                self.disable_adapters()
        verdicts = folder / BASE_VALIDATION_NAME if folder is not None else None
        self._base_validation = json.loads(verdicts.read_text()) if verdicts is not None and verdicts.is_file() else {}
