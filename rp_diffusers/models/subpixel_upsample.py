"""Exact sub-pixel form of diffusers' ``Upsample2D`` (nearest 2x, then a 3x3 convolution): 2.25x fewer FLOPs.

A 3x3 convolution applied after nearest-neighbour 2x upsampling only ever sees 2x2 distinct input pixels per output
pixel. Output row ``2i`` reads upsampled rows ``2i-1, 2i, 2i+1`` = input rows ``i-1, i, i`` (kernel rows
``w0`` and ``w1 + w2``); output row ``2i+1`` reads input rows ``i, i, i+1`` (kernel rows ``w0 + w1`` and ``w2``).
Columns work the same way. So the four output phases are four 2x2 convolutions of the *low-resolution* input:
16 multiply-adds per input pixel and channel pair instead of 4 x 9 = 36. The result is the same function; only the
summation order (and, in bf16/fp16, the rounding of the summed kernel taps) differs.

In SD 2.1's VAE decoder the three upsampler convolutions are 29% of the decoder's FLOPs, so this removes about 16%
of the decoder's work (``benchmarks/pipeline.py`` measures the effect). The module's parameters and state-dict keys
are unchanged (the summed kernel is a non-persistent buffer), so saving after the swap writes the original weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch import nn

__all__ = ["SubpixelUpsample2D", "subpixel_kernel", "use_subpixel_upsampling"]


def _phase_taps(weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse a size-3 kernel dimension into the two size-2 kernels of the even and odd output phases."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def subpixel_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) kernel -> (4 O, I, 2, 2): phases ordered (even row, even col), (even, odd), (odd, even), (odd, odd).

    The taps are summed in (at least) float32 and cast back once, so in bf16 the kernel is the correctly rounded sum.
    """
    if weight.ndim != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected a (O, I, 3, 3) kernel, got {tuple(weight.shape)}")
    rows = _phase_taps(weight.to(torch.promote_types(weight.dtype, torch.float32)), 2)
    kernels = [col for row in rows for col in _phase_taps(row, 3)]
    return torch.cat(kernels, 0).to(weight.dtype)


class SubpixelUpsample2D(Upsample2D):
    """``Upsample2D`` whose forward computes the four output phases at low resolution (see the module docstring).

    Instances are made by :func:`use_subpixel_upsampling` with :meth:`from_upsample`, which builds one around an
    existing module's convolution (the same ``nn.Conv2d`` object, so parameters and state-dict keys stay as they
    are) and puts it in that module's place. Cases the rewrite does not cover (a requested
    ``output_size`` other than 2x, a norm, a transposed convolution, a non-3x3 or LoRA-wrapped convolution, or a
    convolution being trained, whose weights need gradients the summed kernel cannot pass back) run the original
    forward. Gradients with respect to the input flow through either path.
    """

    @classmethod
    def from_upsample(cls, module: Upsample2D) -> SubpixelUpsample2D:
        """A sub-pixel upsampler sharing ``module``'s convolution (no copy), in the same training mode.

        Raises:
            ValueError: ``module`` is not a plain nearest-2x + 3x3-convolution ``Upsample2D``.
        """
        if not _convertible(module):
            raise ValueError(
                f"{type(module).__name__} is not a nearest-2x + 3x3 conv Upsample2D; it cannot be rewritten"
            )
        new = cls(module.channels, use_conv=False, out_channels=module.out_channels, interpolate=module.interpolate)
        new.use_conv, new.conv = True, module.conv  # the same Conv2d: its parameters stay shared and named alike
        new.train(module.training)
        new.refresh_subpixel_kernel()
        return new

    def refresh_subpixel_kernel(self) -> None:
        """Recompute the summed kernel from ``self.conv`` (call after changing the convolution's weights)."""
        conv = self.conv
        self.register_buffer("subpixel_weight", subpixel_kernel(conv.weight.detach()), persistent=False)
        bias = conv.bias.detach().repeat(4) if conv.bias is not None else None
        self.register_buffer("subpixel_bias", bias, persistent=False)
        self._subpixel_source = self._weight_state()

    def _weight_state(self) -> tuple:
        """What the summed kernel was computed from: storage, in-place version, dtype and device of the weights."""
        return tuple(
            (p.data_ptr(), p._version, p.dtype, p.device) if p is not None else None
            for p in (self.conv.weight, self.conv.bias)
        )

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        height, width = hidden_states.shape[-2:]
        if (output_size is not None and tuple(output_size) != (2 * height, 2 * width)) or args or kwargs:
            return super().forward(hidden_states, output_size, *args, **kwargs)
        if type(self.conv) is not nn.Conv2d:  # e.g. a LoRA layer injected after the switch
            return super().forward(hidden_states, output_size)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.conv.parameters()):
            return super().forward(hidden_states, output_size)  # the summed kernel would not pass gradients back
        if self._weight_state() != self._subpixel_source:  # weights moved, cast, loaded or fused since
            self.refresh_subpixel_kernel()
        weight = self.subpixel_weight
        if weight.dtype != hidden_states.dtype:
            return super().forward(hidden_states, output_size)
        out_channels = weight.shape[0] // 4
        phases = F.conv2d(hidden_states, weight, self.subpixel_bias, padding=1)  # (N, 4 O, H + 1, W + 1)
        batch = hidden_states.shape[0]
        channels_last = hidden_states.is_contiguous(memory_format=torch.channels_last) and not (
            hidden_states.is_contiguous()  # both hold for 1x1 maps and single channels: keep the default
        )
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(
            batch, out_channels, 2 * height, 2 * width, dtype=phases.dtype, device=phases.device
        ).contiguous(memory_format=memory_format)
        for index, (row, col) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            channels = slice(index * out_channels, (index + 1) * out_channels)
            out[:, :, row::2, col::2] = phases[:, channels, row : row + height, col : col + width]
        return out


def _convertible(module: nn.Module) -> bool:
    conv = getattr(module, "conv", None)
    return (
        type(module) is Upsample2D
        and module.use_conv
        and not module.use_conv_transpose
        and module.interpolate
        and module.norm is None
        and getattr(module, "name", "conv") == "conv"
        and type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def use_subpixel_upsampling(model: nn.Module) -> int:
    """Replace every convertible ``Upsample2D`` inside ``model`` by a :class:`SubpixelUpsample2D` sharing its
    convolution; returns how many.

    Idempotent: modules already switched get their summed kernel refreshed from the current weights.
    """
    if _convertible(model):
        raise ValueError("pass the model that contains the Upsample2D: a module cannot replace itself")
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, SubpixelUpsample2D):
            module.refresh_subpixel_kernel()
            count += 1
        elif _convertible(module):
            if getattr(module, "_hf_hook", None) is not None:
                raise ValueError(
                    f"{name} carries an accelerate hook (offloading): enable sub-pixel upsampling before offloading"
                )
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, SubpixelUpsample2D.from_upsample(module))
            count += 1
    return count
