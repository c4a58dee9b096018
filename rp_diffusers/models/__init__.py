"""The differentiable one-step map shared by inference and training, and small modules of our own."""

from .one_step import decode_latents, encode_image, one_step_map, one_step_noise, predict_x0_latents

__all__ = ["decode_latents", "encode_image", "one_step_map", "one_step_noise", "predict_x0_latents"]
