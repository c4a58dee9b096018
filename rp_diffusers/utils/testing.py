"""Tiny SD-2.1-layout components built in code: offline tests, examples and benchmarks without the Hub."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def load_script(path: str | os.PathLike, name: str | None = None):
    """Import a script that is not in a package (``training/*.py``, ``benchmarks/*.py``, ``space/app.py``) as a module.

    Example:
        >>> bench = load_script("benchmarks/training.py")  # doctest: +SKIP
    """
    import importlib.util
    import sys

    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or f"rp_script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as importlib's recipe: dataclasses and pickle look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_clip_tokenizer():
    """A CLIPTokenizer built from an in-memory vocabulary (transformers 5: merges as tuples)."""
    from transformers import CLIPTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [c + "</w>" for c in letters] + ["th", "the</w>"]:
        vocab.setdefault(token, len(vocab))
    merges = [("t", "h"), ("th", "e</w>")]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16, pad_token="<|endoftext|>")


def tiny_sd_components(seed: int = 0, cross_attention_dim: int = 32, latent_channels: int = 4) -> dict:
    """Seeded tiny ``vae``, ``unet``, ``scheduler``, ``text_encoder``, ``tokenizer`` in SD 2.1's layout.

    The UNet has block_out_channels (32, 64) with cross-attention, the VAE two blocks (factor 2), as in
    diffusers' own pipeline tests. Pixel sizes must be multiples of 4 (VAE x UNet factors).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=128,
            max_position_embeddings=16,
        )
    )
    return {
        "vae": vae.eval(),
        "unet": unet.eval(),
        "scheduler": scheduler,
        "text_encoder": text_encoder.eval(),
        "tokenizer": tiny_clip_tokenizer(),
    }


def save_tiny_sd(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save tiny components as a stock diffusers SD folder (``model_index.json`` + subfolders), return it."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    components = tiny_sd_components(seed)
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


# Real SD 2.1 / SD-Turbo sizes (stabilityai/sd-turbo unet/ and vae/ config.json), for benchmarks with random weights.
SD21_UNET_CONFIG = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "block_out_channels": (320, 640, 1280, 1280),
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
SD21_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 768,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}


def sd21_size_unet(seed: int | None = None):
    """An SD 2.1-size ``UNet2DConditionModel`` (865M parameters) with random weights."""
    from diffusers import UNet2DConditionModel

    if seed is not None:
        torch.manual_seed(seed)
    return UNet2DConditionModel(**SD21_UNET_CONFIG)


def sd21_size_vae(seed: int | None = None):
    """An SD 2.1-size ``AutoencoderKL`` (84M parameters) with random weights."""
    from diffusers import AutoencoderKL

    if seed is not None:
        torch.manual_seed(seed)
    return AutoencoderKL(**SD21_VAE_CONFIG)
