"""Weights of the metric networks: where they come from, how they load, and the converter from the authors' files.

Our files are safetensors in our own key layout (torchvision's keys for the backbones); the official files are read
with ``torch.load(weights_only=True)``, so no pickled code ever runs:

==================  =======================================  ============================================
name                file                                     made from (official files, :data:`SOURCES`)
==================  =======================================  ============================================
``lpips_alex``      ``lpips_alex.safetensors``               ``alexnet-owt-7be5be79.pth`` + lpips ``alex.pth``
``lpips_vgg``       ``lpips_vgg.safetensors``                ``vgg16-397923af.pth`` + lpips ``vgg.pth``
``dists``           ``dists_vgg16.safetensors``              ``vgg16-397923af.pth`` + DISTS ``weights.pt``
``fid_inception``   ``pt_inception-2015-12-05.safetensors``  pytorch-fid ``pt_inception-2015-12-05-6726825d.pth``
==================  =======================================  ============================================

Lookup order: an explicit ``state_dict`` or ``weights_path`` (or ``repo_id``, a Hub repo of your own holding our
files); the folder ``RP_DIFFUSERS_METRIC_WEIGHTS``; the cache (:func:`metric_weights_cache_dir`); else the official
files are downloaded from the URLs their authors' loaders use, SHA-256 checked and converted once into the cache.

- ``RP_DIFFUSERS_METRIC_WEIGHTS``: a folder of converted files that you manage (read only);
- ``RP_DIFFUSERS_METRIC_CACHE``: the cache (default ``~/.cache/rp_diffusers/metric_weights``, under ``XDG_CACHE_HOME``
  if set); the official downloads stay in its ``official/`` (0.85 GB for all four networks, deletable once converted);
- ``RP_DIFFUSERS_METRIC_WEIGHTS_MIRROR``: a base URL serving the official files under their file names
  (``{mirror}/alexnet-owt-7be5be79.pth``, ``{mirror}/alex.pth``, ...), instead of the authors' hosts;
- ``HF_HUB_OFFLINE=1`` or ``RP_DIFFUSERS_OFFLINE=1``: never download; :class:`MetricWeightsUnavailable` then says
  which files to get and how to convert them: ``python -m rp_diffusers.metrics.weights FILE... --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from .backbones import ALEXNET_CONV_INDICES, VGG16_CONV_INDICES

ENV_DIR = "RP_DIFFUSERS_METRIC_WEIGHTS"
ENV_CACHE = "RP_DIFFUSERS_METRIC_CACHE"
ENV_MIRROR = "RP_DIFFUSERS_METRIC_WEIGHTS_MIRROR"
ENV_OFFLINE = "RP_DIFFUSERS_OFFLINE"
DOWNLOAD_TIMEOUT_S = 15  # per socket operation (connect, each read): a dead route fails in seconds, not hours
WEIGHT_FILES = {
    "lpips_alex": "lpips_alex.safetensors",
    "lpips_vgg": "lpips_vgg.safetensors",
    "dists": "dists_vgg16.safetensors",
    "fid_inception": "pt_inception-2015-12-05.safetensors",
}
_LPIPS = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"
# official file -> (URL, SHA-256 or its leading hex digits). torchvision's and pytorch-fid's file names carry the first
# 8 hex digits of their SHA-256 (torch.hub's check_hash convention). The full SHA-256 of the head files are those of
# lpips/weights/v0.1/{alex,vgg}.pth in the lpips 0.1.4 wheel and of DISTS_pytorch/weights.pt in the dists-pytorch 0.1
# wheel on PyPI (the files of the GitHub repositories below).
SOURCES = {
    "alexnet": ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79"),
    "vgg16": ("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
    "lpips_alex_lin": (f"{_LPIPS}/alex.pth", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
    "lpips_vgg_lin": (f"{_LPIPS}/vgg.pth", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
    "dists_alpha_beta": (
        "https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt",
        "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
    ),
    "fid_inception": (
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "6726825d",
    ),
}
NEEDS = {
    "lpips_alex": ("alexnet", "lpips_alex_lin"),
    "lpips_vgg": ("vgg16", "lpips_vgg_lin"),
    "dists": ("vgg16", "dists_alpha_beta"),
    "fid_inception": ("fid_inception",),
}


class MetricWeightsUnavailable(RuntimeError):
    """The weights of a metric network are not available here; the message says what to download and where."""


def metric_weights_cache_dir() -> Path:
    """The cache: ``$RP_DIFFUSERS_METRIC_CACHE``, else ``rp_diffusers/metric_weights`` in ``$XDG_CACHE_HOME``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "rp_diffusers" / "metric_weights"


def _offline() -> bool:
    values = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get(ENV_OFFLINE, ""))
    return any(value.strip().lower() in ("1", "true", "yes", "on") for value in values)


def _url(kind: str) -> str:
    url = SOURCES[kind][0]
    mirror = os.environ.get(ENV_MIRROR)
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[1]}" if mirror else url


