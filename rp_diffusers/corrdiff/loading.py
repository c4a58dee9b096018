"""Saving and loading CorrDiff models: ``config.json`` + ``codec.safetensors`` (+ a diffusers ``unet/`` folder).

A folder written by :func:`save_model`::

    config.json           CorrDiffConfig fields, plus "_class_name" and "_rp_diffusers_version"
    codec.safetensors     transforms, hyperprior, end-to-end decoder and the integer coding tables
    unet/                 the diffusion decoder (diffusers ``UNet2DModel.save_pretrained``), when trained

Hub repo ids are fetched with ``huggingface_hub.snapshot_download``; weights are safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .models import CorrDiffConfig, CorrDiffModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "codec.safetensors"
UNET_FOLDER = "unet"


def save_model(model: CorrDiffModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to the folder ``path`` (created); the integer tables must exist (``model.update()``)."""
    from .. import __version__

    if not model.has_tables():
        raise ValueError("the model has no coding tables yet: call `model.update()` after training, then save")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "CorrDiffModel", "_rp_diffusers_version": __version__, **model.config.to_dict()}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("unet.")}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    if model.unet is not None:
        model.unet.save_pretrained(folder / UNET_FOLDER, safe_serialization=True)
    return folder


def _resolve(path_or_repo: str | os.PathLike, revision: str | None) -> Path:
    local = Path(path_or_repo)
    if local.is_dir():
        return local
    if local.exists() or str(path_or_repo).count("/") != 1:
        raise OSError(f"{path_or_repo!r} is neither a CorrDiff model folder nor a Hub repo id like 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                str(path_or_repo), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, f"{UNET_FOLDER}/*"]
            )
        )
    except Exception as error:
        raise OSError(
            f"could not fetch the CorrDiff model {path_or_repo!r} from the Hugging Face Hub ({error}). Online, "
            "check the repo id; offline, download it elsewhere (`huggingface-cli download "
            f"{path_or_repo} --local-dir DIR`) and pass the folder DIR instead"
        ) from error


def load_model(
    path_or_repo: str | os.PathLike, device: str | torch.device = "cpu", revision: str | None = None
) -> CorrDiffModel:
    """Load a CorrDiff model from a folder written by :func:`save_model` or a Hub repo id.

    Args:
        path_or_repo: local folder or ``"org/name"`` on the Hugging Face Hub.
        device: where to put the networks (the coding tables are used on the CPU).
        revision: Hub revision (branch, tag or commit).

    Returns:
        ``CorrDiffModel`` in eval mode, with ``unet`` set when the folder has one.
    """
    folder = _resolve(path_or_repo, revision)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for required in (config_file, weights_file):
        if not required.is_file():
            raise OSError(f"{required} is missing: a CorrDiff model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    data = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
    model = CorrDiffModel(CorrDiffConfig.from_dict(data))
    missing, unexpected = model.load_state_dict(load_file(str(weights_file)), strict=False)
    if missing or unexpected:
        raise OSError(f"{weights_file} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if (folder / UNET_FOLDER / "config.json").is_file():
        from diffusers import UNet2DModel

        model.unet = UNet2DModel.from_pretrained(folder / UNET_FOLDER, use_safetensors=True)
    if not model.has_tables():
        raise OSError(f"{weights_file} holds no coding tables; re-save it after `model.update()`")
    return model.to(device).eval()
