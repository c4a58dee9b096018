"""Weights of the metric networks: where they come from, how they load, and the converter from the authors' files.

Our files are safetensors in our own key layout (torchvision's keys for the backbones):

==================  =====================================  ==============================================
name                file                                   made from (official files)
==================  =====================================  ==============================================
``lpips_alex``      ``lpips_alex.safetensors``             ``alexnet-owt-7be5be79.pth`` + lpips ``alex.pth``
``lpips_vgg``       ``lpips_vgg.safetensors``              ``vgg16-397923af.pth`` + lpips ``vgg.pth``
``dists``           ``dists_vgg16.safetensors``            ``vgg16-397923af.pth`` + DISTS ``weights.pt``
``fid_inception``   ``pt_inception-2015-12-05.safetensors``  pytorch-fid ``pt_inception-2015-12-05-6726825d.pth``
==================  =====================================  ==============================================

Lookup order: an explicit ``state_dict`` or ``weights_path``; the folder named by ``RP_DIFFUSERS_METRIC_WEIGHTS``;
the Hugging Face Hub repo :data:`METRICS_REPO_ID` (override with ``RP_DIFFUSERS_METRICS_REPO`` or ``repo_id=``)
through ``hf_hub_download``. When none has the file, :class:`MetricWeightsUnavailable` says what to download and
how to convert it: ``python -m rp_diffusers.metrics.weights FILE... --out DIR``. Official files are read with
``torch.load(weights_only=True)``: no pickled code ever runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from .backbones import ALEXNET_CONV_INDICES, VGG16_CONV_INDICES

METRICS_REPO_ID = "rp-diffusers/metric-weights"
ENV_REPO = "RP_DIFFUSERS_METRICS_REPO"
ENV_DIR = "RP_DIFFUSERS_METRIC_WEIGHTS"
WEIGHT_FILES = {
    "lpips_alex": "lpips_alex.safetensors",
    "lpips_vgg": "lpips_vgg.safetensors",
    "dists": "dists_vgg16.safetensors",
    "fid_inception": "pt_inception-2015-12-05.safetensors",
}
_TORCHVISION = "https://download.pytorch.org/models/"
OFFICIAL_SOURCES = {
    "alexnet": f"alexnet-owt-7be5be79.pth ({_TORCHVISION}alexnet-owt-7be5be79.pth)",
    "vgg16": f"vgg16-397923af.pth ({_TORCHVISION}vgg16-397923af.pth)",
    "lpips_alex_lin": "alex.pth (lpips/weights/v0.1/alex.pth inside the `lpips` wheel: pip download lpips --no-deps)",
    "lpips_vgg_lin": "vgg.pth (lpips/weights/v0.1/vgg.pth inside the `lpips` wheel: pip download lpips --no-deps)",
    "dists_alpha_beta": "weights.pt (DISTS_pytorch/weights.pt inside the `dists-pytorch` wheel: "
    "pip download dists-pytorch --no-deps)",
    "fid_inception": "pt_inception-2015-12-05-6726825d.pth "
    "(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)",
}
NEEDS = {
    "lpips_alex": ("alexnet", "lpips_alex_lin"),
    "lpips_vgg": ("vgg16", "lpips_vgg_lin"),
    "dists": ("vgg16", "dists_alpha_beta"),
    "fid_inception": ("fid_inception",),
}


class MetricWeightsUnavailable(RuntimeError):
    """The weights of a metric network are not available here; the message says what to download and where."""


def _help(name: str) -> str:
    sources = "; ".join(OFFICIAL_SOURCES[source] for source in NEEDS[name])
    return (
        f"Get {sources}. Convert them with `python -m rp_diffusers.metrics.weights FILE... --out DIR` "
        f"(rp_diffusers.metrics.weights.convert_official_weights) and set {ENV_DIR}=DIR, or pass weights_path="
        f"DIR/{WEIGHT_FILES[name]}. Online, the converted file loads from the Hub repo {METRICS_REPO_ID!r} "
        f"(or the repo named by {ENV_REPO})."
    )


def resolve_weights_file(name: str, *, weights_path: str | os.PathLike | None = None, repo_id: str | None = None):
    """Find the safetensors file of metric network ``name`` (see the module docstring for the order).

    Args:
        name (`str`): one of :data:`WEIGHT_FILES`.
        weights_path (`str` or `os.PathLike`, *optional*): a file, or a folder holding ``WEIGHT_FILES[name]``.
        repo_id (`str`, *optional*): a Hub repo to download from, instead of :data:`METRICS_REPO_ID`.

    Returns:
        `pathlib.Path` of an existing file.

    Raises:
        MetricWeightsUnavailable: if no source has the file.
    """
    if name not in WEIGHT_FILES:
        raise ValueError(f"unknown metric network {name!r}; choose one of {sorted(WEIGHT_FILES)}")
    filename = WEIGHT_FILES[name]
    if weights_path is not None:
        path = Path(weights_path)
        path = path / filename if path.is_dir() else path
        if not path.is_file():
            raise MetricWeightsUnavailable(f"{name}: {path} does not exist. {_help(name)}")
        return path
    folder = os.environ.get(ENV_DIR)
    if folder and (Path(folder) / filename).is_file():
        return Path(folder) / filename
    repo = repo_id or os.environ.get(ENV_REPO) or METRICS_REPO_ID
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except Exception as error:  # offline, missing repo or file, no network: all mean "not available"
        where = f"{ENV_DIR}={folder} has no {filename}; " if folder else f"{ENV_DIR} is not set; "
        raise MetricWeightsUnavailable(
            f"{name}: weights file {filename} not found ({where}Hub repo {repo!r}: {type(error).__name__}). "
            f"{_help(name)}"
        ) from error


def load_weights_into(
    module: nn.Module,
    name: str,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    weights_path: str | os.PathLike | None = None,
    repo_id: str | None = None,
) -> None:
    """Load ``state_dict`` (or the resolved safetensors file) into ``module``, every key required.

    Raises:
        MetricWeightsUnavailable: if no file is found.
        ValueError: if the keys or shapes do not match ours (e.g. an unconverted official file).
    """
    if state_dict is None:
        from safetensors.torch import load_file

        state_dict = load_file(str(resolve_weights_file(name, weights_path=weights_path, repo_id=repo_id)))
    state_dict = {key: value for key, value in state_dict.items() if not key.endswith("num_batches_tracked")}
    expected = {key for key in module.state_dict() if not key.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{name}: the weights do not match rp-diffusers' layout (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}). Official files must be converted first: {_help(name)}"
        )
    module.load_state_dict(state_dict, strict=False)


def _load_official(path: Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    return {key.removeprefix("module."): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def identify_official_file(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Which official file a loaded state dict is: a key of :data:`OFFICIAL_SOURCES`, or ``None``."""
    first = state_dict.get("features.0.weight")
    if first is not None and tuple(first.shape) == (64, 3, 11, 11):
        return "alexnet"
    if first is not None and tuple(first.shape) == (64, 3, 3, 3) and "features.28.weight" in state_dict:
        return "vgg16"
    if "lin0.model.1.weight" in state_dict and "lin5.model.1.weight" not in state_dict:
        return {256: "lpips_alex_lin", 512: "lpips_vgg_lin"}.get(state_dict["lin4.model.1.weight"].shape[1])
    if {"alpha", "beta"} <= set(state_dict) and state_dict["alpha"].numel() == 1475:
        return "dists_alpha_beta"
    if "Mixed_7c.branch_pool.conv.weight" in state_dict:
        return "fid_inception"
    return None


