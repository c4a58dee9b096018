"""Pack training photographs into a small folder of lossless files, to carry training data to a remote machine.

For every photograph of the given folders this writes, into a sub-folder of ``--output_dir`` named like its folder
(so that ``train_decode_denoiser.py --data_shares`` can weight the folders), as lossless WebP, its Lanczos half-size copy (the one
``train_decode_denoiser.py --half_size`` makes at load time) and ``--crops_per_image`` random full-resolution
square crops of ``--crop_size`` pixels. Photographs that are JPEG files already (``train-sunhays80`` is
JPEG-sourced) are copied as they are with ``--copy_jpeg``: the original file is the smallest exact copy of its
pixels, far smaller than any lossless re-encoding, and it keeps the whole photograph.

A Lanczos half-size copy of a full-resolution crop is a crop of the half-size photograph (up to the crop's
borders), so ``--no-half_size`` here plus ``--half_size`` at training time gives both scales for the bytes of
the crops alone. ``--max_megabytes`` refuses to finish a pack that would exceed it (nothing over the limit is
left behind). Never Kodak (the test set) and never val-set14 (validation).

Lossless WebP of these photographs runs about 9-10 bits per pixel at full size and 10-11 at half size.

Example (the pack that ``.gpu_carry/run_decode.sh`` trains on: 23.3 MB, about 6 minutes on one core):
    python training/pack_training_crops.py ../shared/data/train-clean ../shared/data/train-sunhays80 \\
        --output_dir .gpu_carry/data --no-half_size --crops_per_image 1 --crop_size 320 --max_megabytes 25
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from rp_diffusers.utils.image import list_images, load_image

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
REFUSED_FOLDERS = ("kodak", "val-set14")


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", help="folders of training photographs (not Kodak, not val-set14)")
    parser.add_argument("--output_dir", required=True, help="folder the files are written to (created)")
    parser.add_argument(
        "--half_size", action=argparse.BooleanOptionalAction, default=True, help="write a Lanczos half-size copy"
    )
    parser.add_argument("--crops_per_image", type=int, default=2, help="random full-resolution crops per photograph")
    parser.add_argument("--crop_size", type=int, default=320, help="side of the square crops in pixels")
    parser.add_argument(
        "--copy_jpeg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy JPEG photographs as they are (whole, no half-size copy or crops) instead of re-encoding them",
    )
    parser.add_argument("--max_megabytes", type=float, default=32.0, help="fail if the pack would exceed this (MB)")
    parser.add_argument("--method", type=int, default=6, help="WebP effort 0-6 (6: smallest, slowest)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(input_args)
    for folder in args.folders:
        name = Path(folder).resolve().name.lower()
        if any(refused in name for refused in REFUSED_FOLDERS):
            parser.error(f"{folder}: Kodak is the test set and val-set14 the validation set: never pack them")
    if args.crops_per_image < 0 or args.crop_size < 16:
        parser.error("--crops_per_image must be >= 0 and --crop_size >= 16")
    return args


def save_webp(image: Image.Image, path: Path, method: int) -> int:
    image.save(path, "WEBP", lossless=True, quality=100, method=method, exact=True)
    return path.stat().st_size


def pack(args: argparse.Namespace) -> dict[str, float]:
    """Write the pack; returns its file count and size. Raises ``RuntimeError`` over ``--max_megabytes``."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    limit = int(args.max_megabytes * 1e6)
    written: list[Path] = []
    total = 0

    def account(path: Path, size: int) -> None:
        nonlocal total
        written.append(path)
        total += size
        if total > limit:
            for done in written:
                done.unlink(missing_ok=True)
            raise RuntimeError(
                f"the pack would exceed --max_megabytes {args.max_megabytes:g} (over {total / 1e6:.1f} MB after "
                f"{len(written)} files): lower --crops_per_image / --crop_size or use --no-half_size"
            )

    for folder in args.folders:
        folder_dir = output_dir / Path(folder).resolve().name
        folder_dir.mkdir(exist_ok=True)
        for path in list_images(folder):
            stem = folder_dir / Path(path).stem
            if args.copy_jpeg and Path(path).suffix.lower() in JPEG_SUFFIXES:
                target = stem.with_name(f"{stem.name}{Path(path).suffix.lower()}")
                shutil.copyfile(path, target)
                account(target, target.stat().st_size)
                continue
            image = load_image(path)
            if args.half_size:
                half = image.resize((image.width // 2, image.height // 2), Image.LANCZOS)
                target = stem.with_name(f"{stem.name}_half.webp")
                account(target, save_webp(half, target, args.method))
            side = min(args.crop_size, image.width, image.height)
            for index in range(args.crops_per_image):
                top = int(rng.integers(0, image.height - side + 1))
                left = int(rng.integers(0, image.width - side + 1))
                target = stem.with_name(f"{stem.name}_crop{index}.webp")
                crop = image.crop((left, top, left + side, top + side))
                account(target, save_webp(crop, target, args.method))
    summary = {"files": len(written), "megabytes": round(total / 1e6, 2)}
    print(f"wrote {summary['files']} files, {summary['megabytes']} MB, to {output_dir}")
    return summary


if __name__ == "__main__":
    pack(parse_args())
