"""Conditional diffusion decoder and DDIM sampling with privileged correction (CorrDiff, our reading).

The decoder is a diffusers ``UNet2DModel`` whose input is ``[x_t, x_e2e]`` (6 channels, pixel space in [-1, 1])
and whose output is a residual on ``x_e2e``: ``x0_diff = x_e2e + unet([x_t, x_e2e], t)``, or with the config's
``sigma_data`` set, the EDM-preconditioned residual of :func:`predict_x0`. Sampling uses
diffusers' ``DDIMScheduler`` (eta = 0, "trailing" timesteps: at the config's ``strength`` 1 a 4-step run starts at
t = 999 from pure noise; at strength 0.1 from x_e2e noised to t = 99; the noise is drawn by a seeded CPU generator
and the seed travels in the file header).

Privileged correction: at every step the x0 estimate is replaced by ``x0' = w x0_diff + (1 - w) x_e2e`` with
one weight ``w`` per block of ``block_size`` pixels, taken from a small codebook. The encoder, which knows x,
picks each ``w`` greedily to minimise ``MSE(x0', x) + (1 - distortion_weight) * P(x0', x)`` where the realism
proxy ``P = (sqrt(E(x0')) - sqrt(E(x)))**2`` penalises a block whose high-frequency (Laplacian) energy ``E``
differs from the original's (MSE alone prefers blur; real texture has the original's energy). The choices
are sent as side information; the decoder replays the same trajectory. At the last step candidates are
compared as the 8-bit images the decoder outputs, and the encoder keeps the better of two trajectories:
greedy at every step, or uncorrected (w = 1) until a greedy last step. Since w = 1 (and w = 0) are in the
codebook, the objective of the output never exceeds that of uncorrected sampling with the same seed (nor, for
``distortion_weight = 1``, the MSE of ``x_e2e`` when 0 is in the codebook).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0


def build_unet(
    block_out_channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1, patch_size: int = 2
) -> UNet2DModel:
    """A convolutional (attention-free, any size) ``UNet2DModel`` taking ``[x_t, x_e2e]``.

    With ``patch_size`` p > 1 the UNet sees ``pixel_unshuffle(., p)`` of its input (6 p**2 channels at 1/p of the
    resolution) and its output is pixel-shuffled back: p**2 times less compute per image; p is read back from
    ``unet.config.in_channels``.
    """
    levels = len(block_out_channels)
    return UNet2DModel(
        in_channels=6 * patch_size**2,
        out_channels=3 * patch_size**2,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        layers_per_block=layers_per_block,
        norm_num_groups=min(8, block_out_channels[0]),
        add_attention=False,  # no global attention: any image size, linear cost in pixels
    )


def build_scheduler() -> DDIMScheduler:
    """The noise schedule of training and sampling (linear betas, 1000 steps, x0 fed to ``step``)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type="sample",
    )


_ALPHAS_CUMPROD: torch.Tensor | None = None


def _alphas_cumprod() -> torch.Tensor:
    global _ALPHAS_CUMPROD
    if _ALPHAS_CUMPROD is None:
        _ALPHAS_CUMPROD = build_scheduler().alphas_cumprod.double()
    return _ALPHAS_CUMPROD