def _backbone(state_dict: dict[str, torch.Tensor], indices: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {f"features.{i}.{p}": state_dict[f"features.{i}.{p}"] for i in indices for p in ("weight", "bias")}


def _ours_from_official(name: str, files: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if name in ("lpips_alex", "lpips_vgg"):
        backbone, lins = files[NEEDS[name][0]], files[NEEDS[name][1]]
        indices = ALEXNET_CONV_INDICES if name == "lpips_alex" else VGG16_CONV_INDICES
        return _backbone(backbone, indices) | {f"lin{k}.weight": lins[f"lin{k}.model.1.weight"] for k in range(5)}
    if name == "dists":
        weights = files["dists_alpha_beta"]
        return _backbone(files["vgg16"], VGG16_CONV_INDICES) | {"alpha": weights["alpha"], "beta": weights["beta"]}
    return {
        key: value
        for key, value in files["fid_inception"].items()
        if not key.startswith(("fc.", "AuxLogits.")) and not key.endswith("num_batches_tracked")
    }


def convert_official_weights(src_files: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Turn the authors' official weight files into our safetensors files.

    Each input is recognised by its content (names do not matter). Every output whose inputs are all present
    is written; each is checked by loading it into our network.

    Args:
        src_files (iterable of paths): any of ``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``, lpips
            ``alex.pth`` / ``vgg.pth``, DISTS ``weights.pt``, ``pt_inception-2015-12-05-6726825d.pth``.
        out_dir (path): output folder (created); point ``RP_DIFFUSERS_METRIC_WEIGHTS`` at it afterwards.

    Returns:
        `dict[str, Path]`: metric network name -> written file.

    Raises:
        ValueError: if an input is not one of the official files, or no output can be made from the inputs.

    Example:
        >>> convert_official_weights(["alexnet-owt-7be5be79.pth", "alex.pth"], "metric-weights")  # doctest: +SKIP
        {'lpips_alex': PosixPath('metric-weights/lpips_alex.safetensors')}
    """
    from safetensors.torch import save_file

    from .dists import DISTS
    from .inception import FIDInceptionV3
    from .lpips import LPIPS

    files: dict[str, dict[str, torch.Tensor]] = {}
    sources: dict[str, str] = {}
    for path in map(Path, src_files):
        state_dict = _load_official(path)
        kind = identify_official_file(state_dict)
        if kind is None:
            raise ValueError(f"{path}: not an official file this converter knows ({sorted(OFFICIAL_SOURCES)})")
        files[kind], sources[kind] = state_dict, path.name
    builders = {
        "lpips_alex": lambda: LPIPS("alex", load_weights=False),
        "lpips_vgg": lambda: LPIPS("vgg", load_weights=False),
        "dists": lambda: DISTS(load_weights=False),
        "fid_inception": lambda: FIDInceptionV3(load_weights=False),
    }
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for name, needs in NEEDS.items():
        if not all(source in files for source in needs):
            continue
        ours = {
            key: value.detach().to(torch.float32).contiguous()
            for key, value in _ours_from_official(name, files).items()
        }
        load_weights_into(builders[name](), name, state_dict=ours)
        out.mkdir(parents=True, exist_ok=True)
        written[name] = out / WEIGHT_FILES[name]
        save_file(ours, str(written[name]), metadata={"source": ", ".join(sources[s] for s in needs)})
    if not written:
        wanted = "; ".join(f"{name} needs {' + '.join(needs)}" for name, needs in NEEDS.items())
        raise ValueError(f"no metric weights can be made from {sorted(sources.values())}: {wanted}")
    return written


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Command line: ``python -m rp_diffusers.metrics.weights FILE... --out DIR``."""
    parser = argparse.ArgumentParser(description="Convert official LPIPS/DISTS/FID weights to rp-diffusers files.")
    parser.add_argument("files", nargs="+", help="official .pth/.pt files (torchvision, lpips, DISTS, pytorch-fid)")
    parser.add_argument("--out", required=True, help="output folder; then set RP_DIFFUSERS_METRIC_WEIGHTS to it")
    args = parser.parse_args(argv)
    written = convert_official_weights(args.files, args.out)
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