def _help(name: str, online: bool = True) -> str:
    urls = " and ".join(_url(kind) for kind in NEEDS[name])
    automatic = (
        f" Online (HF_HUB_OFFLINE and {ENV_OFFLINE} unset, no weights_path) they download and convert by themselves, "
        f"once, into {metric_weights_cache_dir()}."
    )
    return (
        f"Get {urls} (the lpips and DISTS files are also in their wheels: pip download lpips dists-pytorch "
        f"--no-deps), convert them with `python -m rp_diffusers.metrics.weights FILE... --out DIR` and set "
        f"{ENV_DIR}=DIR or pass weights_path=DIR/{WEIGHT_FILES[name]}.{automatic if online else ''}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, path: Path, expected: str) -> None:
    """Stream ``url`` into ``path`` through a temporary file beside it; nothing is left behind on any failure.

    Not ``torch.hub.download_url_to_file``: it has no timeout and keeps a body shorter than its Content-Length."""
    from tqdm.auto import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    digest, received, size = hashlib.sha256(), 0, None
    retry = f"Retry later or set {ENV_MIRROR} to a reachable copy"
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "rp-diffusers"})
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
                size = int(response.headers["Content-Length"]) if response.headers.get("Content-Length") else None
                with tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=None) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError, timeout, reset, IncompleteRead
            raise MetricWeightsUnavailable(
                f"could not download {url} ({type(error).__name__}: {error}). {retry}."
            ) from error
        if size is not None and received != size:
            raise MetricWeightsUnavailable(
                f"download of {url} stopped after {received} of {size} bytes (the connection closed). {retry}."
            )
        actual = digest.hexdigest()
        if not actual.startswith(expected):
            raise MetricWeightsUnavailable(
                f"{url}: SHA-256 {actual} does not match the expected {expected} (the file was deleted; a proxy or an "
                f"out-of-date mirror may have served another file). {retry}."
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def download_official_weights(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download the official files of metric network ``name``, check their SHA-256 and convert them into the cache.

    Files already in ``{cache_dir}/official`` with the right SHA-256 are not downloaded again. The converted file is
    written under a temporary name and renamed, so a half-written file never looks complete.

    Args:
        name (`str`): one of :data:`WEIGHT_FILES`.
        cache_dir (path, *optional*): default :func:`metric_weights_cache_dir`.

    Returns:
        `pathlib.Path` of the converted safetensors file.

    Raises:
        MetricWeightsUnavailable: offline, a download failed or a file has the wrong SHA-256 (the message says which).

    Example:
        >>> download_official_weights("lpips_alex")  # doctest: +SKIP
        PosixPath('/home/me/.cache/rp_diffusers/metric_weights/lpips_alex.safetensors')
    """
    if name not in NEEDS:
        raise ValueError(f"unknown metric network {name!r}; choose one of {sorted(NEEDS)}")
    cache = Path(cache_dir) if cache_dir is not None else metric_weights_cache_dir()
    if _offline():
        raise MetricWeightsUnavailable(
            f"{name}: {WEIGHT_FILES[name]} is not in {ENV_DIR} nor in the cache {cache}, and downloads are off "
            f"(HF_HUB_OFFLINE=1 or {ENV_OFFLINE}=1). {_help(name)}"
        )
    files = []
    for kind in NEEDS[name]:
        path = cache / "official" / SOURCES[kind][0].rsplit("/", 1)[1]
        try:
            if not (path.is_file() and _sha256(path).startswith(SOURCES[kind][1])):
                _download(_url(kind), path, SOURCES[kind][1])
        except MetricWeightsUnavailable as error:
            raise MetricWeightsUnavailable(f"{name}: {error} Or by hand: {_help(name, online=False)}") from error
        files.append(path)
    return convert_official_weights(files, cache)[name]


def resolve_weights_file(name: str, *, weights_path: str | os.PathLike | None = None, repo_id: str | None = None):
    """Find the safetensors file of metric network ``name``, downloading the official files if needed.

    Args:
        name (`str`): one of :data:`WEIGHT_FILES`.
        weights_path (`str` or `os.PathLike`, *optional*): a file, or a folder holding ``WEIGHT_FILES[name]``.
        repo_id (`str`, *optional*): a Hub repo of your own holding ``WEIGHT_FILES[name]`` (there is no default one).

    Returns:
        `pathlib.Path` of an existing file.

    Raises:
        MetricWeightsUnavailable: if no source has the file and it cannot be downloaded; the message says what to do.
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
    if repo_id is not None:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id=repo_id, filename=filename))
        except Exception as error:  # offline, missing repo or file, no network: all mean "not available"
            raise MetricWeightsUnavailable(
                f"{name}: {filename} not found in the Hub repo {repo_id!r} ({type(error).__name__}). {_help(name)}"
            ) from error
    folder = os.environ.get(ENV_DIR)
    if folder and (Path(folder) / filename).is_file():
        return Path(folder) / filename
    cached = metric_weights_cache_dir() / filename
    if cached.is_file():
        return cached
    return download_official_weights(name)


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
    """Which official file a loaded state dict is: a key of :data:`SOURCES`, or ``None``."""
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
            raise ValueError(f"{path}: not an official file this converter knows ({sorted(SOURCES)})")
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
        partial = written[name].with_name(f".{written[name].name}.{uuid.uuid4().hex}.partial")
        try:  # a temporary name, then a rename: a half-written file never looks complete
            save_file(ours, str(partial), metadata={"source": ", ".join(sources[s] for s in needs)})
            os.replace(partial, written[name])
        finally:
            partial.unlink(missing_ok=True)
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