def predict_x0(
    unet: UNet2DModel,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    cond: torch.Tensor,
    sigma_data: float | None = None,
) -> torch.Tensor:
    """x0 estimate (B, 3, H, W) in model space [-1, 1] from noisy ``x_t`` and the condition ``cond`` = x_e2e.

    ``sigma_data`` None: the UNet sees ``[x_t, cond]`` and returns the residual, ``x0 = cond + unet(.)``. A float:
    EDM preconditioning (Karras et al., NeurIPS 2022) of the residual ``r = x0 - cond``, whose standard deviation
    is taken as ``sigma_data``: with ``s = sqrt(1 - a_t) / sqrt(a_t)`` and the noisy residual ``r_t = x_t / sqrt(a_t)
    - cond = r + s noise``, ``x0 = cond + c_skip r_t + c_out unet([c_in r_t, cond])``, ``c_skip = sd^2 / (s^2 +
    sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_in = 1 / sqrt(s^2 + sd^2)``. The skip term alone is the
    best linear estimate, so the UNet only learns what is left: without it, a UNet must learn to pass x_t
    through, which it did not in 1,000 CPU steps at low noise.
    """
    dtype = next(unet.parameters()).dtype
    patch = math.isqrt(unet.config.in_channels // 6)
    if sigma_data is not None:
        a = _alphas_cumprod()[timesteps.long().cpu()].view(-1, 1, 1, 1)  # float64 on the CPU (no MPS float64)
        s = ((1 - a) / a).sqrt()
        total = (s**2 + sigma_data**2).sqrt()
        c_skip, c_out, c_in, root_a = (
            c.float().to(x_t.device) for c in (sigma_data**2 / total**2, s * sigma_data / total, 1 / total, a.sqrt())
        )
        residual_t = x_t / root_a - cond
        inputs = torch.cat([c_in * residual_t, cond], 1)
    else:
        inputs = torch.cat([x_t, cond], 1)
    inputs = F.pixel_unshuffle(inputs, patch) if patch > 1 else inputs
    out = unet(inputs.to(dtype), timesteps).sample.float()
    out = F.pixel_shuffle(out, patch) if patch > 1 else out
    if sigma_data is not None:
        return cond + c_skip * residual_t + c_out * out
    return cond + out


def sampling_scheduler(num_steps: int, strength: float = 1.0) -> DDIMScheduler:
    """The DDIM scheduler of a ``num_steps`` run at ``strength``: its schedule has ``round(num_steps / strength)``
    steps, of which the run takes the last ``num_steps`` (diffusers' img2img convention; see :func:`corrected_sample`)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    if num_steps < 1:
        raise ValueError("num_inference_steps must be at least 1")
    scheduler = build_scheduler()
    scheduler.set_timesteps(min(max(num_steps, round(num_steps / strength)), scheduler.config.num_train_timesteps))
    return scheduler


def sampling_timesteps(num_steps: int, strength: float = 1.0) -> torch.Tensor:
    """The timesteps a ``num_steps`` DDIM run of :func:`corrected_sample` visits: 4 steps at strength 1: 999, 749,
    499, 249 (from pure noise); at strength 0.1: 99, 74, 49, 24 (from x_e2e noised to t = 99)."""
    return sampling_scheduler(num_steps, strength).timesteps[-num_steps:].clone()


def diffusion_loss(
    unet,
    scheduler,
    image: torch.Tensor,
    x_e2e: torch.Tensor,
    generator: torch.Generator,
    timesteps: torch.Tensor | int | None = None,
    sigma_data: float | None = None,
):
    """Phase-2 loss: MSE of the x0 estimate at a drawn timestep. Images in [0, 1], (B, 3, H, W).

    ``timesteps``: draw each sample's timestep from these (e.g. :func:`sampling_timesteps`: a few-step decoder
    trained only where it is sampled); ``None`` draws uniformly from all of the scheduler's training timesteps;
    an int ``t`` draws uniformly from 0 to ``t`` (the range a decoder of strength < 1 visits). ``sigma_data``: the
    parameterization of :func:`predict_x0`.
    """
    x0, cond = image * 2 - 1, x_e2e.detach() * 2 - 1
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    if timesteps is None or isinstance(timesteps, int):
        high = scheduler.config.num_train_timesteps if timesteps is None else int(timesteps) + 1
        steps = torch.randint(0, high, (x0.shape[0],), generator=generator)
    else:
        steps = timesteps[torch.randint(0, len(timesteps), (x0.shape[0],), generator=generator)].long()
    x_t = scheduler.add_noise(x0, noise, steps.to(x0.device))
    return F.mse_loss(predict_x0(unet, x_t, steps.to(x0.device), cond, sigma_data), x0)


def _block_sums(values: torch.Tensor, size: tuple[int, int], block: int) -> torch.Tensor:
    """Sum of (1, C, H', W') over channels and the pixels of each block of the valid ``size`` -> (nbh, nbw)."""
    h, w = size
    nbh, nbw = math.ceil(h / block), math.ceil(w / block)
    v = F.pad(values[..., :h, :w].sum(1)[0], (0, nbw * block - w, 0, nbh * block - h))
    return v.reshape(nbh, block, nbw, block).sum((1, 3)).double()


def _laplacian(image: torch.Tensor) -> torch.Tensor:
    kernel = _LAPLACIAN.to(image).expand(image.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernel, groups=image.shape[1])


def weight_map(choices: torch.Tensor, codebook: torch.Tensor, shape: tuple[int, int], block: int) -> torch.Tensor:
    """Per-block codebook indexes (nbh, nbw) -> per-pixel weights (1, 1, H, W) over the padded image."""
    w = codebook[choices].float().repeat_interleave(block, 0).repeat_interleave(block, 1)[None, None]
    pad_h, pad_w = max(shape[0] - w.shape[-2], 0), max(shape[1] - w.shape[-1], 0)
    return F.pad(w, (0, pad_w, 0, pad_h), mode="replicate")[..., : shape[0], : shape[1]]


@dataclass
class CorrectionResult:
    """Output of :func:`corrected_sample` (images in [0, 1] on 8-bit levels, padded size)."""

    image: torch.Tensor
    choices: torch.Tensor
    objective: float | None = None
    uncorrected: torch.Tensor | None = None
    objective_uncorrected: float | None = None


class _Chooser:
    """Encoder-side choice of block weights for ``MSE + (1 - distortion_weight) * realism proxy``."""

    def __init__(self, target, x_e2e, size, block, codebook, distortion_weight):
        self.target, self.x_e2e, self.size, self.block = target, x_e2e, size, block
        self.codebook, self.mu = codebook.double(), 1.0 - distortion_weight
        self.pixels = _block_sums(torch.ones_like(target), size, block)
        self.energy_x = _block_sums(_laplacian(target) ** 2, size, block) / self.pixels

    def _objective(self, sse: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """Per-block objective summed over the block's pixels (so block scores add up to the image's)."""
        proxy = (energy.clamp_min(0).sqrt() - self.energy_x.sqrt()) ** 2
        return sse + self.mu * self.pixels * proxy

    def greedy(self, x0: torch.Tensor) -> torch.Tensor:
        """Float blend at an intermediate step: quadratic forms in w, per block, for every codebook entry."""
        a, b = x0 - self.target, self.x_e2e - self.target
        la, lb = _laplacian(x0), _laplacian(self.x_e2e)
        stats = [
            _block_sums(p * q, self.size, self.block)
            for p, q in ((a, a), (a, b), (b, b), (la, la), (la, lb), (lb, lb))
        ]
        w = self.codebook.view(-1, 1, 1)

        def form(aa, ab, bb):  # noqa: E306 - sum over the block of (w p + (1 - w) q)**2
            return w * w * aa + 2 * w * (1 - w) * ab + (1 - w) ** 2 * bb

        scores = self._objective(form(*stats[:3]), form(*stats[3:]) / self.pixels)
        return scores.argmin(0)

    def final(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last step: score each candidate as the 8-bit image the decoder will output; (choices, scores)."""
        scores = []
        for w in self.codebook.tolist():
            candidate = _to_8bit(w * x0 + (1 - w) * self.x_e2e)
            sse = _block_sums((candidate - self.target) ** 2, self.size, self.block)
            scores.append(
                self._objective(sse, _block_sums(_laplacian(candidate) ** 2, self.size, self.block) / self.pixels)
            )
        scores = torch.stack(scores)
        return scores.argmin(0), scores


