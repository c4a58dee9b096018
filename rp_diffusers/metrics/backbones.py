"""AlexNet and VGG16 feature stacks in plain torch, layer for layer (and key for key) as torchvision builds them.

LPIPS and DISTS read activations of these networks at five taps. The ``nn.Sequential`` indices equal
torchvision's ``features`` indices, so the state-dict keys (``features.{index}.weight``) of torchvision's
``alexnet-owt-7be5be79.pth`` and ``vgg16-397923af.pth`` load unchanged. No torchvision import is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)
ALEXNET_TAPS = (1, 4, 7, 9, 11)  # relu1 ... relu5, as the lpips package slices AlexNet
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_CHANNELS = (64, 128, 256, 512, 512)


def alexnet_features() -> nn.Sequential:
    """torchvision's ``AlexNet.features`` (13 layers), randomly initialised.

    Returns:
        `nn.Sequential`: maps `(N, 3, H, W)` to `(N, 256, H', W')`; conv layers at
        :data:`ALEXNET_CONV_INDICES`.
    """
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def vgg16_features(pool: Callable[[int], nn.Module] | None = None) -> nn.Sequential:
    """torchvision's ``VGG16.features`` (31 layers), randomly initialised.

    Args:
        pool (`Callable[[int], nn.Module]`, *optional*): builds the down-sampling layer from the number of
            channels it receives; default 2x2 max pooling (torchvision). DISTS passes its L2 pooling.

    Returns:
        `nn.Sequential`: conv layers at :data:`VGG16_CONV_INDICES`, pooling at 4, 9, 16, 23 and 30.
    """
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2) if pool is None else pool(channels))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


def tapped_features(features: nn.Sequential, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    """Run ``features`` up to the last tap and return the activations after each layer index in ``taps``."""
    outputs = []
    for index, layer in enumerate(features):
        x = layer(x)
        if index in taps:
            outputs.append(x)
            if index == taps[-1]:
                break
    return outputs


class FrozenMetricNetwork(nn.Module):
    """Base class of the metric networks: parameters frozen, always in eval mode (no dropout, fixed BN).

    Gradients still flow to the inputs, so LPIPS and DISTS can serve as training losses.
    """

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):  # noqa: D102 - a metric network never trains
        return super().train(False)
