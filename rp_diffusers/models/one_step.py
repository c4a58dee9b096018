"""The one-step image-to-image map G(x) = Dec(x0(u(Enc(x), t*))): one function for the pipeline and training.

The pipeline calls it under ``torch.no_grad()``; every training script calls it with gradients. Keeping a single
implementation means inference and training can never diverge.

Spaces: ``image`` in [0, 1] (N, 3, H, W); ``image_vae`` in [-1, 1]; ``latents`` are scaled VAE latents
(``vae.config.scaling_factor`` applied); ``x0_latents`` the model's clean-latent estimate.
"""

from __future__ import annotations

import torch


def encode_image(vae, image: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
    """[0, 1] image (N, 3, H, W), H and W multiples of the VAE factor -> scaled latents (N, C, H/f, W/f).

    The distribution's mode is used by default (deterministic), as img2img-turbo and OSEDiff do. Deterministic
    autoencoders without a posterior (diffusers' ``AutoencoderTiny``, e.g. TAESD) return their latents directly.
    """
    image_vae = image.to(dtype=vae.dtype) * 2.0 - 1.0  # the one place [0, 1] -> [-1, 1] happens
    encoded = vae.encode(image_vae)
    posterior = getattr(encoded, "latent_dist", None)
    if posterior is None:
        latents = encoded.latents
    else:
        latents = posterior.sample(generator) if sample else posterior.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> image in [0, 1] (not clipped during training: gradients stay alive at the edges)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    image_vae = vae.decode(latents.to(dtype=vae.dtype) / vae.config.scaling_factor + shift).sample
    return image_vae * 0.5 + 0.5


def predict_x0_latents(
    unet,
    latents: torch.Tensor,
    timestep: int,
    prompt_embeds: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One UNet call at ``timestep`` on (optionally noised) latents -> x0 latent estimate (Tweedie).

    Args:
        unet: a ``UNet2DConditionModel`` (LoRA adapters, if any, are active as set on it).
        latents: (N, C, h, w) scaled clean latents of the input image.
        timestep: the fixed t* in [0, num_train_timesteps); 999 (img2img-turbo) or 625 (SiD-LSG); or an (N,)
            tensor of one timestep per sample (SiD's noise levels in stage 1).
        prompt_embeds: (1 or N, L, D) text embeddings of the fixed prompt.
        alphas_cumprod: the scheduler's cumulative alpha products (num_train_timesteps,).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (the scheduler config's value).
        noise: optional (N, C, h, w) Gaussian noise; when given, z_t = sqrt(a) * latents + sqrt(1 - a) * noise,
            otherwise the clean latents are fed as z_t (the deterministic img2img-turbo convention).

    Returns:
        (N, C, h, w) x0 latents in the dtype of ``latents``.
    """
    if torch.is_tensor(timestep) and timestep.ndim:  # one timestep per sample: (N,) -> (N, 1, 1, 1)
        t = timestep.to(device=latents.device, dtype=torch.long).expand(latents.shape[0])
        alpha_bar = alphas_cumprod.to(latents.device)[t].float().reshape(-1, *([1] * (latents.ndim - 1)))
    else:
        t = torch.full((latents.shape[0],), int(timestep), device=latents.device, dtype=torch.long)
        alpha_bar = alphas_cumprod[int(timestep)].to(device=latents.device, dtype=torch.float32)
    sqrt_a, sqrt_one_minus_a = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    z_t = latents.float()
    if noise is not None:
        z_t = sqrt_a * z_t + sqrt_one_minus_a * noise.float()
    embeds = prompt_embeds.to(device=latents.device, dtype=unet.dtype)
    if embeds.shape[0] == 1 and latents.shape[0] > 1:
        embeds = embeds.expand(latents.shape[0], -1, -1)
    model_output = unet(z_t.to(unet.dtype), t, encoder_hidden_states=embeds, return_dict=False)[0].float()
    if prediction_type == "epsilon":
        x0 = (z_t - sqrt_one_minus_a * model_output) / sqrt_a
    elif prediction_type == "v_prediction":
        x0 = sqrt_a * z_t - sqrt_one_minus_a * model_output
    elif prediction_type == "sample":
        x0 = model_output
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")
    return x0.to(latents.dtype)


def one_step_noise(
    image: torch.Tensor, latent_channels: int, vae_factor: int, generator: torch.Generator | list | None = None
) -> torch.Tensor:
    """Gaussian latent noise for ``add_noise`` one-step maps: (N, latent_channels, H / f, W / f) float32 on the
    image's device, drawn from ``generator`` (diffusers' ``randn_tensor``: a CPU generator gives the same values
    on every device). The pipeline and ``finetune_rp.py`` draw it here, so training and inference agree."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (image.shape[0], latent_channels, image.shape[-2] // vae_factor, image.shape[-1] // vae_factor)
    return randn_tensor(shape, generator=generator, device=image.device, dtype=torch.float32)


def one_step_map(
    vae,
    unet,
    image: torch.Tensor,
    prompt_embeds: torch.Tensor,
    timestep: int,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    noise: torch.Tensor | None = None,
    residual: bool = False,
    return_latents: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """G(image): [0, 1] image (N, 3, H, W), H and W multiples of the VAE factor x UNet factor -> [0, 1]-ish image.

    The one implementation of the one-step map: the pipeline, every training script and validation call it.
    ``residual=True`` adds the UNet's x0 estimate to the input latents as an offset (x0 = latents + delta): used
    by small models trained from scratch, where the identity must be easy to represent. Output is not clipped.
    ``return_latents=True`` returns ``(x0_latents, image)`` (stage 1's distillation needs the latents too).

    Example:
        >>> out = one_step_map(vae, unet, image, embeds, 999, scheduler.alphas_cumprod)  # doctest: +SKIP
    """
    latents = encode_image(vae, image)
    x0_latents = predict_x0_latents(unet, latents, timestep, prompt_embeds, alphas_cumprod, prediction_type, noise)
    if residual:
        x0_latents = latents + x0_latents
    image = decode_latents(vae, x0_latents)
    return (x0_latents, image) if return_latents else image
