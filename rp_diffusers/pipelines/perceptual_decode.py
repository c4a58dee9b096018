"""PerceptualDecodePipeline: training-free perceptual enhancement of any codec's decoded image.

Method: Z. Zhu, T. Xu, M. Huang, D. He, X. Ge, X. Zhang, L. Li and Y. Wang, "Fast Training-free Perceptual
Image Compression", arXiv:2506.16102 (2025): add Gaussian noise to the decoded image and denoise it with a
pre-trained diffusion model, at the noise level where the result's MSE to the source is about twice the codec's
MSE; no training, any codec.

x_dec -> x_sigma = x_dec + sigma * n -> denoise with the preset's solver -> x_out. ``fast``: one consistency-model
call, or, for a diffusion model, a 4-step DPM-Solver++ solve of the PF-ODE from the noised decode down to sigma / 20
(a sample of the model's distribution): never the single x0 prediction, which is the posterior mean, a blurred
average and the opposite of a perceptual decode; ``medium``: few-step DPM-Solver++ on the
PF-ODE, Euler-Maruyama SDE past ``ODE_MAX_STEPS`` (a consistency model uses its multistep sampler); ``slow``:
Euler-Maruyama with a DPS term through a differentiable codec surrogate. Pixel-space models of a fixed resolution
run tile-wise with overlap blending at every model call; SD-layout latent models run on VAE latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..decode.calibration import CalibrationError, SigmaTable, model_table_path, search_sigma
from ..decode.denoisers import Denoiser, make_denoiser
from ..decode.solvers import (
    DPSGuidance,
    karras_sigmas,
    sample_consistency,
    sample_dpmpp_2m,
    sample_euler_maruyama,
)
from ..models.one_step import decode_latents, encode_image
from ..utils.assets import ASSETS_DIR
from ..utils.image import pil_to_tensor, tensor_to_pil, to_pil_list
from ..utils.loading import load_pretrained, resolve_packaged
from ..utils.tiling import crop_to_size, pad_to_multiple, tiled_apply

PRESETS = ("fast", "medium", "slow")
# Default number of model calls per preset: (diffusion model, consistency model).
DEFAULT_STEPS = {"fast": (4, 1), "medium": (10, 2), "slow": (50, 8)}
# The medium preset switches from the PF-ODE (DPM-Solver++) to the SDE past this many steps (paper, Fig. 2).
ODE_MAX_STEPS = 20
# The fast preset of a diffusion model solves the PF-ODE from sigma down to sigma / FAST_END_RATIO.
FAST_END_RATIO = 20.0

EXAMPLE = """
    Example:
        >>> from rp_diffusers.pipelines.perceptual_decode import PerceptualDecodePipeline
        >>> from rp_diffusers.codecs import get_codec
        >>> pipe = PerceptualDecodePipeline.from_pretrained("openai/diffusers-cd_imagenet64_lpips")  # doctest: +SKIP
        >>> decoded = get_codec("jpeg").run(image, quality=20).reconstruction  # doctest: +SKIP
        >>> out = pipe(decoded, preset="fast", codec="jpeg", quality=20, generator=torch.manual_seed(0))  # doctest: +SKIP
        >>> out.images[0].save("enhanced.png")  # doctest: +SKIP
