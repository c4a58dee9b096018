"""RGB PSNR as image-compression papers compute it on 8-bit images, and the input checks every metric shares.

Conventions (CompressAI's ``compute_metrics``): both images are clamped to [0, 1], quantised to 8 bits
(``round(255 * x) / 255``), the mean squared error is taken over all RGB pixels of one image, and
``PSNR = 10 * log10(data_range**2 / MSE)``. Identical images give ``inf`` (no cap): average PSNR over a set
should be reported from finite values, or from the mean MSE, by the caller.
"""

from __future__ import annotations

import torch


def check_image_pair(x: torch.Tensor, y: torch.Tensor, *, channels: int | None = None, name: str = "metric") -> None:
    """Check that ``x`` and ``y`` are two batches of images a metric can compare.

    Args:
        x, y (`torch.Tensor` of shape `(N, C, H, W)`): floating-point images.
        channels (`int`, *optional*): the number of channels the metric needs (3 for the networks).
        name (`str`): the metric's name, for the error message.

    Raises:
        ValueError: on a shape, dtype or channel mismatch; the message says what was expected.
    """
    for label, image in (("reference", x), ("distorted", y)):
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"{name}: the {label} images must be a torch.Tensor, got {type(image).__name__}")
        if image.ndim != 4:
            raise ValueError(
                f"{name}: expected NCHW images (4 dimensions), got shape {tuple(image.shape)} for the {label}; "
                "add a batch dimension with `image[None]`"
            )
        if not image.is_floating_point():
            raise ValueError(
                f"{name}: expected floating-point images in [0, 1], got {image.dtype}; convert uint8 with `x / 255`"
            )
    if x.shape != y.shape:
        raise ValueError(f"{name}: the two batches differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name}: expected {channels}-channel images, got {x.shape[1]}; "
            "replicate grayscale with `x.expand(-1, 3, -1, -1)`"
        )


def quantize_8bit(image: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Clamp to ``[0, data_range]`` and round to the 256 levels an 8-bit file stores.

    Args:
        image (`torch.Tensor`): any shape, values nominally in ``[0, data_range]``.
        data_range (`float`): the value of white (1.0 for [0, 1] images, 255 for [0, 255] ones).

    Returns:
        `torch.Tensor`: same shape and dtype, values in ``{0, 1/255, ..., 1} * data_range``.

    Example:
        >>> quantize_8bit(torch.tensor([0.0, 0.5, 1.2])).mul(255).tolist()
        [0.0, 128.0, 255.0]
    """
    return (image / data_range).clamp(0.0, 1.0).mul(255.0).round().div(255.0).mul(data_range)


def mse(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, quantize: bool = True) -> torch.Tensor:
    """Per-image mean squared error over all pixels and channels, computed in float64.

    Args:
        x, y (`torch.Tensor` of shape `(N, C, H, W)`): reference and distorted images in ``[0, data_range]``.
        data_range (`float`): the value of white.
        quantize (`bool`): quantise both images to 8 bits first (the default, as for files on disk).

    Returns:
        `torch.Tensor` of shape `(N,)`, float64, in units of ``data_range**2``.
    """
    check_image_pair(x, y, name="mse")
    if quantize:  # exact: integer levels in float64, scaled once at the end
        levels_x = (x / data_range).clamp(0.0, 1.0).mul(255.0).round().double()
        levels_y = (y / data_range).clamp(0.0, 1.0).mul(255.0).round().double()
        return (levels_x - levels_y).square().flatten(1).mean(dim=1) * (data_range / 255.0) ** 2
    return (x.double() - y.double()).square().flatten(1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, *, quantize: bool = True) -> torch.Tensor:
    """Per-image RGB PSNR in dB.

    Args:
        x (`torch.Tensor` of shape `(N, C, H, W)`): reference images in ``[0, data_range]``.
        y (`torch.Tensor` of shape `(N, C, H, W)`): distorted images in ``[0, data_range]``.
        data_range (`float`): the value of white (1.0 for [0, 1] images).
        quantize (`bool`): quantise both images to 8 bits first (default ``True``, as papers evaluate
            decoded 8-bit files). Pass ``False`` to measure floating-point images as they are.

    Returns:
        `torch.Tensor` of shape `(N,)`, float64: ``10 * log10(data_range**2 / MSE)``; ``inf`` where the two
        images are identical (after quantisation).

    Example:
        >>> x = torch.zeros(1, 3, 8, 8); y = x + 10 / 255
        >>> round(float(psnr(x, y)[0]), 4)  # MSE = (10/255)**2
        28.1308
    """
    error = mse(x, y, data_range=data_range, quantize=quantize)
    return 10.0 * torch.log10(torch.as_tensor(float(data_range) ** 2, dtype=torch.float64) / error)
