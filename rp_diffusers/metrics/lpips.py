"""LPIPS v0.1 (Zhang et al. 2018) in plain torch, computing what ``lpips.LPIPS(net=..., version="0.1")`` computes.

Steps, as in the `lpips` package: inputs in [0, 1] are mapped to [-1, 1], then shifted and scaled by its
``ScalingLayer`` (shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450)); AlexNet or VGG16 activations
at five ReLU taps; each channel vector unit-normalised (``x / (||x||_2 + 1e-10)`` over channels); squared
difference; a 1x1 convolution to one channel per tap (the learned, non-negative "lin" weights); spatial mean;
sum over the taps. Gradients flow to the inputs, so the same module is a training loss.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from .backbones import (
    ALEXNET_CHANNELS,
    ALEXNET_TAPS,
    VGG16_CHANNELS,
    VGG16_TAPS,
    FrozenMetricNetwork,
    alexnet_features,
    tapped_features,
    vgg16_features,
)
from .psnr import check_image_pair
from .weights import load_weights_into

_NETS = {
    "alex": (alexnet_features, ALEXNET_TAPS, ALEXNET_CHANNELS),
    "vgg": (vgg16_features, VGG16_TAPS, VGG16_CHANNELS),
}


def normalize_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each spatial position's channel vector by its L2 norm (plus ``eps``), as ``lpips.normalize_tensor``."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(FrozenMetricNetwork):
    """The LPIPS v0.1 distance with an AlexNet or VGG16 trunk.

    Args:
        net (`str`): ``"alex"`` (the default of the `lpips` package and of most compression papers) or ``"vgg"``.
        state_dict (`dict[str, torch.Tensor]`, *optional*): weights in our layout (``features.{i}.weight/bias``,
            ``lin{k}.weight``); skips every file lookup.
        weights_path (`str` or `os.PathLike`, *optional*): our safetensors file, or a folder holding
            ``lpips_{net}.safetensors``.
        repo_id (`str`, *optional*): a Hub repo of your own holding the converted file (no default:
            the official files download by themselves, see :mod:`rp_diffusers.metrics.weights`).
        load_weights (`bool`): ``False`` leaves the random initialisation (for shapes and tests).

    Raises:
        MetricWeightsUnavailable: if the weights cannot be found; the message says how to get them.

    Example:
        >>> model = LPIPS("alex")  # doctest: +SKIP
        >>> model(reference, distorted)  # (N,) distances, 0 for identical images  # doctest: +SKIP
    """

    def __init__(
        self,
        net: str = "alex",
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        weights_path: str | os.PathLike | None = None,
        repo_id: str | None = None,
        load_weights: bool = True,
    ):
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(_NETS)}, got {net!r}")
        build, self.taps, channels = _NETS[net]
        self.net = net
        self.features = build()
        for k, width in enumerate(channels):
            self.add_module(f"lin{k}", nn.Conv2d(width, 1, kernel_size=1, bias=False))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        if load_weights or state_dict is not None:
            load_weights_into(self, f"lpips_{net}", state_dict=state_dict, weights_path=weights_path, repo_id=repo_id)
        self._freeze()

    def _features(self, image: torch.Tensor) -> list[torch.Tensor]:
        scaled = ((2 * image - 1) - self.shift) / self.scale
        return [normalize_channels(f) for f in tapped_features(self.features, scaled, self.taps)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance.

        Args:
            x, y (`torch.Tensor` of shape `(N, 3, H, W)`): images in [0, 1] (not [-1, 1]); H, W >= 32 for
                AlexNet, >= 16 for VGG.

        Returns:
            `torch.Tensor` of shape `(N,)`, >= 0 with the official weights, 0 for identical images.
        """
        check_image_pair(x, y, channels=3, name="lpips")
        dtype = self.shift.dtype
        features_x, features_y = self._features(x.to(dtype)), self._features(y.to(dtype))
        total = 0
        for k, (fx, fy) in enumerate(zip(features_x, features_y)):
            total = total + getattr(self, f"lin{k}")((fx - fy).square()).mean(dim=(2, 3))
        return total.flatten()


@functools.lru_cache(maxsize=4)
def pretrained_lpips(net: str, repo_id: str | None, device: str) -> LPIPS:
    """The LPIPS model with the official weights on ``device``, built once per ``(net, repo_id, device)`` and cached.

    Args:
        net (`str`): ``"alex"`` or ``"vgg"``.
        repo_id (`str`, *optional*): a Hub repo of your own holding the converted weights (``None``: the official
            files, see :mod:`rp_diffusers.metrics.weights`).
        device (`str`): a torch device name, e.g. ``"cpu"`` or ``"cuda:0"``.

    Returns:
        A frozen :class:`LPIPS`; the same object for the same arguments (do not modify it).

    Raises:
        MetricWeightsUnavailable: if the weights cannot be found; the message says how to get them.

    Example:
        >>> model = pretrained_lpips("alex", None, "cpu")  # doctest: +SKIP
        >>> model(reference, distorted)  # (N,) distances  # doctest: +SKIP
    """
    return LPIPS(net, repo_id=repo_id).to(device)


def lpips(
    x: torch.Tensor,
    y: torch.Tensor,
    net: str = "alex",
    *,
    model: LPIPS | None = None,
    repo_id: str | None = None,
) -> torch.Tensor:
    """Per-image LPIPS v0.1 between two batches (weights loaded once and cached per device).

    Args:
        x, y (`torch.Tensor` of shape `(N, 3, H, W)`): images in [0, 1].
        net (`str`): ``"alex"`` or ``"vgg"``.
        model (`LPIPS`, *optional*): a ready model (e.g. built from an explicit ``state_dict``).
        repo_id (`str`, *optional*): a Hub repo of your own holding the converted weights (no default).

    Returns:
        `torch.Tensor` of shape `(N,)`.

    Raises:
        MetricWeightsUnavailable: if the weights cannot be found.
    """
    model = model if model is not None else pretrained_lpips(net, repo_id, str(x.device))
    return model(x, y)