"""


@dataclass
class PerceptualDecodePipelineOutput(BaseOutput):
    """Output of :class:`PerceptualDecodePipeline`.

    Args:
        images: enhanced images, same sizes as the inputs: PIL list, or (N, H, W, 3) numpy / (N, 3, H, W) tensor
            in [0, 1] (a list of per-image arrays/tensors when the sizes differ).
        sigmas: the noise level used for each image (VE units of the model's space; 0 means unchanged).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list
    sigmas: list[float]


def _pad_at_least(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad bottom/right up to (height, width) (repeated for tiny inputs; 1-pixel sides replicate)."""
    while x.shape[-2] < height or x.shape[-1] < width:
        pad_h = min(height - x.shape[-2], max(x.shape[-2] - 1, 0)) if x.shape[-2] < height else 0
        pad_w = min(width - x.shape[-1], max(x.shape[-1] - 1, 0)) if x.shape[-1] < width else 0
        if pad_h == 0 and pad_w == 0:
            return F.pad(x, (0, max(width - x.shape[-1], 0), 0, max(height - x.shape[-2], 0)), mode="replicate")
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    return x


class PerceptualDecodePipeline(DiffusionPipeline):
    r"""Training-free perceptual decoding: add noise to a decoded image and denoise it (Meng et al.'s SDEdit,
    with the presets and noise-level rule of Zhu et al. 2025, arXiv:2506.16102).

    Args:
        unet ([`UNet2DModel`] or [`UNet2DConditionModel`]): a pixel-space model (consistency model, EDM, ADM/DDPM)
            or, with ``vae``, an SD-layout latent model.
        scheduler: defines the noise parametrisation: [`CMStochasticIterativeScheduler`] (consistency model),
            an EDM scheduler, or any scheduler with ``alphas_cumprod`` (DDPM, DDIM, DPMSolverMultistep, Euler).
            Only its configuration is used; the solvers are the paper's, written in VE sigma.
        vae ([`AutoencoderKL`], *optional*): present for latent models (SD 2.1, SD-Turbo).
        text_encoder, tokenizer (*optional*): encode the empty prompt once (latent models are used unconditionally).
        calibration_key (`str`, *optional*): the model id to look up in the sigma calibration table (defaults to the
            id or folder the pipeline was loaded from).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(self, unet, scheduler, vae=None, text_encoder=None, tokenizer=None, calibration_key=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(calibration_key=calibration_key)
        self._prompt_embeds = None
        self.calibration: SigmaTable | None = None  # loaded lazily from the shipped table

    # ----------------------------------------------------------------------------------------------- helpers
    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def model_key(self) -> str | None:
        """The id used for calibration lookups: ``calibration_key`` or the loaded id / folder."""
        key = self.config.get("calibration_key") or self.config.get("_name_or_path")
        return str(key) if key else None

    @property
    def model_kind(self) -> str:
        """``"consistency"``, ``"vp"`` or ``"edm"`` (the scheduler's noise parametrisation)."""
        return make_denoiser(lambda x, t: x, self.scheduler).kind

    def default_calibration(self) -> SigmaTable:
        """The shipped table, overlaid with the model's own ``decode_calibration.json`` where it has one.

        A model's own table (written by ``rp-diffusers calibrate-decode`` next to its weights) applies to this
        model whatever its folder is called; its codec MSEs take precedence over the shipped ones.
        """
        table = SigmaTable.load()
        own = model_table_path(self.config.get("_name_or_path"))
        if own is not None and own.is_file():
            mine = SigmaTable.load(own)
            table.codec_mse.update(mine.codec_mse)
            for entry in mine.entries:
                table.add_entry({**entry, "model": self.model_key})
        self.calibration = table
        return table

    def _empty_prompt_embeds(self, device: torch.device) -> torch.Tensor:
        if self._prompt_embeds is None or self._prompt_embeds.device != device:
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError(
                    "latent (SD-layout) models need text_encoder and tokenizer to encode the empty prompt"
                )
            ids = self.tokenizer(
                "",
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            with torch.no_grad():
                self._prompt_embeds = self.text_encoder(ids.to(device))[0]
        return self._prompt_embeds

    def _model_fn(self, device: torch.device, class_label: torch.Tensor | None):
        unet = self.unet
        if self.is_latent:
            embeds = self._empty_prompt_embeds(device).to(unet.dtype)

            def call(sample, timesteps):
                hidden = embeds.expand(sample.shape[0], -1, -1)
                return unet(sample.to(unet.dtype), timesteps, encoder_hidden_states=hidden, return_dict=False)[0]

            return call

        def call(sample, timesteps):
            labels = None if class_label is None else class_label.expand(sample.shape[0])
            return unet(sample.to(unet.dtype), timesteps, class_labels=labels, return_dict=False)[0]

        return call

    def _space(self, image: torch.Tensor, class_label, tile_overlap: int | None, tile_batch_size: int):
        """-> (x in model space, denoise(x, sigma), to_image(x0) -> [0, 1] image of the input's size)."""
        device = self._execution_device
        height, width = image.shape[-2:]
        denoiser: Denoiser = make_denoiser(self._model_fn(device, class_label), self.scheduler)
        if self.is_latent:
            multiple = 2 ** (len(self.vae.config.block_out_channels) - 1) * 2 ** (
                len(self.unet.config.block_out_channels) - 1
            )
            padded, size = pad_to_multiple(image.to(device), multiple)
            x = encode_image(self.vae, padded).float()
            return x, denoiser, lambda x0: crop_to_size(decode_latents(self.vae, x0), size).float()
        x = image.to(device).float() * 2 - 1  # the model's [-1, 1] pixel space
        tile = self.unet.config.get("sample_size") if hasattr(self.unet, "config") else None
        tile = tile[0] if isinstance(tile, (list, tuple)) else tile
        if tile is None:  # a fully convolutional model: pad to its downsampling multiple only
            multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)

            def denoise(x_sigma, sigma):
                padded, size = pad_to_multiple(x_sigma, multiple)
                return crop_to_size(denoiser(padded, sigma), size)

        else:
            overlap = tile // 4 if tile_overlap is None else tile_overlap

            def denoise(x_sigma, sigma):
                padded = _pad_at_least(x_sigma, tile, tile)
                out = tiled_apply(lambda t: denoiser(t, sigma), padded, tile, overlap, batch_size=tile_batch_size)
                return out[..., :height, :width]

        denoise.kind, denoise.sigma_min, denoise.sigma_max = denoiser.kind, denoiser.sigma_min, denoiser.sigma_max
        return x, denoise, lambda x0: x0 * 0.5 + 0.5

    def _solve(self, denoise, x_t, sigma, preset, num_steps, generator, guidance):
        consistency = denoise.kind == "consistency"
        steps = num_steps or DEFAULT_STEPS[preset][int(consistency)]
        if preset == "fast":
            if consistency:
                if steps != 1:
                    raise ValueError(
                        f"the fast preset of a consistency model makes one call; got num_steps={num_steps}"
                    )
                return denoise(x_t, sigma)
            if steps < 2:
                raise ValueError(
                    "the fast preset of a diffusion model needs at least 2 steps (one call returns the "
                    f"posterior mean, not a sample); got num_steps={num_steps}"
                )
            # a few-step PF-ODE solve from fresh noise, ending at sigma / 20: a sample of the model's distribution
            sigmas = karras_sigmas(sigma, max(denoise.sigma_min, sigma / FAST_END_RATIO), steps)
            return sample_dpmpp_2m(denoise, x_t, sigmas)
        if consistency:  # the multistep consistency sampler; its last sigma stays above sigma_min
            sigmas = karras_sigmas(sigma, denoise.sigma_min, steps + 1)[:steps] if steps > 1 else [sigma]
            return sample_consistency(denoise, x_t, sigmas, denoise.sigma_min, generator, guidance)
        sigmas = karras_sigmas(sigma, denoise.sigma_min, steps)
        if preset == "medium" and steps <= ODE_MAX_STEPS:
            return sample_dpmpp_2m(denoise, x_t, sigmas)
        return sample_euler_maruyama(denoise, x_t, sigmas, generator, guidance)

    def enhance_tensor(
        self,
        image: torch.Tensor,
        sigma: float,
        preset: str = "fast",
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        class_label: torch.Tensor | None = None,
        surrogate=None,
        quality: float | None = None,
        dps_scale: float = 1.0,
        tile_overlap: int | None = None,
        tile_batch_size: int = 8,
    ) -> torch.Tensor:
        """One image (1, 3, H, W) in [0, 1] -> enhanced (1, 3, H, W) in [0, 1]; ``sigma=0`` returns it unchanged."""
        if sigma == 0:
            return image.clone()
        x, denoise, to_image = self._space(image, class_label, tile_overlap, tile_batch_size)
        if sigma > denoise.sigma_max * (1 + 1e-6):
            raise ValueError(f"sigma={sigma:.4g} exceeds the model's trained range (max {denoise.sigma_max:.4g})")
        guidance = None
        if preset == "slow":
            target = image.to(x.device).float()
            guidance = DPSGuidance(to_image, target, surrogate, quality, dps_scale)
        # 1. forward diffusion of the decoded image (VE): x_sigma = x_dec + sigma * n
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        # 2. reverse diffusion with the preset's solver, 3. back to a [0, 1] image of the input's size
        x0 = self._solve(denoise, x + sigma * noise, float(sigma), preset, num_steps, generator, guidance)
        return to_image(x0).clamp(0, 1).cpu()

    def _class_label(self, class_labels, index: int, generator) -> torch.Tensor | None:
        num_classes = None if self.is_latent else self.unet.config.get("num_class_embeds")
        if num_classes is None:
            return None
        if class_labels is None:  # as ConsistencyModelPipeline: a random class, here from the generator
            device = generator.device if generator is not None else "cpu"
            return torch.randint(0, num_classes, (1,), generator=generator, device=device).to(self._execution_device)
        label = class_labels[index] if isinstance(class_labels, (list, tuple)) else class_labels
        return torch.tensor([int(label)], device=self._execution_device)

    def _auto_sigma(self, image, preset, codec, generator, table, **kwargs) -> float:
        """Source-free search: MSE(out, x_dec) = codec MSE (see ``rp_diffusers.decode.calibration``)."""
        target = table.codec_mse_for(codec, kwargs["quality"])
        device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))

        def mse(sigma: float) -> float:
            out = self.enhance_tensor(image, sigma, preset, generator=torch.Generator().manual_seed(seed), **kwargs)
            return float((out - image).pow(2).mean())

        space = make_denoiser(lambda x, t: x, self.scheduler)
        return search_sigma(mse, target, max(space.sigma_min, 1e-3), space.sigma_max, rtol=0.05, max_iter=12)[0]

    # ----------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        image,
        preset: str = "fast",
        sigma: float | str | None = None,
        num_steps: int | None = None,
        codec: str | None = None,
        quality: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        interpolation: float | None = None,
        surrogate=None,
        dps_scale: float = 1.0,
        class_labels: int | list[int] | None = None,
        calibration: SigmaTable | str | None = None,
        tile_overlap: int | None = None,
        tile_batch_size: int = 8,
    ):
        r"""Enhance decoded images.

        Args:
            image: decoded image(s): PIL, path, array, list of those (sizes may differ), or a float tensor
                (N, 3, H, W) / (3, H, W) in [0, 1] (used as is, no 8-bit rounding).
            preset (`str`): ``"fast"``, ``"medium"`` or ``"slow"`` (see the module docstring).
            sigma (`float` or `"auto"`, *optional*): noise level in VE units of the model's space (pixels in
                [-1, 1], or scaled latents). ``None``: the calibrated level for (model, preset, codec, quality);
                ``"auto"``: a per-image source-free search (several model runs); ``0``: the input unchanged.
            num_steps (`int`, *optional*): model calls for medium/slow (defaults in ``DEFAULT_STEPS``).
            codec, quality: what the images were decoded with; needed for the default sigma and by ``slow``.
            generator (`torch.Generator`, *optional*): makes the result deterministic.
            output_type (`str`): ``"pil"``, ``"np"`` or ``"pt"``.
            return_dict (`bool`): return a :class:`PerceptualDecodePipelineOutput` instead of a tuple.
            interpolation (`float`, *optional*): alpha in [0, 1]; outputs (1 - alpha) x_dec + alpha x_out (Yan et
                al.'s convex distortion-perception dial).
            surrogate (*optional*): differentiable codec ``surrogate(image, quality)`` for ``slow`` (default:
                ``rp_diffusers.surrogates.get_surrogate(codec)``).
            dps_scale (`float`): zeta, the normalised DPS step of the slow preset.
            class_labels: class(es) for class-conditional pixel models (default: random from ``generator``).
            calibration (`SigmaTable` or path, *optional*): the sigma table (default: the shipped one).
            tile_overlap, tile_batch_size: tiling of fixed-resolution pixel models (default overlap: tile / 4).
        """
        # 1. Check inputs
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if interpolation is not None and not 0.0 <= float(interpolation) <= 1.0:
            raise ValueError(f"interpolation must lie in [0, 1], got {interpolation}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        if isinstance(sigma, (int, float)) and (sigma < 0 or not math.isfinite(sigma)):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
        if isinstance(sigma, str) and sigma != "auto":
            raise ValueError(f"sigma must be a number, 'auto' or None, got {sigma!r}")
        needs_codec = sigma is None or sigma == "auto" or (preset == "slow" and surrogate is None)
        if needs_codec and (codec is None or quality is None):
            raise CalibrationError(
                "pass codec= and quality= (what the image was decoded with): the default noise level and the slow "
                "preset's surrogate depend on them; or pass an explicit sigma (and a surrogate for slow)"
            )

        # 2. Preprocess: every image a (1, 3, H, W) tensor in [0, 1]
        images = self._prepare_images(image)
        table = calibration if isinstance(calibration, SigmaTable) else None
        if table is None and (sigma is None or sigma == "auto"):
            table = SigmaTable.load(calibration) if calibration else (self.calibration or self.default_calibration())
        if preset == "slow" and surrogate is None:
            from ..surrogates import get_surrogate

            surrogate = get_surrogate(codec)
        if isinstance(surrogate, torch.nn.Module):
            surrogate = surrogate.to(self._execution_device)
        if sigma is None:
            sigma = table.sigma_for(self.model_key, preset, codec, quality)

        # 3. Enhance each image (noise, solve, decode), 4. interpolate
        outputs, sigmas = [], []
        kwargs = {
            "surrogate": surrogate,
            "quality": quality,
            "dps_scale": dps_scale,
            "tile_overlap": tile_overlap,
            "tile_batch_size": tile_batch_size,
        }
        for index, decoded in enumerate(self.progress_bar(images)):
            label = self._class_label(class_labels, index, generator)
            level = sigma
            if sigma == "auto":
                level = self._auto_sigma(
                    decoded, preset, codec, generator, table, class_label=label, num_steps=num_steps, **kwargs
                )
            out = self.enhance_tensor(decoded, float(level), preset, num_steps, generator, label, **kwargs)
            if interpolation is not None:
                out = (1 - float(interpolation)) * decoded + float(interpolation) * out
            outputs.append(out)
            sigmas.append(float(level))

        # 5. Postprocess
        result = self._postprocess(outputs, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result, sigmas)
        return PerceptualDecodePipelineOutput(images=result, sigmas=sigmas)

    @staticmethod
    def _prepare_images(image) -> list[torch.Tensor]:
        if isinstance(image, torch.Tensor) and image.is_floating_point():
            batch = image.unsqueeze(0) if image.ndim == 3 else image
            if batch.ndim != 4 or batch.shape[1] != 3:
                raise ValueError(f"expected a (N, 3, H, W) tensor in [0, 1], got shape {tuple(image.shape)}")
            if batch.min() < 0 or batch.max() > 1:
                raise ValueError("float image tensors must lie in [0, 1]")
            return [b.unsqueeze(0).float().cpu() for b in batch]
        return [pil_to_tensor(pil) for pil in to_pil_list(image)]

    @staticmethod
    def _postprocess(outputs: list[torch.Tensor], output_type: str):
        outputs = [o.clamp(0, 1) for o in outputs]
        if output_type == "pil":
            return [tensor_to_pil(o)[0] for o in outputs]
        same_size = len({tuple(o.shape) for o in outputs}) == 1
        if output_type == "pt":
            return torch.cat(outputs) if same_size else [o[0] for o in outputs]
        arrays = [o.permute(0, 2, 3, 1).numpy() for o in outputs]
        return np.concatenate(arrays) if same_size else [a[0] for a in arrays]


DEFAULT_DECODE_MODEL_DIR = ASSETS_DIR / "decode_model"


def resolve_decode_model(model: str | None) -> str:
    """``None``/``"default"`` -> the small denoiser shipped with the package; anything else passes through."""
    return resolve_packaged(
        model, DEFAULT_DECODE_MODEL_DIR, ("default",), "default perceptual-decoding model", "PerceptualDecodePipeline"
    )


def load_pipeline(model: str, device: str | None = None, dtype: str = "float32"):
    """Load a :class:`PerceptualDecodePipeline` from a Hub id or folder onto a device; errors say what to do.

    The loader of ``rp-diffusers enhance``, ``calibrate-decode`` and ``evaluate --enhance``: the same loader as
    the pre-processor's (:func:`rp_diffusers.utils.loading.load_pretrained`) with this pipeline class.

    Args:
        model: ``"default"`` (the small denoiser shipped with the package), or a Hub repo id or local folder of a
            ``PerceptualDecodePipeline``, ``ConsistencyModelPipeline``, DDPM or SD model.
        device: torch device; ``None`` picks ``"cuda"`` when available, else ``"cpu"``.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.

    Raises:
        ModelLoadError: the model cannot be loaded (missing offline, bad folder; an ``OSError`` and a
            ``RuntimeError``); the message says how to get it.

    Example:
        >>> pipe = load_pipeline("openai/diffusers-cd_imagenet64_lpips", device="cpu")  # doctest: +SKIP
    """
    return load_pretrained(PerceptualDecodePipeline, resolve_decode_model(model), device, dtype)


def enhance_images(
    pipe: PerceptualDecodePipeline,
    images,
    preset: str = "fast",
    codec: str | None = None,
    quality: float | None = None,
    sigma: float | str | None = None,
    generator: torch.Generator | None = None,
    **kwargs,
) -> list[PIL.Image.Image]:
    """Enhance decoded images with ``pipe`` and return PIL images (the entry point of ``evaluate --enhance``).

    Example:
        >>> enhanced = enhance_images(pipe, decoded, "fast", codec="jpeg", quality=30)  # doctest: +SKIP
    """
    return pipe(
        images,
        preset=preset,
        sigma=sigma,
        codec=codec,
        quality=quality,
        generator=generator,
        output_type="pil",
        **kwargs,
    ).images


PerceptualDecodePipeline.__call__.__doc__ += EXAMPLE
