"""CorrDiff's networks: analysis/synthesis transforms, scale hyperprior and the end-to-end (MSE) decoder.

Layout (Balle et al. 2018 scale hyperprior, CompressAI's ``ScaleHyperprior`` shapes):
``x -> g_a -> y`` (stride 16), ``|y| -> h_a -> z`` (stride 4 more), ``z_hat -> h_s -> scales of y``,
``y_hat -> g_s -> x_e2e``. Variable rate: quality ``q`` picks a gain ``g = gains[q]``; the coded symbols are
``round(g * y)`` with scales ``g * h_s(z_hat)``, and ``y_hat = symbols / g`` (one model, several rates).
The conditional diffusion decoder (``diffusion.py``) is attached as ``model.unet``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .entropy import EntropyBottleneck, GaussianConditional, scale_table
from .integer_net import IntegerHyperSynthesis, threshold_row


@dataclass
class CorrDiffConfig:
    """Settings of a CorrDiff model (saved as ``config.json``). Image sides are padded to multiples of 64."""

    channels: int = field(default=64, metadata={"help": "width N of the transforms"})
    latent_channels: int = field(default=96, metadata={"help": "channels M of y"})
    hyper_channels: int = field(default=64, metadata={"help": "channels of z"})
    gains: tuple[float, ...] = field(
        default=(0.5, 0.7071, 1.0, 1.4142, 2.0), metadata={"help": "quantisation gain per quality (ascending)"}
    )
    scale_min: float = field(default=0.11, metadata={"help": "smallest scale of the Gaussian table"})
    scale_max: float = field(default=64.0, metadata={"help": "largest scale of the Gaussian table"})
    num_scales: int = field(default=64, metadata={"help": "entries of the Gaussian scale table"})
    tail_sigmas: float = field(default=6.0, metadata={"help": "Gaussian rows cover +-tail_sigmas * scale"})
    z_half_range: int = field(default=64, metadata={"help": "factorized rows cover median +- this"})
    num_inference_steps: int = field(default=4, metadata={"help": "DDIM steps of the diffusion decoder"})
    strength: float = field(
        default=1.0,
        metadata={
            "help": "fraction of the noise schedule the decoder runs: 1 starts from pure noise (t = 999); s < 1 "
            "starts from x_e2e noised to the first of the last num_inference_steps timesteps of a "
            "round(num_inference_steps / s)-step schedule (0.1 with 4 steps: t = 99, 74, 49, 24)"
        },
    )
    sigma_data: float | None = field(
        default=None,
        metadata={
            "help": "None: the UNet returns the residual x0 - x_e2e; a float: EDM preconditioning of that residual, "
            "with this standard deviation (in [-1, 1] units; see corrdiff.diffusion.predict_x0)"
        },
    )
    diffusion_by_default: bool = field(
        default=True,
        metadata={
            "help": "False: the codec writes files for the end-to-end decoder (no side information) unless "
            "num_inference_steps is passed; for a diffusion decoder that measured worse than the e2e one"
        },
    )
    block_size: int = field(default=64, metadata={"help": "side of the blocks with their own correction weight"})
    codebook: tuple[float, ...] = field(
        default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata={"help": "weights w of x0' = w x0_diff + (1 - w) x_e2e"}
    )
    distortion_weight: float = field(default=0.5, metadata={"help": "1: choose by MSE only; 0: MSE + realism"})
    lmbda: float = field(default=0.013, metadata={"help": "rate-distortion lambda of training (for the record)"})
    default_quality: int | None = field(
        default=None, metadata={"help": "quality used when none is given (None: the middle gain, len(gains) // 2)"}
    )
    earlier_decoders: tuple[dict, ...] = field(
        default=(),
        metadata={
            "help": "models this one was made from by with_gains, whose files it decodes: each names the earlier "
            "end-to-end decoder id (hex), its table_hash (hex, for format-1 files) and, per earlier quality, the "
            "quality of this model with the same gain"
        },
    )

    pad_multiple = 64

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> CorrDiffConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown CorrDiff config keys {unknown}; this version knows {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def __post_init__(self) -> None:
        gains = [float(g) for g in self.gains]
        if not gains or any(g <= 0 for g in gains) or any(a >= b for a, b in zip(gains, gains[1:])):
            raise ValueError(f"gains must be positive and strictly ascending, got {list(self.gains)}")
        if self.default_quality is not None and not 0 <= int(self.default_quality) < len(gains):
            raise ValueError(f"default_quality must index gains (0-{len(gains) - 1}), got {self.default_quality}")

    @property
    def default_quality_index(self) -> int:
        """The quality a codec uses when none is given: ``default_quality``, else the middle gain."""
        return len(self.gains) // 2 if self.default_quality is None else int(self.default_quality)


def _digest_tensors(digest, state: dict[str, torch.Tensor]) -> None:
    """Feed a state dict to a hash: names, shapes and values (floats as little-endian float32)."""
    for name, tensor in sorted(state.items()):
        array = tensor.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
        digest.update(f"{name}:{tuple(array.shape)}:{array.dtype.str[1:]}".encode())
        digest.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient still reaches an ``x`` below the bound when descent would raise it.

    A plain ``clamp_min`` has zero gradient below its bound: a GDN weight that one optimiser step pushes under it
    stays there for good (Balle's GDN reparametrisation passes those gradients, as this does).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes, None


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016); ``inverse=True`` gives IGDN.

    ``beta`` and ``gamma`` are stored as square roots with Balle's lower bounds (:class:`_LowerBound`): the
    off-diagonal ``gamma`` start at their bound, and half of them would otherwise stop learning at the first step.
    """

    def __init__(self, channels: int, inverse: bool = False, pedestal: float = 2**-36):
        super().__init__()
        self.inverse, self.pedestal = inverse, pedestal
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + pedestal))
        self.gamma = nn.Parameter(torch.sqrt(0.1 * torch.eye(channels) + pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = _LowerBound.apply(self.beta, math.sqrt(1e-6 + self.pedestal)) ** 2 - self.pedestal
        gamma = _LowerBound.apply(self.gamma, math.sqrt(self.pedestal)) ** 2 - self.pedestal
        norm = nn.functional.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def _conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def _deconv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel, stride, padding=kernel // 2, output_padding=stride - 1)


class CorrDiffModel(nn.Module):
    """All CorrDiff networks. ``unet`` (the diffusion decoder) is ``None`` until phase 2 attaches one.

    Args:
        config: a ``CorrDiffConfig``.

    Example:
        >>> model = CorrDiffModel(CorrDiffConfig(channels=16, latent_channels=16, hyper_channels=8))
        >>> out = model(torch.rand(2, 3, 64, 64), torch.tensor([0, 4]))
        >>> out["x_e2e"].shape, out["bpp"].shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2]))
    """

    def __init__(self, config: CorrDiffConfig):
        super().__init__()
        self.config = config
        n, m, k = config.channels, config.latent_channels, config.hyper_channels
        self.g_a = nn.Sequential(_conv(3, n), GDN(n), _conv(n, n), GDN(n), _conv(n, n), GDN(n), _conv(n, m))
        self.g_s = nn.Sequential(
            _deconv(m, n), GDN(n, True), _deconv(n, n), GDN(n, True), _deconv(n, n), GDN(n, True), _deconv(n, 3)
        )
        self.h_a = nn.Sequential(_conv(m, n, 3, 1), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, k))
        self.h_s = nn.Sequential(_deconv(k, n), nn.ReLU(), _deconv(n, n), nn.ReLU(), _conv(n, m, 3, 1), nn.ReLU())
        self.entropy_bottleneck = EntropyBottleneck(k, config.z_half_range)
        scales = scale_table(config.scale_min, config.scale_max, config.num_scales)
        self.gaussian_conditional = GaussianConditional(scales, config.tail_sigmas, config.scale_min)
        self.integer_h_s = IntegerHyperSynthesis(self.h_s, config.num_scales, len(config.gains))
        self.unet = None

    def gain(self, quality: torch.Tensor | int) -> torch.Tensor:
        """Quantisation gain(s) for integer quality (or a (B,) tensor of qualities) -> (B, 1, 1, 1) float."""
        gains = torch.tensor(self.config.gains, dtype=torch.float32, device=self.g_a[0].weight.device)
        return gains[torch.as_tensor(quality, device=gains.device).long()].reshape(-1, 1, 1, 1)

    def forward(self, image: torch.Tensor, quality: torch.Tensor, noise: torch.Tensor | None = None) -> dict:
        """Training pass of phase 1: rate from noisy latents, reconstruction from rounded ones (straight-through).

        Args:
            image: (B, 3, H, W) in [0, 1], H and W multiples of 64.
            quality: (B,) integer qualities (indexes into ``config.gains``).
            noise: optional uniform noise in [-0.5, 0.5) for y and z, as a tuple; drawn here when ``None``.

        Returns:
            dict with ``x_e2e`` (B, 3, H, W), ``bpp`` (B,) and ``y_hat`` (B, M, H/16, W/16).
        """
        gain = self.gain(quality)
        y = self.g_a(image).float()
        z = self.h_a(torch.abs(y)).float()
        noise_y, noise_z = noise if noise is not None else (torch.rand_like(y) - 0.5, torch.rand_like(z) - 0.5)
        z_hat = z + (torch.round(z) - z).detach()
        scales = self.h_s(z_hat).float() * gain
        with torch.autocast(image.device.type, enabled=False):  # probabilities in float32 under mixed precision
            z_likelihood = self.entropy_bottleneck.likelihood(z + noise_z)
            y_likelihood = self.gaussian_conditional.likelihood(y * gain + noise_y, scales)
        y_hat = (y * gain + (torch.round(y * gain) - y * gain).detach()) / gain
        pixels = image.shape[-2] * image.shape[-1]
        bits = -(torch.log2(y_likelihood).flatten(1).sum(1) + torch.log2(z_likelihood).flatten(1).sum(1))
        return {"x_e2e": self.g_s(y_hat), "bpp": bits / pixels, "y_hat": y_hat}

    def rd_loss(
        self,
        image: torch.Tensor,
        y: torch.Tensor,
        quality: int,
        noise: tuple | None = None,
        size: tuple[int, int] | None = None,
    ):
        """The phase-1 loss ``bpp + lambda_q * 255**2 * MSE`` of latents ``y`` for ``image`` at one quality.

        With ``noise`` (uniform, for y and z), the rate is the training one (noisy latents); without, it is the
        rate of the rounded symbols under the float hyper-synthesis (an estimate of the file: the coder uses the
        integer tables). The reconstruction always decodes the rounded latents (straight-through, as in training)
        and is not clamped.

        Args:
            image: (B, 3, H, W) in [0, 1], the padded image the latents code.
            y: (B, M, H/16, W/16) latents.
            quality: integer quality (index into ``config.gains``).
            noise: optional ``(noise_y, noise_z)``, uniform in [-0.5, 0.5).
            size: the unpadded (height, width): the MSE is taken there and the bits are divided by its pixels
                (default: the whole of ``image``).

        Returns:
            ``(loss, bpp, mse)``: scalar tensors, bits per pixel and MSE averaged over the batch.
        """
        gain = self.gain(quality)
        z = self.h_a(torch.abs(y))
        z_hat = z + (torch.round(z) - z).detach()
        scaled = y * gain
        y_round = scaled + (torch.round(scaled) - scaled).detach()
        scales = self.h_s(z_hat) * gain
        y_rate, z_rate = (y_round, z_hat) if noise is None else (scaled + noise[0], z + noise[1])
        bits = -(
            torch.log2(self.gaussian_conditional.likelihood(y_rate, scales)).sum()
            + torch.log2(self.entropy_bottleneck.likelihood(z_rate)).sum()
        )
        height, width = size or image.shape[-2:]
        bpp = bits / (image.shape[0] * height * width)
        mse = (self.g_s(y_round / gain) - image)[..., :height, :width].square().mean()
        lmbda = self.config.lmbda * float(gain.flatten()[0]) ** 2
        return bpp + lmbda * 255.0**2 * mse, bpp, mse

    def refine_latents(
        self,
        image: torch.Tensor,
        quality: int,
        steps: int,
        learning_rate: float = 0.003,
        seed: int = 0,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Encoder-side refinement: the latents ``y`` of ``image``, moved by ``steps`` Adam steps on :meth:`rd_loss`.

        The analysis transform amortises the encoder's choice; optimising ``y`` for the one image at hand (Campos
        et al. 2019, "Content adaptive optimization for neural image compression") lowers its rate-distortion
        loss with the same decoder, so files stay readable by every copy of this model. Each step takes the
        training loss's gradient (rate of noisy latents, seeded by ``seed``); every 5 steps and at the end the
        rounded-symbol loss (``rd_loss`` without noise: float hyper-synthesis, unclamped decode) is measured and the
        best latents so far are kept, so the returned ``y`` never scores higher on that loss than ``g_a(image)``.
        The real file's size and its 8-bit decode can differ slightly from that estimate. Only ``y`` gets
        gradients (``torch.autograd.grad``): the networks and their ``requires_grad`` flags are not touched, so
        threads may share the model. Meant for one image (B = 1, as the codec calls it); for B > 1 the best
        iterate is chosen for the whole batch.

        Args:
            image: (B, 3, H, W) in [0, 1], H and W multiples of 64 (padded).
            quality: integer quality (index into ``config.gains``).
            steps: Adam steps (0 returns ``g_a(image)``).
            learning_rate: Adam's step size in latent units (0.003: picked on two val-set14 images; compared on four
                in ``benchmarks/results/corrdiff_refine_choice_valset14.json``).
            seed: seed of the training-style noise.
            size: the unpadded (height, width), see :meth:`rd_loss`.
        """
        with torch.no_grad():
            start = self.g_a(image)
            z_shape = self.h_a(torch.abs(start)).shape
        if steps <= 0:
            return start
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.enable_grad():
            y = start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([y], lr=learning_rate)
            with torch.no_grad():
                best_loss, best = float(self.rd_loss(image, y, quality, size=size)[0]), start
            for step in range(1, steps + 1):
                noise = tuple(
                    (torch.rand(shape, generator=generator) - 0.5).to(y.device) for shape in (y.shape, z_shape)
                )
                loss = self.rd_loss(image, y, quality, noise, size)[0]
                (y.grad,) = torch.autograd.grad(loss, [y])
                optimizer.step()
                if step % 5 == 0 or step == steps:
                    with torch.no_grad():
                        hard = float(self.rd_loss(image, y, quality, size=size)[0])
                    if hard < best_loss:
                        best_loss, best = hard, y.detach().clone()
        return best

    @torch.no_grad()
    def update(self) -> None:
        """Build every integer table the coder uses (call after training, before ``save_pretrained``)."""
        self.entropy_bottleneck.update()
        self.gaussian_conditional.update()
        self.integer_h_s.update(self.h_s, self.gaussian_conditional.scale_values, list(self.config.gains))

    @torch.no_grad()
    def with_gains(self, gains: list[float] | tuple[float, ...]) -> CorrDiffModel:
        """A copy of this trained model with more rate points: the quantisation gains ``gains``, no training.

        A gain scales ``y`` before rounding (and the hyperprior's scales with it), so a new gain is a finer or
        coarser quantiser of the same transforms: it needs no training, but it is only as good as the transforms
        are at that step, so measure it before use (``benchmarks/corrdiff.py``). ``gains`` must hold every gain of
        this model, exactly; each of those keeps its row of the coding tables bit for bit, so its files decode to
        the same pixels as before (the new model still names a new decoder, and a quality's index moves up by the
        number of gains added below it). The default quality stays on the same gain. The new model still decodes
        the files of this one, and of the models this one was made from: ``config.earlier_decoders`` names their
        decoders and maps their qualities. The diffusion decoder, if any, is shared, not copied.

        Raises:
            ValueError: if ``gains`` is not strictly ascending and positive, or lacks one of this model's gains.
            RuntimeError: if this model's state does not fit the new one (a key other than the table missing).
        """
        old = [float(g) for g in self.config.gains]
        new = [float(g) for g in gains]
        missing = [g for g in old if g not in new]
        if missing:
            raise ValueError(f"gains must keep every gain of the model {old}; missing {missing}")
        moved = [new.index(g) for g in old]  # this model's quality q is the new model's moved[q]
        earlier = [{**e, "qualities": [moved[q] for q in e["qualities"]]} for e in self.config.earlier_decoders]
        earlier.append(
            {
                "e2e_decoder": self.decoder_id(False)[:4].hex(),
                "table_hash": self.table_hash().hex(),
                "qualities": moved,
            }
        )
        config = CorrDiffConfig.from_dict(
            {
                **self.config.to_dict(),
                "gains": new,
                "default_quality": moved[self.config.default_quality_index],
                "earlier_decoders": earlier,
            }
        )
        model = CorrDiffModel(config).to(self.g_a[0].weight.device)
        state = {
            k: v for k, v in self.state_dict().items() if k != "integer_h_s.thresholds" and not k.startswith("unet.")
        }
        missing_keys, unexpected = model.load_state_dict(state, strict=False)
        if missing_keys != ["integer_h_s.thresholds"] or unexpected:
            raise RuntimeError(f"with_gains: the state does not fit the new model ({missing_keys}, {unexpected})")
        scales = model.gaussian_conditional.scale_values
        rows = [self.integer_h_s.thresholds[old.index(g)].cpu() if g in old else threshold_row(scales, g) for g in new]
        model.integer_h_s.thresholds.copy_(torch.stack(rows))
        model.unet = self.unet
        return model.train(self.training)

    def table_hash(self) -> bytes:
        """8-byte SHA-256 digest of everything entropy decoding depends on (integer tables, gains, shapes)."""
        keys = ("channels", "latent_channels", "hyper_channels", "gains", "num_scales", "z_half_range")
        digest = hashlib.sha256(repr({key: self.config.to_dict()[key] for key in keys}).encode())
        modules = (self.entropy_bottleneck, self.gaussian_conditional, self.integer_h_s)
        for module in modules:
            for name, buffer in sorted(module.state_dict().items()):
                if not buffer.is_floating_point():
                    digest.update(name.encode())
                    array = buffer.detach().cpu().numpy()
                    digest.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        return digest.digest()[:8]

    def decoder_id(self, diffusion: bool) -> bytes:
        """8 bytes naming the decoder of a file: 4 for the end-to-end decoder, 4 for the diffusion decoder.

        The first half digests :meth:`table_hash` and the synthesis transform's weights (what decoding to x_e2e
        depends on); the second half digests the UNet (config and weights) and the sampling settings of the
        config (``strength``, ``sigma_data``, ``codebook``), or is zero for a file without diffusion. Two phase-2
        models that share their codec (as ``train_corrdiff.py --phase diffusion`` makes them) therefore name
        different decoders, and a file decoded by the wrong one is refused instead of decoded wrongly. Weights are
        digested as little-endian float32, so the same model gives the same id on every device.
        """
        e2e = hashlib.sha256(b"corrdiff-e2e\0" + self.table_hash())
        _digest_tensors(e2e, self.g_s.state_dict())
        second = bytes(4)
        if diffusion:
            if self.unet is None:
                raise ValueError("this CorrDiff model has no diffusion decoder (model.unet is None)")
            settings = {key: self.config.to_dict()[key] for key in ("strength", "sigma_data", "codebook")}
            unet_config = {key: value for key, value in dict(self.unet.config).items() if not key.startswith("_")}
            text = json.dumps({"sampling": settings, "unet": unet_config}, sort_keys=True, default=repr)
            digest = hashlib.sha256(b"corrdiff-diffusion\0" + text.encode())
            _digest_tensors(digest, self.unet.state_dict())
            second = digest.digest()[:4]
        return e2e.digest()[:4] + second

    def has_tables(self) -> bool:
        """Whether ``update()`` has run (the Gaussian rows are filled)."""
        return bool(self.gaussian_conditional.freqs.any())
