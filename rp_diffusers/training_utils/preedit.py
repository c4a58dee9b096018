"""Per-image pre-editing: Adam on an image's own pixels against the rate-perception loss through a surrogate.

The ceiling of stage 2 (``benchmarks/preedit_ceiling.py``: what a pre-processor could reach on one image) and the
targets that ``training/distill_preedits.py`` distils into an adapter; one implementation serves both.
"""

from __future__ import annotations

import torch

from ..losses import RatePerceptionLoss


def pre_edit(loss_fn: RatePerceptionLoss, original: torch.Tensor, quality: int, steps: int, lr: float):
    """Adam on the pixels against ``loss_fn`` at ``quality``; returns the edited image and the loss trace."""
    slope = loss_fn.codec_slope(original, float(quality))  # of the original: the same at every step
    pixels = original.shape[-2] * original.shape[-1]
    x = original.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    trace = []
    for _ in range(steps):
        coded = loss_fn.surrogate(x.clamp(0, 1), float(quality))
        distortion = loss_fn.distortion(original, coded.reconstruction.float())
        loss = (distortion + loss_fn.lambda_rate * slope * coded.bits.float() / pixels).mean()  # RatePerceptionLoss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        trace.append(float(loss))
    return x.detach(), trace
