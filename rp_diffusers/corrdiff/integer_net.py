"""Integer hyper-synthesis: the scale indexes of y, computed bit-exactly on any machine, thread count or device.

The Gaussian conditional codes each y element with the table row its predicted scale selects. If encoder and
decoder disagree on one index (a float scale landing on the other side of a table boundary on another CPU, BLAS
or GPU), the range decoder silently desynchronises and the rest of the image is garbage. A safety margin does
not remove boundaries, so we follow Balle et al. 2019 ("Integer networks for data compression"):

- ``update()`` turns the trained float hyper-synthesis into an integer one: per output channel, weights are
  scaled by a power of two ``2**e`` and rounded to at most ``WEIGHT_BITS`` bits; biases are rounded at the
  accumulator scale; activations are fixed-point integers with ``ACT_FRACTION_BITS`` fractional bits.
- The forward pass runs float64 convolutions on integer-valued operands. Every partial sum is an integer below
  ``2**52`` (checked at ``update()`` from the weights and the activation clamp), hence exactly representable, so
  every addition is exact and the result does not depend on summation order, threads, BLAS or device.
- Rescaling is a division by ``2**e`` (exact) and ``floor(. + 0.5)``; ReLU and clamping are exact.
- Indexes are counts of integer thresholds ``ceil(table_scale / gain * 2**ACT_FRACTION_BITS)`` (stored, one
  row per quality) that the integer scale reaches: integer comparisons only.

The float network is what training optimises; the integer one differs from it by about 2**-16 in scale units,
which changes the rate by a negligible amount (measured in the tests).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACT_FRACTION_BITS = 16
ACT_LIMIT = float(2**26)  # clamp of the fixed-point activations: |value| <= 1024 in real units
WEIGHT_BITS = 12
EXACT_LIMIT = float(2**52)


def _out_axis(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.ConvTranspose2d) else 0


def threshold_row(scale_values: torch.Tensor, gain: float) -> torch.Tensor:
    """One quality's row of the threshold table: ``ceil(scale / gain * 2**ACT_FRACTION_BITS)`` for every scale
    of the table but the first, int64 on the CPU (an index counts the thresholds a fixed-point scale reaches)."""
    return torch.ceil(scale_values.detach().double().cpu()[1:] / gain * 2**ACT_FRACTION_BITS).to(torch.int64)


class IntegerHyperSynthesis(nn.Module):
    """Integer twin of a ``nn.Sequential`` of ``Conv2d`` / ``ConvTranspose2d`` / ``ReLU`` layers.

    Args:
        float_net: the trained float hyper-synthesis; only its layer types and shapes are read at construction.
        num_scales: length of the Gaussian conditional's scale table.
        num_qualities: number of quantisation gains (rows of the threshold table).
    """

    def __init__(self, float_net: nn.Sequential, num_scales: int, num_qualities: int):
        super().__init__()
        self.convs: list[tuple[str, dict]] = []
        self.relu_after: list[bool] = []
        layers = list(float_net)
        for i, layer in enumerate(layers):
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                name = f"layer{len(self.convs)}"
                out_channels = layer.weight.shape[_out_axis(layer)]
                self.register_buffer(f"{name}_weight", torch.zeros(layer.weight.shape, dtype=torch.int32))
                self.register_buffer(f"{name}_bias", torch.zeros(out_channels, dtype=torch.int64))
                self.register_buffer(f"{name}_shift", torch.zeros(out_channels, dtype=torch.int32))
                kwargs = {"stride": layer.stride, "padding": layer.padding}
                if isinstance(layer, nn.ConvTranspose2d):
                    kwargs["output_padding"] = layer.output_padding
                self.convs.append(("transposed" if isinstance(layer, nn.ConvTranspose2d) else "conv", kwargs))
                following = layers[i + 1] if i + 1 < len(layers) else None
                self.relu_after.append(isinstance(following, nn.ReLU))
            elif not isinstance(layer, nn.ReLU):
                raise TypeError(f"integer hyper-synthesis supports Conv2d, ConvTranspose2d and ReLU, got {layer}")
        self.register_buffer("thresholds", torch.zeros(num_qualities, num_scales - 1, dtype=torch.int64))

    @torch.no_grad()
    def update(self, float_net: nn.Sequential, scale_values: torch.Tensor, gains: list[float]) -> None:
        """Quantise ``float_net`` into the integer buffers and tabulate the per-quality thresholds.

        Raises:
            ValueError: if a layer's worst-case accumulator could reach 2**52 (exactness would be lost).
        """
        convs = [layer for layer in float_net if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))]
        input_limit = ACT_LIMIT
        for index, layer in enumerate(convs):
            axis = _out_axis(layer)
            weight = layer.weight.detach().double().movedim(axis, 0)
            peak = weight.abs().flatten(1).amax(1).clamp_min(1e-30)
            shift = torch.floor(torch.log2((2**WEIGHT_BITS - 1) / peak)).clamp(-30, 30)
            weight_int = torch.round(weight * torch.exp2(shift).view(-1, *[1] * (weight.ndim - 1)))
            bias = (
                layer.bias.detach().double()
                if layer.bias is not None
                else torch.zeros(len(shift), dtype=torch.float64)
            )
            bias_int = torch.round(bias * torch.exp2(shift + ACT_FRACTION_BITS))
            bound = input_limit * weight_int.abs().flatten(1).sum(1) + bias_int.abs()
            if float(bound.max()) >= EXACT_LIMIT:
                raise ValueError(
                    f"integer hyper-synthesis layer {index}: worst-case accumulator {float(bound.max()):.3g} "
                    "reaches 2**52; lower WEIGHT_BITS or ACT_LIMIT, or use a narrower hyper-synthesis"
                )
            getattr(self, f"layer{index}_weight").copy_(weight_int.movedim(0, axis).to(torch.int32))
            getattr(self, f"layer{index}_bias").copy_(bias_int.to(torch.int64))
            getattr(self, f"layer{index}_shift").copy_(shift.to(torch.int32))
        self.thresholds.copy_(torch.stack([threshold_row(scale_values, gain) for gain in gains]))

    @torch.no_grad()
    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        """Integer z (B, C, h, w) -> fixed-point scales (B, M, 4h, 4w): float64 holding integers (real * 2**16)."""
        if not torch.equal(z_hat, torch.round(z_hat)):
            raise ValueError("the integer hyper-synthesis takes integer z (the decoded symbols)")
        act = (z_hat.double() * 2**ACT_FRACTION_BITS).clamp(-ACT_LIMIT, ACT_LIMIT)
        for index, ((kind, kwargs), relu) in enumerate(zip(self.convs, self.relu_after)):
            weight = getattr(self, f"layer{index}_weight").double()
            shift = getattr(self, f"layer{index}_shift").double().view(1, -1, 1, 1)
            bias = getattr(self, f"layer{index}_bias").double().view(1, -1, 1, 1)
            conv = F.conv_transpose2d if kind == "transposed" else F.conv2d
            acc = conv(act, weight, None, **kwargs) + bias
            act = torch.floor(acc / torch.exp2(shift) + 0.5)
            act = act.clamp(0 if relu else -ACT_LIMIT, ACT_LIMIT)
        return act

    def indexes(self, z_hat: torch.Tensor, quality: int) -> torch.Tensor:
        """Scale-table index of every y element for ``quality``: int64 (B, M, 4h, 4w) in [0, num_scales)."""
        scales = self.forward(z_hat)
        # count of thresholds <= scale; integer-valued float64 on both sides, so the comparison is exact
        return torch.searchsorted(self.thresholds[quality].double().contiguous(), scales.contiguous(), right=True)
