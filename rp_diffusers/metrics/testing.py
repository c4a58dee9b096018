"""Seeded weights and inputs that any environment reproduces bit for bit: the oracle tests' shared recipe.

Our metric networks and the reference packages (`lpips`, `DISTS_pytorch`, `pytorch-fid`) are compared with
IDENTICAL random weights. The recipe uses only ``torch.Generator`` on the CPU (the Mersenne twister and
``randn`` are the same across torch releases): one generator seeded once, a standard-normal draw of each
tensor's shape in sorted key order, then a fixed per-kind scaling so that activations stay O(1):

- convolution weights: ``z * sqrt(2 / fan_in)`` (He); biases: ``0.05 * z``;
- LPIPS "lin" weights and DISTS alpha/beta: ``0.1 * |z|`` (they are non-negative in the official files);
- batch norm: weight ``1 + 0.1 z``, bias ``0.1 z``, running mean ``0.1 z``, running var ``1 + 0.1 |z|``.

``benchmarks/verify_metrics_reference.py`` runs the reference packages with these weights in a throwaway
virtualenv and stores their outputs in ``tests/fixtures/metrics_reference.json``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _network(name: str) -> nn.Module:
    from .dists import DISTS
    from .inception import FIDInceptionV3
    from .lpips import LPIPS

    builders = {
        "lpips_alex": lambda: LPIPS("alex", load_weights=False),
        "lpips_vgg": lambda: LPIPS("vgg", load_weights=False),
        "dists": lambda: DISTS(load_weights=False),
        "fid_inception": lambda: FIDInceptionV3(load_weights=False),
    }
    if name not in builders:
        raise ValueError(f"unknown metric network {name!r}; choose one of {sorted(builders)}")
    return builders[name]()


def _scaled(key: str, z: torch.Tensor) -> torch.Tensor:
    if key.endswith("running_var"):
        return 1 + 0.1 * z.abs()
    if key.endswith(("running_mean", "bn.bias")):
        return 0.1 * z
    if key.endswith("bn.weight"):
        return 1 + 0.1 * z
    if key.startswith("lin") or key in ("alpha", "beta"):
        return 0.1 * z.abs()
    if key.endswith(".weight") and z.ndim == 4:
        return z * math.sqrt(2.0 / (z.shape[1] * z.shape[2] * z.shape[3]))
    if key.endswith(".bias"):
        return 0.05 * z
    raise ValueError(f"no seeding rule for parameter {key!r}")


def seeded_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for metric network ``name`` in our key layout, reproducible in any environment.

    Args:
        name (`str`): ``"lpips_alex"``, ``"lpips_vgg"``, ``"dists"`` or ``"fid_inception"``.
        seed (`int`): generator seed.

    Returns:
        `dict[str, torch.Tensor]`: float32 tensors for every key our network loads (no ``num_batches_tracked``).
    """
    shapes = {
        key: tuple(value.shape)
        for key, value in _network(name).state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    generator = torch.Generator().manual_seed(seed)
    return {key: _scaled(key, torch.randn(shapes[key], generator=generator)) for key in sorted(shapes)}


def seeded_network(name: str, seed: int = 0) -> nn.Module:
    """Our metric network ``name`` loaded with :func:`seeded_state_dict` (for tests; not a usable metric)."""
    from .dists import DISTS
    from .inception import FIDInceptionV3
    from .lpips import LPIPS

    state_dict = seeded_state_dict(name, seed)
    if name.startswith("lpips_"):
        return LPIPS(name.removeprefix("lpips_"), state_dict=state_dict)
    return DISTS(state_dict=state_dict) if name == "dists" else FIDInceptionV3(state_dict=state_dict)


def seeded_image_pair(shape: tuple[int, int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference batch and a distorted one, both in [0, 1], from exact (bit-reproducible) operations only.

    The reference is blocky noise (4x4 blocks) plus fine noise; image ``i`` of the distorted batch is the
    reference dimmed and shifted, plus Gaussian noise of standard deviation ``0.04 * (i + 1)``.

    Returns:
        `(reference, distorted)`, float32 tensors of ``shape``.
    """
    batch, channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((batch, channels, -(-height // 4), -(-width // 4)), generator=generator)
    coarse = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[:, :, :height, :width]
    reference = (0.8 * coarse + 0.2 * torch.rand(shape, generator=generator)).contiguous()
    noise = torch.randn(shape, generator=generator)
    strength = 0.04 * torch.arange(1, batch + 1, dtype=torch.float32).view(-1, 1, 1, 1)
    return reference, (0.9 * reference + 0.05 + strength * noise).clamp(0, 1)


def seeded_features(count: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Non-negative float64 feature vectors like Inception's (``|z| + shift``), ``(count, dim)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, dim), generator=generator, dtype=torch.float64).abs() + shift


def checksum(tensors: dict[str, torch.Tensor] | torch.Tensor) -> float:
    """Sum of absolute values in float64: a cheap fingerprint to detect a generator that drifted."""
    values = tensors.values() if isinstance(tensors, dict) else [tensors]
    return float(sum(value.double().abs().sum() for value in values))
