"""Training data: Hub or folder image datasets, random crops at the images' own scale, unreadable images skipped.

Reproducibility: crops and flips of sample ``i`` in epoch ``e`` come from a generator seeded by ``(seed, e, i)``, and
the draws of a batch from :func:`step_generator` keyed by (process, epoch, batch index), so neither depends on worker
count, process count, global RNG state or how many batches a resumed run skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils.image import ImageLoadError, load_image, pil_to_tensor

logger = logging.getLogger(__name__)


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
        # data_files, not data_dir: with data_dir, imagefolder reads file names such as "train_railway_*.jpg" as
        # split markers and silently keeps only those files (1 of the 80 Sun-Hays photographs).
        pattern = str(Path(train_data_dir) / "**")
        dataset = datasets.load_dataset("imagefolder", data_files={split: pattern}, cache_dir=cache_dir, split=split)
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
        resolution: crop size in pixels (a multiple of the model's factor: 64 for SD 2.1).
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


def step_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator for all draws of one batch: a pure function of ``seed`` and integer ``keys``.

    The scripts pass (process index, epoch, batch index in the epoch), so a resumed run draws what the
    uninterrupted run drew, whatever the global RNG state is.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))
    return generator
