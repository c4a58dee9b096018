"""RPPreprocessPipeline: one-step rate-perception pre-processing of images before a standard codec.

Method: M. Guo, S. Zhao, J. Li and L. Zhang, "Generative Preprocessing for Image Compression with Pre-trained
Diffusion Models", arXiv:2512.15270 (2025): Stable Diffusion 2.1 distilled into a one-step image-to-image model
by Consistent Score Identity Distillation (CiD), then LoRA-fine-tuned per codec with a rate-perception loss
through a differentiable codec surrogate; the codec itself is unchanged.
"""

from __future__ import annotations

import math
import numbers
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from safetensors.torch import load_file, save_file

from ..adapters import RPLoraLoaderMixin, base_weights_only
from ..models import one_step_map, one_step_noise
from ..models.subpixel_upsample import use_subpixel_upsampling
from ..utils.hub import PICKLE_SUFFIXES, resolve_optional_file
from ..utils.image import pil_to_tensor, tensor_to_pil, to_pil_list
from ..utils.tiling import crop_to_size, pad_to_multiple, padded_size, tile_starts, tiled_apply

logger = logging.get_logger(__name__)

PROMPT_EMBEDS_NAME = "prompt_embeds.safetensors"
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from rp_diffusers import RPPreprocessPipeline
        >>> from rp_diffusers.codecs import get_codec

        >>> # an SD-Turbo one-step model and a trained adapter (online, GPU):
        >>> pipe = RPPreprocessPipeline.from_pretrained("stabilityai/sd-turbo", dtype=torch.float16)  # doctest: +SKIP
        >>> pipe.load_lora_weights("path/to/rp_jpeg_lambda_0p5")  # doctest: +SKIP
        >>> pre = pipe("kodim01.png", adapter_name="rp_jpeg_lambda_0p5").images[0]  # doctest: +SKIP

        >>> # offline: the compact model shipped with the package, and its policy for the codec
        >>> from rp_diffusers.default_model import resolve_model
        >>> from rp_diffusers.evaluation import EXAMPLES_DIR
        >>> pipe = RPPreprocessPipeline.from_pretrained(resolve_model("default"))
        >>> pipe.set_progress_bar_config(disable=True)
        >>> choice = pipe.adapter_for("webp")  # validated on held-out photos: here the base model
        >>> choice.adapter, choice.preprocess
        (None, True)
        >>> pre = pipe(EXAMPLES_DIR / "chalet.png", adapter_name=choice.adapter or []).images[0]
        >>> pre.size  # same size as the input
        (512, 384)
        >>> result = get_codec("webp").run(pre, quality=40)  # an ordinary WebP file: result.data

        ```
"""


# Weight files that are pickles (loading one can run code) rather than safetensors.
# Components whose weights from_pretrained loads (the tokenizer and scheduler have none).
_WEIGHTED_COMPONENTS = ("vae", "unet", "text_encoder")


def _refuse_pickled_components(source: str | os.PathLike, kwargs: dict) -> None:
    """Refuse a local pipeline folder where a component to load has pickled weights and no ``.safetensors``.

    diffusers and transformers would also refuse them under ``use_safetensors=True``, with a "file not found"
    message; this one says what to do. Hub repos are checked by diffusers (it downloads safetensors only).
    """
    folder = Path(source)
    if not (folder / "model_index.json").is_file():
        return
    for name in _WEIGHTED_COMPONENTS:
        component = folder / name
        if name in kwargs or not component.is_dir():  # passed in by the caller, or absent: nothing is loaded
            continue
        files = [p for p in component.iterdir() if p.is_file()]
        pickled = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
        if pickled and not any(p.suffix == ".safetensors" for p in files):
            raise ValueError(
                f"{component} holds pickled weights ({', '.join(pickled)}) and no .safetensors file; rp-diffusers "
                "never unpickles weights (loading a pickle can run code from the file). Convert them once, where "
                "you trust the file: safetensors.torch.save_file(torch.load(PATH, weights_only=True), NEW_PATH) "
                "with NEW_PATH diffusion_pytorch_model.safetensors (vae, unet) or model.safetensors (text_encoder), "
                "then delete the .bin and load again"
            )


def _check_adapter_weights(adapter_name, adapter_weights) -> list[float] | float | None:
    """Check ``adapter_weights`` of a call: finite numbers, one per adapter (or one for all); lists them."""
    if adapter_weights is None:
        return None
    names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
    weights = list(adapter_weights) if isinstance(adapter_weights, (list, tuple)) else [adapter_weights]
    if not names:
        raise ValueError("adapter_name=[] runs the base model with adapters off: drop adapter_weights")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise ValueError(f"adapter_weights must be numbers (e.g. 1.0 or [0.5, 0.5]), got {adapter_weights!r}")
        if not math.isfinite(weight):
            raise ValueError(
                f"adapter_weights must be finite numbers (e.g. 1.0 or [0.5, 0.5]), got {adapter_weights!r}"
            )
    if isinstance(adapter_weights, (list, tuple)):
        if len(weights) != len(names):
            raise ValueError(
                f"adapter_weights has {len(weights)} values for {len(names)} adapter(s) {names}: give one per adapter"
            )
        return [float(weight) for weight in weights]
    return float(adapter_weights)


def _check_codec_steps(codec_steps) -> dict | None:
    """``codec_steps`` of the config, checked: every entry builds its step for its codec (else ``ValueError``)."""
    from ..codecs.prequantize import codec_step_from_config

    if not codec_steps:
        return None
    if not isinstance(codec_steps, dict):
        raise ValueError(f"codec_steps must map codec names to step settings, got {codec_steps!r}")
    for codec, record in codec_steps.items():
        try:
            step = codec_step_from_config(record)
        except ValueError as error:
            raise ValueError(f"codec_steps[{codec!r}] (model_index.json): {error}") from None
        if step.codec != codec:
            raise ValueError(f"codec_steps[{codec!r}] is the step {step.name!r}, made for {step.codec}")
    return {codec: dict(record) for codec, record in codec_steps.items()}


@dataclass
class RPPreprocessPipelineOutput(BaseOutput):
    """Output of :class:`RPPreprocessPipeline`.

    Args:
        images: pre-processed images, each the size of its input: a list of RGB PIL images (``output_type="pil"``);
            an (N, H, W, 3) float array in [0, 1] (``"np"``) or an (N, 3, H, W) float tensor in [0, 1] (``"pt"``)
            when all sizes agree, otherwise a list of per-image arrays / tensors.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list[np.ndarray] | list[torch.Tensor]


class RPPreprocessPipeline(DiffusionPipeline, RPLoraLoaderMixin):
    r"""Pipeline for rate-perception pre-processing: x -> Dec(x0(UNet(Enc(x), t*))), one UNet call per image.

    The output has the input's size and is meant to be encoded by an ordinary codec (JPEG, WebP, BPG, ...). Rate-
    perception LoRA adapters (``rp_{codec}_lambda_{value}``) load through diffusers' LoRA API and can be mixed.

    Args:
        vae ([`AutoencoderKL`]): the SD 2.1 VAE.
        unet ([`UNet2DConditionModel`]): the one-step image-to-image UNet (SD 2.1 / SD-Turbo layout).
        scheduler ([`SchedulerMixin`]): any SD scheduler; only ``alphas_cumprod`` and ``prediction_type`` are used.
        text_encoder, tokenizer (optional): encode the fixed ``prompt`` once; can then be dropped
            (:meth:`drop_text_encoder`), the embedding is saved with the pipeline.
        timestep (`int`, defaults to 999): the fixed t* of the one-step map (999: img2img-turbo; 625: SiD-LSG).
        prompt (`str`, defaults to ""): the fixed text prompt.
        residual (`bool`, defaults to False): x0 = input latents + UNet estimate (see ``one_step_map``).
        vae_scale_factor (`int`, *optional*): pixels per latent; read from the VAE when omitted.
        adapters (`dict`, *optional*): deprecated and ignored. Folders saved before ``rp_adapter.json`` became an
            adapter's one record listed their adapters here, in ``model_index.json``; every adapter is now read from
            its ``adapters/<name>/rp_adapter.json`` (:meth:`available_adapters`), and saving writes no such list.
        add_noise (`bool`, defaults to False): noise the input latents to t* before the UNet call (draws from
            ``generator``); the default feeds clean latents (deterministic, as img2img-turbo).
        codec_steps (`dict`, *optional*): per codec, a quality-aware step run on the pixels just before the
            unmodified encoder, with its validation record: ``{"jpeg": {"step": "jpeg_deadzone", "threshold":
            0.75, ..., "validation": {...}}}`` (``rp_diffusers.codecs.prequantize``; :meth:`set_codec_step` writes
            one, :meth:`adapter_for` picks it where it won).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        text_encoder=None,
        tokenizer=None,
        timestep: int = 999,
        prompt: str = "",
        residual: bool = False,
        vae_scale_factor: int | None = None,
        adapters: dict | None = None,
        add_noise: bool = False,
        codec_steps: dict | None = None,
    ):
        super().__init__()
        codec_steps = _check_codec_steps(codec_steps)
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        num_train_timesteps = len(scheduler.alphas_cumprod)
        if not 0 <= int(timestep) < num_train_timesteps:
            raise ValueError(f"timestep must lie in [0, {num_train_timesteps}), got {timestep}")
        if vae_scale_factor is None:
            vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.register_to_config(
            timestep=int(timestep),
            prompt=prompt,
            residual=bool(residual),
            vae_scale_factor=int(vae_scale_factor),
            add_noise=bool(add_noise),
            codec_steps=codec_steps,
        )
        if adapters:  # deprecated: an older model_index.json's copy of the adapters' records, never read
            logger.warning(
                "ignoring the `adapters` list of this pipeline's config (model_index.json): each adapter's record is "
                "its adapters/<name>/rp_adapter.json, read when the adapters load; save the pipeline again to drop it"
            )
        self._prompt_embeds: torch.Tensor | None = None
        self._adapter_weights: dict[str, float] = {}
        self.enable_tiling()

    # ----------------------------------------------------------------------------------------------- codec steps
    def set_codec_step(self, codec: str, step, validation: dict | None = None) -> None:
        """Store ``step`` (e.g. ``JPEGDeadzone(0.75)``; ``None`` removes it) for ``codec`` in the config, with its
        ``validation`` record (the format of an adapter's: ``bd_rate``, ``headline``, ``wins``, ``images``), so that
        :meth:`save_pretrained` writes it and :meth:`adapter_for` follows it."""
        steps = dict(self.config.get("codec_steps") or {})
        if step is None:
            steps.pop(codec, None)
        else:
            if step.codec != codec:
                raise ValueError(f"the step {step.name!r} is made for {step.codec}, not {codec}")
            steps[codec] = {**step.config(), **({"validation": validation} if validation is not None else {})}
        self.register_to_config(codec_steps=_check_codec_steps(steps))

    # ----------------------------------------------------------------------------------------- prompt embedding
    @property
    def prompt_embeds(self) -> torch.Tensor:
        """(1, L, D) float32 embedding of the fixed prompt, computed on first use."""
        if self._prompt_embeds is None:
            self._prompt_embeds = self.encode_prompt(self.config.prompt)
        return self._prompt_embeds

    @prompt_embeds.setter
    def prompt_embeds(self, embeds: torch.Tensor) -> None:
        """Set the (1, L, D) embedding directly (e.g. computed elsewhere); saved by :meth:`save_pretrained`."""
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[0] != 1:
            raise ValueError(f"prompt_embeds must be a (1, L, D) tensor, got {getattr(embeds, 'shape', embeds)}")
        if embeds.shape[-1] != self.unet.config.cross_attention_dim:
            raise ValueError(f"prompt_embeds width {embeds.shape[-1]} != UNet cross_attention_dim")
        self._prompt_embeds = embeds.detach().float().cpu()

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Encode ``prompt`` as StableDiffusionPipeline does (last hidden state, no CFG) -> (1, L, D) float32 on CPU."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "this pipeline has no text encoder and no saved prompt embedding: load it from a folder that has "
                f"`text_encoder`/`tokenizer` subfolders or a `{PROMPT_EMBEDS_NAME}` file"
            )
        tokens = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self._execution_device
        mask = (
            tokens.attention_mask.to(device)
            if getattr(self.text_encoder.config, "use_attention_mask", False)
            else None
        )
        with torch.no_grad():
            embeds = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return embeds.detach().float().cpu()

    def set_prompt(self, prompt: str) -> None:
        """Change the fixed prompt (needs the text encoder) and re-encode it."""
        self._prompt_embeds = self.encode_prompt(prompt)
        self.register_to_config(prompt=prompt)

    def drop_text_encoder(self) -> None:
        """Encode the prompt, then free the text encoder and tokenizer (they are not needed for inference)."""
        _ = self.prompt_embeds
        self.register_modules(text_encoder=None, tokenizer=None)

    # ------------------------------------------------------------------------------------------------- tiling
    @property
    def pad_multiple(self) -> int:
        """Image sides must divide by this: VAE factor x 2^(number of UNet down blocks - 1) (64 for SD 2.1)."""
        return self.config.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def enable_tiling(self, tile_size: int = 768, overlap: int = 128) -> None:
        """Process images larger than ``tile_size`` pixels in overlapping tiles blended without seams.

        Memory then stays bounded by the tile size. The default 768 px keeps Kodak-sized images (768x512) whole,
        where tiled and untiled outputs are identical; ``overlap`` is the least number of pixels neighbouring tiles
        share (both rounded to the model's multiple).
        """
        if tile_size < self.pad_multiple:
            raise ValueError(f"tile_size must be at least the model's multiple {self.pad_multiple}, got {tile_size}")
        if not 0 <= overlap < tile_size:
            raise ValueError(f"overlap must lie in [0, tile_size), got {overlap}")
        self._tile_size = tile_size // self.pad_multiple * self.pad_multiple
        self._tile_overlap = overlap
        self._tiling = True

    def disable_tiling(self) -> None:
        """Process every image whole (memory grows with the image size)."""
        self._tiling = False

    def _num_tiles(self, height: int, width: int) -> int:
        padded_h, padded_w = padded_size(height, width, self.pad_multiple)
        if not self._tiling:
            return 1
        count = [
            len(tile_starts(n, min(self._tile_size, n), self._tile_overlap, self.pad_multiple))
            for n in (padded_h, padded_w)
        ]
        return count[0] * count[1]

    # ----------------------------------------------------------------------------------------------- CPU speed
    def enable_subpixel_upsampling(self) -> int:
        """Compute every 2x upsampler (nearest 2x, then 3x3 conv) of the VAE and UNet in its exact sub-pixel form.

        Same function, 2.25x fewer FLOPs in those convolutions (about 16% of SD 2.1's VAE decoder); only the
        summation order differs. Parameters and saved weights are unchanged. Returns how many modules were switched.
        See :mod:`rp_diffusers.models.subpixel_upsample`.
        """
        return sum(use_subpixel_upsampling(model) for model in (self.vae, self.unet) if model is not None)

    def optimize_for_cpu(
        self, vae_dtype: torch.dtype | None = torch.bfloat16, subpixel_upsampling: bool = True
    ) -> None:
        """Speed up CPU inference (measured in ``benchmarks/pipeline.py``); call after loading, before inference.

        - The VAE's convolutions use the channels-last memory format (oneDNN's fast layout; same numbers up to
          summation order). The UNet gains nothing from it and is left alone.
        - The VAE runs in ``vae_dtype`` (bf16) when the CPU has native bf16 (AVX512-BF16 / AMX) while the UNet keeps
          its dtype: the VAE is about two thirds of the work and tolerates bf16, whereas at t* = 999 the x0 formula
          divides the UNet's noise estimate by sqrt(alpha_bar) ~ 0.07, amplifying its rounding errors ~15x.
          ``vae_dtype=None`` keeps the VAE's dtype (exact mode).
        - ``subpixel_upsampling``: :meth:`enable_subpixel_upsampling` (exact, fewer FLOPs).

        Saving afterwards stores the VAE in ``vae_dtype``; save before optimising to keep full-precision weights.
        """
        self.vae.to(memory_format=torch.channels_last)
        if vae_dtype is not None and vae_dtype != self.vae.dtype:
            try:
                native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
                native_bf16 = False
            if vae_dtype == torch.bfloat16 and not native_bf16:
                logger.warning("this CPU has no native bf16: keeping the VAE in %s", self.vae.dtype)
            else:
                self.vae.to(dtype=vae_dtype)
        if subpixel_upsampling:
            self.enable_subpixel_upsampling()

    # --------------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs):
        """Save components, the prompt embedding and every adapter (``adapters/<name>/``) so that
        :meth:`from_pretrained` rebuilds a pipeline giving identical outputs."""
        if not safe_serialization:
            raise ValueError("rp-diffusers saves safetensors only; drop safe_serialization=False")
        self.check_adapters_saveable()
        embeds = self.prompt_embeds
        with base_weights_only(self.unet):
            super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        save_directory = Path(save_directory)
        save_file(
            {"prompt_embeds": embeds.contiguous()}, save_directory / PROMPT_EMBEDS_NAME, {"prompt": self.config.prompt}
        )
        self.save_adapters(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a stock SD 2.1 / SD-Turbo folder or Hub repo, or a folder written by :meth:`save_pretrained`.

        Extra stock components (``safety_checker``, ``feature_extractor``) are ignored. Pass ``text_encoder=None,
        tokenizer=None`` to skip loading them when the folder has a saved prompt embedding. Weights load from
        ``.safetensors`` only: a component holding only pickled weights (``.bin``, ``.pt``, ``.ckpt``) is refused
        with a message saying how to convert it, and never unpickled.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                "rp-diffusers loads safetensors weights only (a pickled .bin can run code when it is loaded): drop "
                "use_safetensors=False and convert the weights (see safetensors.torch.save_file)"
            )
        kwargs["use_safetensors"] = True  # never fall back to unpickling a .bin (diffusers' default does)
        _refuse_pickled_components(pretrained_model_name_or_path, kwargs)
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        source = str(pretrained_model_name_or_path)
        embeds_path = resolve_optional_file(source, PROMPT_EMBEDS_NAME, **hub_kwargs)
        if embeds_path is not None:
            pipe._prompt_embeds = load_file(embeds_path)["prompt_embeds"].float()
        elif pipe.text_encoder is None or pipe.tokenizer is None:
            raise ValueError(
                f"{source} has no `{PROMPT_EMBEDS_NAME}`, so the text encoder and tokenizer are needed: do not pass "
                "text_encoder=None / tokenizer=None for this model"
            )
        pipe.load_saved_adapters(source, **hub_kwargs)
        return pipe

    # ------------------------------------------------------------------------------------------------ inference
    def _one_step(self, image: torch.Tensor, generator: torch.Generator | list | None) -> torch.Tensor:
        """(B, 3, h, w) [0, 1] with h, w multiples of :attr:`pad_multiple` -> (B, 3, h, w) float32, not clipped."""
        noise = None
        if self.config.add_noise:
            noise = one_step_noise(image, self.unet.config.in_channels, self.config.vae_scale_factor, generator)
        output = one_step_map(
            self.vae,
            self.unet,
            image,
            self.prompt_embeds,
            self.config.timestep,
            self.scheduler.alphas_cumprod,
            prediction_type=self.scheduler.config.get("prediction_type", "epsilon"),
            noise=noise,
            residual=self.config.residual,
        )
        return output.float()

    def _process_batch(self, image: torch.Tensor, generator, batch_size: int, progress) -> torch.Tensor:
        """Pad (reflect), run whole or tiled, crop: (N, 3, H, W) [0, 1] -> (N, 3, H, W) [0, 1] float32."""
        padded, size = pad_to_multiple(image, self.pad_multiple)
        if self._tiling and max(padded.shape[-2:]) > self._tile_size:
            output = tiled_apply(
                lambda tiles: self._one_step(tiles, generator),
                padded,
                tile_size=self._tile_size,
                overlap=self._tile_overlap,
                align=self.pad_multiple,
                batch_size=batch_size,
                progress=progress,
            )
        else:
            output = self._one_step(padded, generator)
            progress(image.shape[0])
        return crop_to_size(output, size).clamp(0.0, 1.0)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image,
        adapter_name: str | list[str] | None = None,
        adapter_weights: float | list[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch_size: int = 4,
    ) -> RPPreprocessPipelineOutput | tuple:
        r"""Pre-process image(s) for a codec; every output has its input's size.

        Args:
            image: a PIL image, path, (H, W, 3) uint8/float array, (3, H, W) / (N, 3, H, W) tensor in [0, 1], or a
                list of these (sizes may differ).
            adapter_name: adapter(s) to use for THIS call only (the selection before the call is restored after it;
                ``set_adapters`` is the way to change it for later calls); ``[]``: the base model, adapters off, for
                this call; ``None`` (default): the current selection. :meth:`adapter_for` says which adapter suits
                a codec.
            adapter_weights: weights of a mix, e.g. ``[0.5, 0.5]`` for two adapters: one finite number per adapter
                (or one for all); NaN and infinities are refused. Negative weights are allowed, as in diffusers.
            output_type: ``"pil"``, ``"np"`` or ``"pt"`` (see :class:`RPPreprocessPipelineOutput`).
            return_dict: return the dataclass (``True``) or a one-element tuple.
            generator: random source for ``add_noise=True`` pipelines (unused otherwise: the map is deterministic).
            batch_size: images (or tiles) per model call; images of one size are batched together.

        Examples:

        Returns:
            :class:`RPPreprocessPipelineOutput` or ``(images,)``.
        """
        # 1. Check inputs and turn them into RGB images (the one conversion path: rp_diffusers.utils.image)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if adapter_name is None and adapter_weights is not None:
            raise ValueError("adapter_weights needs adapter_name: pass the adapters the weights belong to")
        adapter_weights = _check_adapter_weights(adapter_name, adapter_weights)
        images = to_pil_list(image)

        # 2. Select adapters for this call only
        with self.scoped_adapters(adapter_name, adapter_weights):
            result = self._run(images, generator, batch_size, output_type)
        if not return_dict:
            return (result,)
        return RPPreprocessPipelineOutput(images=result)

    def _run(self, images: list, generator, batch_size: int, output_type: str):
        # 3. Encode the fixed prompt once (cached; saved with the pipeline)
        _ = self.prompt_embeds

        # 4. Group images of one size, pad (reflect), run the one-step map (tiled when large), crop back
        device = self._execution_device
        groups: dict[tuple[int, int], list[int]] = {}
        for index, pil in enumerate(images):
            groups.setdefault(pil.size, []).append(index)
        total = sum(self._num_tiles(pil.height, pil.width) for pil in images)
        outputs: list[torch.Tensor | None] = [None] * len(images)
        bar = self.progress_bar(total=total) if total > 1 else nullcontext()
        with bar:
            update = bar.update if total > 1 else (lambda n: None)
            for indices in groups.values():
                for begin in range(0, len(indices), batch_size):
                    chunk = indices[begin : begin + batch_size]
                    batch = pil_to_tensor([images[i] for i in chunk]).to(device)
                    result = self._process_batch(batch, generator, batch_size, update).cpu()
                    for position, index in enumerate(chunk):
                        outputs[index] = result[position]

        # 5. Convert to the requested output type
        if output_type == "pil":
            result = [tensor_to_pil(out)[0] for out in outputs]
        else:
            same_size = len({tuple(out.shape) for out in outputs}) == 1
            if output_type == "pt":
                result = torch.stack(outputs) if same_size else outputs
            else:
                arrays = [out.permute(1, 2, 0).numpy() for out in outputs]
                result = np.stack(arrays) if same_size else arrays

        # 6. Offload all models
        self.maybe_free_model_hooks()
        return result