def _to_8bit(image: torch.Tensor) -> torch.Tensor:
    return torch.round(image.clamp(0, 1) * 255) / 255


@torch.no_grad()
def _trajectory(
    unet, scheduler, timesteps, x_e2e, noise, policy: Callable, codebook, block, sigma_data=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run DDIM over ``timesteps`` from ``noise`` (pure noise at t = 999, else added to x_e2e at the first
    timestep); ``policy(step, x0_diff, last)`` gives each step's block choices."""
    cond = x_e2e * 2 - 1
    start = int(timesteps[0])
    if start >= scheduler.config.num_train_timesteps - 1:
        x_t = noise
    else:
        x_t = scheduler.add_noise(cond, noise, torch.tensor([start], device=cond.device))
    choices = []
    for step, t in enumerate(timesteps):
        t_batch = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
        x0_diff = (predict_x0(unet, x_t, t_batch, cond, sigma_data) + 1) / 2
        last = step == len(timesteps) - 1
        chosen = policy(step, x0_diff, last)
        choices.append(chosen)
        weights = weight_map(chosen, codebook.to(x0_diff.device), x0_diff.shape[-2:], block)
        x0 = weights * x0_diff + (1 - weights) * x_e2e
        if last:
            return _to_8bit(x0), torch.stack(choices)
        x_t = scheduler.step(x0 * 2 - 1, t, x_t, eta=0.0).prev_sample
    raise ValueError("num_inference_steps must be at least 1")


def corrected_sample(
    unet: UNet2DModel,
    x_e2e: torch.Tensor,
    seed: int,
    num_steps: int,
    block_size: int,
    codebook: tuple[float, ...],
    size: tuple[int, int],
    target: torch.Tensor | None = None,
    choices: torch.Tensor | None = None,
    distortion_weight: float = 1.0,
    strength: float = 1.0,
    sigma_data: float | None = None,
) -> CorrectionResult:
    """Sample the diffusion decoder with block-wise correction toward ``x_e2e``.

    Args:
        unet: the conditional ``UNet2DModel``.
        x_e2e: (1, 3, H, W) end-to-end reconstruction in [0, 1], padded to the model's multiple.
        seed: seed of the starting noise (a CPU ``torch.Generator``, so every device draws the same noise).
        num_steps: DDIM steps.
        block_size: side in pixels of the blocks sharing one weight.
        codebook: the allowed weights w (must contain 1.0 for the encoder's guarantee).
        size: (h, w) of the unpadded image: blocks tile it and only its pixels are scored.
        target: encoder side: the original (1, 3, H, W) in [0, 1] (padded like ``x_e2e``).
        choices: decoder side: (num_steps, ceil(h / block), ceil(w / block)) codebook indexes.
        distortion_weight: in [0, 1]; 1 chooses by MSE alone, lower values add the realism proxy.
        strength: in (0, 1]; 1 starts from pure noise; below 1 the run starts from ``x_e2e`` noised to the first
            of its timesteps (:func:`sampling_timesteps`), as diffusers' img2img pipelines do.
        sigma_data: the UNet's parameterization (:func:`predict_x0`), from the model's config.

    Returns:
        ``CorrectionResult``; with ``target`` it also holds the uncorrected sample and both objectives.
    """
    if (target is None) == (choices is None):
        raise ValueError("pass exactly one of `target` (encoder) or `choices` (decoder)")
    if not 0.0 <= distortion_weight <= 1.0:
        raise ValueError(f"distortion_weight must lie in [0, 1], got {distortion_weight}")
    scheduler = sampling_scheduler(num_steps, strength)
    timesteps = scheduler.timesteps[-num_steps:]
    book = torch.tensor(codebook, dtype=torch.float64)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(x_e2e.shape, generator=generator, dtype=torch.float32).to(x_e2e.device)

    def run(policy):
        return _trajectory(unet, scheduler, timesteps, x_e2e, noise, policy, book, block_size, sigma_data)

    if choices is not None:
        image, _ = run(lambda step, x0, last: choices[step].to(x0.device))
        return CorrectionResult(image=image, choices=choices)

    if 1.0 not in codebook:
        raise ValueError(f"the codebook {codebook} must contain 1.0 (the uncorrected estimate)")
    chooser = _Chooser(target, x_e2e, size, block_size, book.to(x_e2e.device), distortion_weight)
    keep = book.tolist().index(1.0)
    finals: dict[str, torch.Tensor] = {}
    last_x0: dict[str, torch.Tensor] = {}

    def policy_for(name: str, greedy_steps: bool):
        def policy(step, x0, last):
            if not last:
                grid = chooser.pixels.shape
                return chooser.greedy(x0) if greedy_steps else torch.full(grid, keep, device=x0.device)
            chosen, scores = chooser.final(x0)
            finals[name], last_x0[name] = scores, x0
            return chosen

        return policy

    candidates = {name: run(policy_for(name, greedy)) for name, greedy in (("greedy", True), ("late", False))}
    objectives = {name: float(finals[name].min(0).values.sum()) for name in candidates}
    best = min(objectives, key=objectives.get)
    # the "late" trajectory is the uncorrected one until its last step, so its w = 1 candidate is plain sampling
    return CorrectionResult(
        image=candidates[best][0],
        choices=candidates[best][1],
        objective=objectives[best],
        uncorrected=_to_8bit(last_x0["late"]),
        objective_uncorrected=float(finals["late"][keep].sum()),
    )
