"""Library side of the training scripts: image datasets with random crops, checkpoints, args and validation cards.

The scripts in ``training/`` keep only their loop and CLI; everything they share lives here and is tested here.
Nothing in this module reads an argparse ``Namespace``: the scripts pass plain values.

Reproducibility contract (what makes ``--resume_from_checkpoint`` exact):
- crops and flips of sample ``i`` in epoch ``e`` are drawn from a generator seeded by ``(seed, e, i)``, so they do
  not depend on worker count, process count or how many batches were skipped;
- the noise, timesteps and qualities of the ``k``-th batch come from :func:`step_generator` seeded by
  ``(seed, process_index, k)``, so a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .utils.image import ImageLoadError, load_image, pil_to_tensor

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".jxl")


# --------------------------------------------------------------------------- datasets


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    image_column: str | None = None,
    dataset_config_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    split: str = "train",
    max_samples: int | None = None,
):
    """A Hub image dataset or a local folder (``datasets``' imagefolder) with its image column left undecoded.

    Images are decoded later, one by one, by :class:`RandomCropImageDataset`, so one corrupt file costs one skipped
    sample instead of a crash.

    Args:
        dataset_name: a Hub dataset id (``"user/images"``) or a local dataset script/folder ``load_dataset`` reads.
        train_data_dir: a folder of images (sub-folders allowed), read through the ``imagefolder`` builder.
        image_column: the column holding images; by default the first ``Image`` column, else ``"image"``.
        max_samples: keep only the first ``max_samples`` rows (quick experiments).

    Returns:
        ``(dataset, image_column)``: a ``datasets.Dataset`` whose ``image_column`` yields
        ``{"bytes", "path"}`` dicts (or path strings) and the column's name.
    """
    import datasets

    if dataset_name is None and train_data_dir is None:
        raise ValueError("pass --dataset_name (a Hub image dataset) or --train_data_dir (a folder of images)")
    if dataset_name is not None:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
    else:
        dataset = datasets.load_dataset("imagefolder", data_dir=str(train_data_dir), cache_dir=cache_dir, split=split)
    if image_column is None:
        image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
        image_column = image_columns[0] if image_columns else "image"
    if image_column not in dataset.column_names:
        raise ValueError(
            f"image column {image_column!r} not in the dataset's columns {dataset.column_names}; pass --image_column"
        )
    if isinstance(dataset.features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    dataset = dataset.select_columns([image_column])
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"the dataset {dataset_name or train_data_dir} holds no images")
    return dataset, image_column


def _describe(entry) -> str:
    if isinstance(entry, dict):
        return str(entry.get("path") or "<embedded bytes>")
    return str(entry) if isinstance(entry, (str, os.PathLike)) else type(entry).__name__


def _open_entry(entry) -> Image.Image:
    """An undecoded dataset cell (``{"bytes", "path"}``, a path or a PIL image) -> RGB PIL image."""
    if isinstance(entry, dict):
        return load_image(entry["bytes"] if entry.get("bytes") is not None else entry["path"])
    return load_image(entry)


def random_crop(
    image: Image.Image,
    resolution: int,
    generator: np.random.Generator,
    center_crop: bool = False,
    random_flip: bool = False,
    resize_shorter_side: int | None = None,
) -> torch.Tensor:
    """A ``resolution`` x ``resolution`` crop of ``image`` at its own scale -> (3, R, R) tensor in [0, 1].

    The content scale is kept (no resizing) unless ``resize_shorter_side`` is given; an image smaller than the crop
    is the one exception: its shorter side is enlarged to ``resolution`` (bicubic) so it can still be used.
    """
    if resize_shorter_side is not None:
        scale = resize_shorter_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    if min(image.size) < resolution:
        scale = resolution / min(image.size)
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        image = image.resize(size, Image.BICUBIC)
    if center_crop:
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    else:
        left = int(generator.integers(0, image.width - resolution + 1))
        top = int(generator.integers(0, image.height - resolution + 1))
    crop = image.crop((left, top, left + resolution, top + resolution))
    if random_flip and generator.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return pil_to_tensor(crop)[0]


class RandomCropImageDataset(torch.utils.data.Dataset):
    """Random (or center) crops of an image column; unreadable images are skipped with a warning.

    Sample ``index`` in epoch ``epoch`` always gets the same crop for a given ``seed`` (see the module docstring);
    call :meth:`set_epoch` at the start of every epoch. An unreadable image is replaced by the next readable one.

    Args:
        dataset: a ``datasets.Dataset`` from :func:`load_image_dataset` (or any sequence of image entries).
        image_column: the column to read.
        resolution: crop size in pixels (a multiple of the model's factor, e.g. 8 x 8 = 64 for SD 2.1... or 512).
        seed: base seed of the crops.

    Example:
        >>> ds = RandomCropImageDataset([{"path": "a.png"}], None, 256)  # doctest: +SKIP
        >>> ds[0]["pixel_values"].shape  # doctest: +SKIP
        torch.Size([3, 256, 256])
    """

    def __init__(
        self,
        dataset,
        image_column: str | None,
        resolution: int,
        seed: int = 0,
        center_crop: bool = False,
        random_flip: bool = False,
        resize_shorter_side: int | None = None,
    ):
        self.dataset, self.image_column, self.resolution = dataset, image_column, resolution
        self.seed, self.center_crop, self.random_flip = seed, center_crop, random_flip
        self.resize_shorter_side = resize_shorter_side
        self.epoch = 0
        self._bad: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def _entry(self, index: int):
        row = self.dataset[index]
        return row[self.image_column] if self.image_column is not None else row

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._bad:
                continue
            entry = self._entry(candidate)
            try:
                image = _open_entry(entry)
            except ImageLoadError as error:
                self._bad.add(candidate)
                logger.warning("skipping unreadable image %s: %s", _describe(entry), error)
                continue
            generator = np.random.default_rng([self.seed, self.epoch, index])
            pixels = random_crop(
                image, self.resolution, generator, self.center_crop, self.random_flip, self.resize_shorter_side
            )
            return {"pixel_values": pixels}
        raise ImageLoadError("no readable image in the dataset; check --train_data_dir / --dataset_name")


def collate_images(examples: list[dict]) -> dict:
    """Stack ``pixel_values`` -> {"pixel_values": (N, 3, R, R) float32 in [0, 1]}."""
    return {"pixel_values": torch.stack([example["pixel_values"] for example in examples]).contiguous()}


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (validation sets)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"validation folder {folder} does not exist; pass --validation_data_dir DIR")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def step_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator for all draws of one batch: a pure function of ``seed`` and integer ``keys``.

    The scripts pass (process index, epoch, batch index in the epoch), so a resumed run draws what the
    uninterrupted run drew, whatever the global RNG state is.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))
    return generator


class PreparedModel:
    """A model prepared by Accelerate (DDP/FSDP wrapper) that still shows the wrapped module's ``dtype``/``config``.

    ``rp_diffusers.models.one_step`` reads ``unet.dtype`` and ``unet.config``; calls go through the wrapper so that
    gradient synchronisation works.
    """

    def __init__(self, prepared: torch.nn.Module, module: torch.nn.Module):
        self.prepared, self.module = prepared, module

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    @property
    def config(self):
        return self.module.config

    def __call__(self, *args, **kwargs):
        return self.prepared(*args, **kwargs)


def move_model(model: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(device)``, casting only when the dtype changes (diffusers warns on every cast)."""
    if next(model.parameters()).dtype != dtype:
        return model.to(device, dtype=dtype)
    return model.to(device)


def one_step_forward(
    vae,
    unet,
    image: torch.Tensor,
    prompt_embeds: torch.Tensor,
    timestep: int,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    residual: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``one_step_map`` that also returns its x0 latents (stage 1 needs both): -> (x0_latents, image).

    Composed of the same three functions as :func:`rp_diffusers.models.one_step_map` (a test checks the image
    equals ``one_step_map``'s). Shapes as there: image (N, 3, H, W) in [0, 1] -> x0 latents (N, C, H/f, W/f) and
    the decoded (N, 3, H, W) image, not clipped.
    """
    from .models.one_step import decode_latents, encode_image, predict_x0_latents

    latents = encode_image(vae, image)
    x0_latents = predict_x0_latents(unet, latents, timestep, prompt_embeds, alphas_cumprod, prediction_type)
    if residual:
        x0_latents = latents + x0_latents
    return x0_latents, decode_latents(vae, x0_latents)


# --------------------------------------------------------------------------- checkpoints and args


def save_args(args: dict, output_dir: str | os.PathLike, name: str = "args.json") -> Path:
    """Write the run's arguments as JSON (paths as strings) to ``output_dir/name``; returns the path."""
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    cleaned = {key: (str(value) if isinstance(value, os.PathLike) else value) for key, value in args.items()}
    cleaned.pop("hub_token", None)  # never write a secret next to the weights
    path.write_text(json.dumps(cleaned, indent=2, sort_keys=True, default=str) + "\n")
    return path


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters with ``requires_grad`` (LoRA factors, or everything when fully trained), detached, contiguous."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_trainable_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Store only the trainable parameters of ``model`` as safetensors (the checkpoint hooks use this)."""
    from safetensors.torch import save_file

    save_file({k: v.cpu() for k, v in trainable_state_dict(model).items()}, str(path))


def load_trainable_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load what :func:`save_trainable_weights` wrote; every trainable parameter must be in the file."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = sorted(name for name, p in params.items() if p.requires_grad and name not in state)
    unexpected = sorted(name for name in state if name not in params)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "resume with the same --rank / LoRA / full-training flags the run was started with"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].dtype))


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-{step}`` folders of ``output_dir`` sorted by step."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Before saving a new checkpoint, delete the oldest so at most ``total_limit`` remain after it; returns them."""
    if total_limit is None:
        return []
    existing = checkpoint_folders(output_dir)
    excess = existing[: max(0, len(existing) - total_limit + 1)]
    for folder in excess:
        shutil.rmtree(folder)
    return excess


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """``"latest"`` -> the newest ``checkpoint-{step}`` in ``output_dir`` (``None`` if none); a path -> itself."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        folders = checkpoint_folders(output_dir)
        return folders[-1] if folders else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {resume_from_checkpoint} not found; pass 'latest' or a checkpoint folder")
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step a ``checkpoint-{step}`` folder was saved at."""
    match = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint-{{step}} folder")
    return int(match.group(1))


def resume_position(
    global_step: int, update_steps_per_epoch: int, gradient_accumulation_steps: int
) -> tuple[int, int]:
    """Where a run resumed at ``global_step`` continues: ``(epoch, batches of that epoch to skip)``."""
    epoch = global_step // update_steps_per_epoch
    return epoch, (global_step - epoch * update_steps_per_epoch) * gradient_accumulation_steps


def build_optimizer(
    params,
    learning_rate: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    use_8bit_adam: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over ``params`` (bitsandbytes' 8-bit AdamW when asked and installed)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    optimizer_class = torch.optim.AdamW
    if use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from error
        optimizer_class = bnb.optim.AdamW8bit
    return optimizer_class(params, lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=eps)


def log_images(accelerator, images: dict[str, Image.Image], step: int, folder: str | os.PathLike, tag: str) -> None:
    """Save ``images`` as PNGs under ``folder`` and send them to the trackers that take images (TensorBoard, W&B)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / f"{name}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for name, image in images.items():
                tracker.writer.add_image(f"{tag}/{name}", np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(image, caption=name) for name, image in images.items()]}, step=step)


# --------------------------------------------------------------------------- validation reports and cards


def validation_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of numbers -> a markdown table (floats with 4 significant digits); columns default to the first row's."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_training_card(
    repo_id: str,
    *,
    adapters: list[dict],
    validation_rows: list[dict],
    base_model: str | None = None,
    training: str = "",
    template: str | os.PathLike | None = None,
):
    """Render ``model_card.md`` for a training run's output with its validation table -> ``ModelCard``.

    Example:
        >>> card = render_training_card("me/rp", adapters=[{"name": "rp_jpeg_lambda_1", "codec": "jpeg",
        ...     "lam": 1.0, "rank": 4}], validation_rows=[{"quality": 30, "bpp codec": 0.5}])  # doctest: +SKIP
    """
    from .utils.hub import render_model_card

    return render_model_card(
        repo_id,
        adapters=adapters,
        validation_table=validation_table(validation_rows),
        base_model=base_model,
        summary="Rate-perception LoRA adapters trained with `training/finetune_rp.py`.",
        training=training,
        limits="Validation numbers come from the training run's validation images, not from a test set.",
        results_intro="See the validation table below; run `rp-diffusers evaluate` for full R-D curves.",
        template=template,
    )
