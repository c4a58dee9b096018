"""DISTS (Ding et al. 2020) in plain torch, computing what ``DISTS_pytorch.DISTS`` computes.

As in `DISTS_pytorch`: inputs in [0, 1] are normalised with the ImageNet mean/std; VGG16 runs with its four
max-pooling layers replaced by L2 pooling (``sqrt(conv(x**2, g) + 1e-12)``, g the normalised outer product
of ``hanning(5)[1:-1]`` = (0.5, 1, 0.5), stride 2, padding 1); the six "stages" are the raw input (not
normalised) and the activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (3 + 64 + 128 + 256 + 512 + 512 =
1475 channels). Per channel, texture ``S1 = (2 mx my + c1) / (mx^2 + my^2 + c1)`` and structure
``S2 = (2 cov + c2) / (vx + vy + c2)`` with ``c1 = c2 = 1e-6`` (means, biased variances and covariance over
space); ``DISTS = 1 - sum(alpha * S1 + beta * S2)`` with alpha, beta divided by their joint sum.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import VGG16_TAPS, FrozenMetricNetwork, tapped_features, vgg16_features
from .psnr import check_image_pair
from .weights import load_weights_into

DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)


class L2Pooling(nn.Module):
    """DISTS's anti-aliased L2 pooling: stride 2, 3x3 Hanning window (5-tap Hanning without its zero ends)."""

    def __init__(self, channels: int):
        super().__init__()
        taps = np.hanning(5)[1:-1]
        window = torch.Tensor(taps[:, None] * taps[None, :])
        window = window / torch.sum(window)
        self.register_buffer("filter", window[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(FrozenMetricNetwork):
    """The DISTS distance (structure and texture similarity on VGG16 features with L2 pooling).

    Args:
        state_dict (`dict[str, torch.Tensor]`, *optional*): weights in our layout (``features.{i}.weight/bias``
            for the 13 VGG16 convolutions, ``alpha`` and ``beta`` of shape (1, 1475, 1, 1)).
        weights_path (`str` or `os.PathLike`, *optional*): our safetensors file, or a folder holding
            ``dists_vgg16.safetensors``.
        repo_id (`str`, *optional*): a Hub repo of your own holding the converted file (no default).
        load_weights (`bool`): ``False`` leaves a random initialisation (for shapes and tests).

    Raises:
        MetricWeightsUnavailable: if the weights cannot be found; the message says how to get them.
    """

    def __init__(
        self,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        weights_path: str | os.PathLike | None = None,
        repo_id: str | None = None,
        load_weights: bool = True,
    ):
        super().__init__()
        self.features = vgg16_features(pool=L2Pooling)
        self.alpha = nn.Parameter(torch.full((1, sum(DISTS_CHANNELS), 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, sum(DISTS_CHANNELS), 1, 1), 0.1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        if load_weights or state_dict is not None:
            load_weights_into(self, "dists", state_dict=state_dict, weights_path=weights_path, repo_id=repo_id)
        self._freeze()

    def _stages(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [image, *tapped_features(self.features, (image - self.mean) / self.std, VGG16_TAPS)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image DISTS.

        Args:
            x, y (`torch.Tensor` of shape `(N, 3, H, W)`): reference and distorted images in [0, 1],
                at least 16 pixels on each side.

        Returns:
            `torch.Tensor` of shape `(N,)`; 0 for identical images, about 0-0.5 for natural distortions.
        """
        check_image_pair(x, y, channels=3, name="dists")
        dtype = self.alpha.dtype
        stages_x, stages_y = self._stages(x.to(dtype)), self._stages(y.to(dtype))
        c1 = c2 = 1e-6
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / total, DISTS_CHANNELS, dim=1)
        texture = structure = 0
        for fx, fy, alpha, beta in zip(stages_x, stages_y, alphas, betas):
            mean_x, mean_y = fx.mean([2, 3], keepdim=True), fy.mean([2, 3], keepdim=True)
            s1 = (2 * mean_x * mean_y + c1) / (mean_x**2 + mean_y**2 + c1)
            texture = texture + (alpha * s1).sum(1, keepdim=True)
            var_x = ((fx - mean_x) ** 2).mean([2, 3], keepdim=True)
            var_y = ((fy - mean_y) ** 2).mean([2, 3], keepdim=True)
            cov = (fx * fy).mean([2, 3], keepdim=True) - mean_x * mean_y
            s2 = (2 * cov + c2) / (var_x + var_y + c2)
            structure = structure + (beta * s2).sum(1, keepdim=True)
        return 1 - (texture + structure).flatten()


@functools.lru_cache(maxsize=2)
def pretrained_dists(repo_id: str | None, device: str) -> DISTS:
    """The DISTS model with the official weights on ``device``, built once per ``(repo_id, device)`` and cached.

    Args:
        repo_id (`str`, *optional*): a Hub repo of your own holding the converted weights (``None``: the official
            file, see :mod:`rp_diffusers.metrics.weights`).
        device (`str`): a torch device name, e.g. ``"cpu"`` or ``"cuda:0"``.

    Returns:
        A frozen :class:`DISTS`; the same object for the same arguments (do not modify it).

    Raises:
        MetricWeightsUnavailable: if the weights cannot be found; the message says how to get them.

    Example:
        >>> model = pretrained_dists(None, "cpu")  # doctest: +SKIP
        >>> model(reference, distorted)  # (N,) distances  # doctest: +SKIP
    """
    return DISTS(repo_id=repo_id).to(device)


def dists(x: torch.Tensor, y: torch.Tensor, *, model: DISTS | None = None, repo_id: str | None = None) -> torch.Tensor:
    """Per-image DISTS between two batches (weights loaded once and cached per device).

    Args:
        x, y (`torch.Tensor` of shape `(N, 3, H, W)`): images in [0, 1].
        model (`DISTS`, *optional*): a ready model (e.g. built from an explicit ``state_dict``).
        repo_id (`str`, *optional*): a Hub repo of your own holding the converted weights (no default).

    Returns:
        `torch.Tensor` of shape `(N,)`.

    Raises:
        MetricWeightsUnavailable: if the weights cannot be found.
    """
    model = model if model is not None else pretrained_dists(repo_id, str(x.device))
    return model(x, y)
