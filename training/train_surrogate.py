"""Fit a learned differentiable proxy of a real codec (HEIC/HEVC, VVC, WebP, AVIF) on real encodes.

Training pairs come from running the REAL codec (``rp_diffusers.codecs``) on random crops of a folder of
photographs at random qualities; they are cached as a ``datasets.Dataset`` saved to disk, so later runs with the
same data settings reuse them. The proxy (``rp_diffusers.surrogates.proxy_model.CodecProxyNet``) is then trained
with Accelerate to reproduce the real decode (loss: mean over samples of log MSE, i.e. minus the mean PSNR) and
the real file size (squared error of log bits). Validation runs the real codec on centre crops of a different
folder (never Kodak, the test set). The result is ``proxy_{codec}.safetensors`` + ``proxy_{codec}.json``.
Checkpoints, resume and logging are those of every training script (``rp_diffusers.training_utils.runner``):
``checkpoint-{step}`` every ``--checkpointing_steps`` (the last ``--checkpoints_total_limit`` kept),
``--resume_from_checkpoint latest`` continues exactly (batch order keyed by epoch), SIGTERM / SIGUSR1 save a
checkpoint and stop.

``--init_weights`` starts from a fitted proxy and ``--train_parts`` trains only its rate head or only its decode
U-Net. The shipped proxies' DCT rate heads (``--rate_features dct``) were fitted that way on the shipped U-Nets.

Example:
    accelerate launch training/train_surrogate.py --codec heic --train_data_dir photos/ --validation_data_dir val/ \\
        --resolution 128 --num_pairs 2000 --max_train_steps 3000 --output_dir out/proxy-heic

    # a new rate head on a fitted proxy's U-Net (minutes on a CPU: no U-Net pass)
    python training/train_surrogate.py --codec heic --init_weights shipped --train_parts rate --rate_features dct \\
        --train_data_dir photos/ more-photos/ --validation_data_dir val/ --resolution 384 --min_resolution 128 \\
        --num_pairs 3000 --num_full_images 106 --max_train_steps 4000 --output_dir out/proxy-heic-rate
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from PIL import Image
from tqdm.auto import tqdm

from rp_diffusers.codecs import CodecError, get_codec
from rp_diffusers.surrogates.proxy import (
    CodecProxySurrogate,
    measure_fidelity,
    proxy_qualities,
    training_quality_range,
)
from rp_diffusers.surrogates.proxy_fidelity import dithered
from rp_diffusers.surrogates.proxy_model import CodecProxyNet
from rp_diffusers.training_utils import (
    end_run,
    end_stopped_run,
    finish_update,
    make_accelerator,
    make_lr_schedule,
    optimizer_step,
    resume,
    stop_on_signals,
    training_batches,
)
from rp_diffusers.utils.image import list_images, load_image

logger = get_logger(__name__)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codec", type=str, required=True, help="Codec to imitate: heic, hevc, vvc, webp, avif.")
    parser.add_argument(
        "--codec_settings", type=str, default="{}", help="JSON dict of codec setting overrides (get_codec kwargs)."
    )
    parser.add_argument(
        "--train_data_dir",
        type=str,
        nargs="+",
        required=True,
        help="Folder(s) of training photographs; each folder gives --num_pairs crops (and --num_full_images photos), "
        "cached separately.",
    )
    parser.add_argument(
        "--validation_data_dir",
        type=str,
        default=None,
        help="Folder of validation photos, never the test set (the shipped proxies: val-set14; default: none).",
    )
    parser.add_argument("--resolution", type=int, default=128, help="Largest side of the random training crops.")
    parser.add_argument(
        "--min_resolution",
        type=int,
        default=None,
        help="Smallest crop side (default: resolution / 2). Crop heights and widths are drawn independently from "
        "{min, halfway, max} (multiples of 8): varied sizes separate the fixed header from the per-pixel bits.",
    )
    parser.add_argument("--num_pairs", type=int, default=2000, help="Number of (crop, real encode) pairs to build.")
    parser.add_argument(
        "--quality_min",
        type=int,
        default=None,
        help="Lowest quality sampled (default: the codec's sweep bottom minus 4, see proxy.training_quality_range).",
    )
    parser.add_argument(
        "--quality_max",
        type=int,
        default=None,
        help="Highest quality sampled (default: halfway above the codec's default plus 4).",
    )
    parser.add_argument(
        "--pairs_dir",
        type=str,
        default=None,
        help="Folder of cached pair datasets, one sub-folder per data setting (default: ~/.cache/rp-diffusers/proxy-pairs).",
    )
    parser.add_argument(
        "--num_full_images",
        type=int,
        default=0,
        help="Also encode this many whole training photos (one random quality each; cached separately). Off by "
        "default: with sun-hays80 it did not improve the validation rate error.",
    )
    parser.add_argument(
        "--downscale_min",
        type=float,
        default=1.0,
        help="Shrink each training photo by a random factor in [downscale_min, 1] (Lanczos) before cropping, which "
        "hides the JPEG artefacts of JPEG-sourced photos. Off by default: it did not improve validation.",
    )
    parser.add_argument(
        "--label_dithers",
        type=int,
        default=0,
        help="Decode label = the mean of the real decode and of K more real decodes of the crop plus an independent "
        "-1/0/+1 dither (rp_diffusers.surrogates.proxy_fidelity.dithered), at the same quality: an estimate of the "
        "encoder's average output, whose decisions a small dither changes. The bits label stays the un-dithered "
        "file's. 0 (default): the real decode alone.",
    )
    parser.add_argument("--encode_workers", type=int, default=1, help="Threads running the real codec.")
    parser.add_argument(
        "--prepare_pairs_only", action="store_true", help="Build and cache the pairs, then stop (no training)."
    )
    parser.add_argument("--channels", type=str, default="24,48,64", help="Widths of the three U-Net levels.")
    parser.add_argument(
        "--matrix",
        type=str,
        default=None,
        choices=["bt601", "bt709"],
        help="YCbCr matrix of the codec (default: bt709 when the codec has a 'matrix' setting, else bt601).",
    )
    parser.add_argument(
        "--rate_features",
        type=str,
        default="stats",
        choices=["stats", "dct"],
        help="Block statistics of the rate head: 'dct' (26: DCT band energies, intra residual, global context; the "
        "shipped WebP, HEVC, AVIF and HEIC heads) or 'stats' (8 gradient/variance statistics; the default, so that "
        "earlier commands and checkpoints run as before).",
    )
    parser.add_argument(
        "--init_weights",
        type=str,
        default=None,
        help="Start from the fitted proxy of --codec in this folder ('shipped': the package's weights) instead of "
        "from scratch. Its rate head is kept only when its --rate_features match; its rate calibration is dropped "
        "when the rate head is trained.",
    )
    parser.add_argument(
        "--train_parts",
        type=str,
        default="all",
        choices=["all", "rate", "decode"],
        help="What to train: both parts, only the rate head (fast: no U-Net pass), or only the decode U-Net.",
    )
    parser.add_argument("--train_batch_size", type=int, default=8, help="Crops per step.")
    parser.add_argument(
        "--distortion_crop",
        type=int,
        default=128,
        help="The decode is fitted on a random window of this side of each crop (the rate on the whole crop): large "
        "crops teach the rate of large images at the cost of a small window of U-Net compute.",
    )
    parser.add_argument("--max_train_steps", type=int, default=3000, help="Optimisation steps.")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="Peak AdamW learning rate.")
    parser.add_argument("--lr_scheduler", type=str, default="cosine", help="diffusers scheduler name.")
    parser.add_argument("--lr_warmup_steps", type=int, default=100, help="Linear warm-up steps.")
    parser.add_argument("--adam_weight_decay", type=float, default=1e-4, help="AdamW weight decay.")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    parser.add_argument("--rate_weight", type=float, default=1.0, help="Weight of the log-bits loss.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of crops, qualities and initialisation.")
    parser.add_argument("--output_dir", type=str, default="proxy-out", help="Where weights and checkpoints go.")
    parser.add_argument(
        "--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"], help="Accelerate precision."
    )
    parser.add_argument("--checkpointing_steps", type=int, default=1000, help="Save a resumable state every N steps.")
    parser.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep at most this many checkpoints.")
    parser.add_argument(
        "--resume_from_checkpoint", type=str, default=None, help="A checkpoint-{step} folder or 'latest'."
    )
    parser.add_argument("--validation_steps", type=int, default=1000, help="Validate on real encodes every N steps.")
    parser.add_argument("--validation_resolution", type=int, default=512, help="Side of the validation centre crops.")
    parser.add_argument("--num_validation_images", type=int, default=13, help="Validation photos used (0: none).")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--report_to", type=str, default=None, help="Accelerate tracker (tensorboard, wandb).")
    args = parser.parse_args(input_args)
    args.command_line = list(sys.argv[1:] if input_args is None else input_args)
    if args.min_resolution is None:
        args.min_resolution = max(8, args.resolution // 16 * 8)
    for flag in ("resolution", "min_resolution"):
        if getattr(args, flag) < 8 or getattr(args, flag) % 8:
            raise ValueError(f"--{flag} must be a positive multiple of 8, got {getattr(args, flag)}")
    if args.min_resolution > args.resolution:
        raise ValueError(f"--min_resolution ({args.min_resolution}) must not exceed --resolution ({args.resolution})")
    json.loads(args.codec_settings)
    return args


def _pairs_key(args: argparse.Namespace, quality_range: tuple[int, int], folder: str) -> str:
    fields = [args.codec, args.codec_settings, args.resolution, args.min_resolution, args.num_pairs, quality_range]
    fields += [args.downscale_min] if args.downscale_min < 1 else []
    fields += [f"label_dithers={args.label_dithers}"] if args.label_dithers else []
    digest = hashlib.sha1(json.dumps([str(f) for f in fields] + [os.path.abspath(folder)]).encode())
    dithers = f"-d{args.label_dithers}" if args.label_dithers else ""
    return f"{args.codec}-r{args.resolution}-n{args.num_pairs}-s{args.seed}{dithers}-{digest.hexdigest()[:8]}"


def crop_sides(args: argparse.Namespace) -> list[int]:
    """The crop sides drawn for heights and widths: min, halfway (rounded to 8) and max resolution."""
    mid = (args.min_resolution + args.resolution) // 16 * 8
    return sorted({args.min_resolution, mid, args.resolution})


def build_pairs(
    args: argparse.Namespace,
    codec,
    quality_range: tuple[int, int],
    full_images: bool = False,
    folder: str | None = None,
):
    """Run the real codec at random integer qualities on random crops of the photographs in ``folder`` (default: the
    first --train_data_dir), or on whole photos (one quality each) when ``full_images``; cache and return a
    ``datasets.Dataset``."""
    from concurrent.futures import ThreadPoolExecutor

    import datasets

    root = args.pairs_dir or os.path.expanduser("~/.cache/rp-diffusers/proxy-pairs")
    folder = folder or args.train_data_dir[0]
    key = _pairs_key(args, quality_range, folder)
    if full_images:
        dithers = f"-d{args.label_dithers}" if args.label_dithers else ""
        key = f"{args.codec}-full{args.num_full_images}-s{args.seed}{dithers}-{key.rsplit('-', 1)[1]}"
    path = os.path.join(root, key)
    if os.path.isdir(path):
        logger.info(f"reusing cached pairs at {path}")
        return datasets.load_from_disk(path)
    rng = np.random.default_rng(args.seed + int(full_images))
    photos = [load_image(p) for p in list_images(folder)]
    jobs, sides = [], crop_sides(args)
    for i in range(args.num_full_images if full_images else args.num_pairs):
        photo = photos[i % len(photos)] if full_images or i < len(photos) else photos[rng.integers(len(photos))]
        if args.downscale_min < 1:
            factor = rng.uniform(args.downscale_min, 1.0)
            size = (max(8, round(photo.width * factor)), max(8, round(photo.height * factor)))
            photo = photo.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        side_w, side_h = photo.size if full_images else (min(int(rng.choice(sides)), n) for n in photo.size)
        left, top = rng.integers(photo.width - side_w + 1), rng.integers(photo.height - side_h + 1)
        crop = photo.crop((int(left), int(top), int(left + side_w), int(top + side_h)))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        jobs.append((crop, int(rng.integers(quality_range[0], quality_range[1] + 1)), i))

    def encode(job):
        crop, quality, index = job
        try:
            result = codec.run(crop, quality)
            decoded = result.reconstruction
            if args.label_dithers:  # the dither of pair i depends on (seed, full_images, i) only
                dither_rng = np.random.default_rng([args.seed, int(full_images), index])
                draws = [np.asarray(decoded, dtype=np.float64)]
                for _ in range(args.label_dithers):
                    draws.append(np.asarray(codec.run(dithered(crop, dither_rng), quality).reconstruction, np.float64))
                decoded = Image.fromarray(np.mean(draws, axis=0).round().clip(0, 255).astype(np.uint8))
        except CodecError as error:  # e.g. libvvenc's size limit near qp 0: skip the pair, say so
            logger.warning(f"skipping a {crop.size} crop at quality {quality}: {error}")
            return None
        return {"image": crop, "decoded": decoded, "quality": quality, "bits": 8 * len(result.data)}

    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.encode_workers)) as pool:
        rows = [row for row in tqdm(pool.map(encode, jobs), total=len(jobs), desc="real encodes") if row is not None]
    logger.info(f"built {len(rows)} pairs in {time.perf_counter() - start:.0f} s")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "decoded": datasets.Image(),
            "quality": datasets.Value("int32"),
            "bits": datasets.Value("int64"),
        }
    )
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.save_to_disk(path)
    return datasets.load_from_disk(path)


class PairsInMemory(torch.utils.data.Dataset):
    """The pairs as uint8 (3, h, w) tensors plus quality and bits: a few hundred MB at most, kept in memory."""

    def __init__(self, datasets: list):
        def to_tensor(image: Image.Image) -> torch.Tensor:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()

        self.images = [to_tensor(im) for dataset in datasets for im in dataset["image"]]
        self.decoded = [to_tensor(im) for dataset in datasets for im in dataset["decoded"]]
        self.quality = torch.tensor([q for dataset in datasets for q in dataset["quality"]], dtype=torch.float32)
        self.bits = torch.tensor([b for dataset in datasets for b in dataset["bits"]], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.decoded[index], self.quality[index], self.bits[index]


class SameShapeBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches whose crops share one shape (crops come in a few shapes), re-shuffled every epoch.

    Each pass over the data moves ``epoch`` on by one and draws its order from ``seed + epoch``; ``set_epoch(e)``
    (at the start of epoch e) makes the next pass the (e + 1)-th, so a resumed run draws the order of its epoch.
    """

    def __init__(self, shapes: list[tuple[int, int]], batch_size: int, seed: int):
        self.groups: dict[tuple[int, int], list[int]] = {}
        for index, shape in enumerate(shapes):
            self.groups.setdefault(shape, []).append(index)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed + epoch)
        batches = []
        for indices in self.groups.values():
            indices = rng.sample(indices, len(indices))
            batches += [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self):
        self.epoch += 1
        return iter(self._batches(self.epoch))

    def __len__(self) -> int:
        return len(self._batches(0))


def validation_set(args: argparse.Namespace) -> list[Image.Image]:
    if args.num_validation_images <= 0 or args.validation_data_dir is None:
        return []
    images = []
    for path in list_images(args.validation_data_dir)[: args.num_validation_images]:
        image = load_image(path)
        side = args.validation_resolution
        left, top = max(0, (image.width - side) // 2), max(0, (image.height - side) // 2)
        images.append(image.crop((left, top, min(image.width, left + side), min(image.height, top + side))))
    return images


def main(args: argparse.Namespace) -> Path | None:
    """Build or reuse the pairs, train, validate, save ``proxy_{codec}.safetensors`` + ``.json``; return the path."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(args)  # + logging, seed (python's random too: the windows), output_dir/args.json
    codec = get_codec(args.codec, **json.loads(args.codec_settings))
    default_range = training_quality_range(codec)
    quality_range = (
        default_range[0] if args.quality_min is None else args.quality_min,
        default_range[1] if args.quality_max is None else args.quality_max,
    )
    sets = [
        (full, folder)
        for folder in args.train_data_dir
        for full in ([False, True] if args.num_full_images else [False])
    ]
    if accelerator.is_main_process:
        for full, folder in sets:  # the other processes wait and then read the cache
            build_pairs(args, codec, quality_range, full, folder)
    accelerator.wait_for_everyone()
    if args.prepare_pairs_only:
        return None
    data = PairsInMemory([build_pairs(args, codec, quality_range, full, folder) for full, folder in sets])
    lo, hi = codec.quality_range

    if args.train_parts == "rate" and accelerator.num_processes > 1:
        raise ValueError(
            "--train_parts rate runs the rate head alone, outside the DDP wrapper: run it in one process "
            "(it takes minutes on a CPU)"
        )
    net, init = build_net(args, codec, data)
    for name, parameter in net.named_parameters():
        parameter.requires_grad_(args.train_parts == "all" or _part(name) == args.train_parts)
    trained = [parameter for parameter in net.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    scheduler = make_lr_schedule(args, optimizer, accelerator)
    shapes = [tuple(image.shape[-2:]) for image in data.images]
    batch_sampler = SameShapeBatchSampler(shapes, args.train_batch_size, args.seed)
    loader = torch.utils.data.DataLoader(data, batch_sampler=batch_sampler)
    net, optimizer, loader, scheduler = accelerator.prepare(net, optimizer, loader, scheduler)

    # Resume (exact: weights, optimiser, schedule, RNG states; the batch order is keyed by epoch)
    global_step, first_epoch, skip_batches = resume(accelerator, args, len(loader))
    if accelerator.is_main_process:
        accelerator.init_trackers("train_surrogate", config={k: str(v) for k, v in vars(args).items()})
    val_images = validation_set(args) if accelerator.is_main_process else []
    val_qualities = sorted(set(proxy_qualities(codec).values()))
    val_cache: dict = {}

    def validate(step: int) -> dict:
        surrogate = CodecProxySurrogate(
            accelerator.unwrap_model(net),
            args.codec,
            codec.quality_range,
            codec.default_quality,
            metadata=init["metadata"] if init else None,
        )
        report = {}
        for quality in val_qualities:
            report[str(quality)] = measure_fidelity(surrogate, codec, val_images, quality, cache=val_cache)
            logger.info(f"step {step} val q={quality}: {report[str(quality)]}")
        return report

    def validate_during_training(step: int) -> None:
        if val_images and step < args.max_train_steps:  # the last step is validated with the saved proxy
            validate(step)

    def start_epoch(epoch: int) -> None:
        batch_sampler.set_epoch(epoch)  # also under multi-GPU, where Accelerate wraps the sampler
        net.train()

    progress = tqdm(range(global_step, args.max_train_steps), disable=not accelerator.is_local_main_process)
    start, stopped = time.perf_counter(), False
    num_epochs = math.ceil(args.max_train_steps / len(loader))
    with stop_on_signals(accelerator):
        batches = training_batches(
            accelerator, args, data, loader, first_epoch, skip_batches, start_epoch, num_epochs=num_epochs
        )
        for _epoch, _index, (image, decoded, quality, bits) in batches:
            if global_step >= args.max_train_steps:
                break
            image, decoded = image.float() / 255.0, decoded.float() / 255.0
            q_norm = (quality - lo) / (hi - lo)
            top, left, height, width = window = _window(image.shape[-2:], args.distortion_crop)
            with accelerator.autocast():
                if args.train_parts == "rate":  # no U-Net pass
                    recon, bits_pred = None, accelerator.unwrap_model(net).bits(image, q_norm)
                else:
                    recon, bits_pred = net(image, q_norm, window)
            loss_r = (torch.log(bits_pred) - torch.log(bits.float())).square().mean()
            logs = {"log_bits_rmse": loss_r.detach().sqrt().item(), "lr": scheduler.get_last_lr()[0]}
            loss = args.rate_weight * loss_r if args.train_parts != "decode" else 0.0
            if recon is not None:
                target = decoded[..., top : top + height, left : left + width]
                mse = (recon.float() - target).square().flatten(1).mean(1)
                loss = loss + torch.log(mse + 1e-6).mean()
                logs["psnr"] = (-10 * torch.log10(mse.detach() + 1e-10)).mean().item()
            optimizer_step(accelerator, loss, net, optimizer, scheduler, args.max_grad_norm)
            global_step += 1
            # logs, checkpoint-{step} (rotated), validation; True on a signal (checkpoint saved, then stop)
            stopped = finish_update(accelerator, args, global_step, logs, progress, validate_during_training)
            if stopped or global_step >= args.max_train_steps:
                break
    train_seconds = time.perf_counter() - start
    if stopped:
        end_stopped_run(accelerator, global_step)
        return None

    accelerator.wait_for_everyone()
    path = output_dir / f"proxy_{args.codec}.safetensors"
    if accelerator.is_main_process:
        report = validate(global_step) if val_images else {}
        surrogate = CodecProxySurrogate(
            accelerator.unwrap_model(net).float(),
            args.codec,
            codec.quality_range,
            codec.default_quality,
            metadata=init["metadata"] if init else None,
        )
        training = {
            "command": "python training/train_surrogate.py " + shlex.join(args.command_line),
            "args": {k: v for k, v in vars(args).items() if k != "command_line"},
            "num_pairs": len(data),
            "quality_range": list(quality_range),
            "codec_settings": codec.settings,
            "codec_description": codec.description,
            "train_seconds": round(train_seconds, 1),
            "steps": global_step,
        }
        if init:
            training["init"] = init["record"]
        surrogate.save_pretrained(output_dir, training=training, fidelity={"val-set14": report})
    end_run(accelerator)
    return path


def _part(name: str) -> str:
    """Which part a parameter of ``CodecProxyNet`` belongs to: ``"rate"`` (the rate head) or ``"decode"``."""
    return "rate" if name.startswith(("rate_", "header", "stat_")) else "decode"


def build_net(args: argparse.Namespace, codec, data: PairsInMemory) -> tuple[CodecProxyNet, dict | None]:
    """The network to train: new, or started from ``--init_weights`` (see its help); plus the start's record.

    The record (``None`` from scratch) holds what the saved proxy inherits: its metadata (the rate calibration only
    when the rate head is neither new nor trained) and ``record``, the start's training command and fidelity.
    """
    channels = tuple(int(c) for c in args.channels.split(","))
    matrix = args.matrix or ("bt709" if codec.settings.get("matrix") == "bt709" else "bt601")
    net = CodecProxyNet(channels=channels, matrix=matrix, rate_features=args.rate_features)
    if args.init_weights is None:
        net.fit_rate_normalisation([image.float() / 255.0 for image in data.images[:512]])
        return net, None
    start = CodecProxySurrogate.from_pretrained(
        args.codec, None if args.init_weights == "shipped" else args.init_weights
    )
    if tuple(start.net.channels) != channels or start.net.matrix != matrix:
        raise ValueError(
            f"--init_weights {args.init_weights}: its U-Net is {start.net.channels} / {start.net.matrix}, this run "
            f"asks for {channels} / {matrix}; pass matching --channels and --matrix"
        )
    state = start.net.state_dict()
    same_rate_head = start.net.rate_features == args.rate_features and start.net.rate_hidden == net.rate_hidden
    if not same_rate_head:
        if args.train_parts == "decode":
            raise ValueError(
                f"--train_parts decode keeps the rate head of --init_weights, which has rate_features "
                f"{start.net.rate_features!r}; pass --rate_features {start.net.rate_features}"
            )
        state = {k: v for k, v in state.items() if _part(k) == "decode"}
    net.load_state_dict(state, strict=same_rate_head)
    if not same_rate_head:
        net.fit_rate_normalisation([image.float() / 255.0 for image in data.images[:512]])
    metadata = {}
    if same_rate_head and args.train_parts == "decode" and start.rate_calibration is not None:
        metadata["rate_calibration"] = start.rate_calibration
    record = {
        "weights": args.init_weights,
        "command": start.metadata.get("training", {}).get("command"),
        "fidelity": start.metadata.get("fidelity"),
        "init": start.metadata.get("training", {}).get("init"),
    }
    return net, {"metadata": metadata, "record": record}


def _window(size: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """A random (top, left, height, width) window of at most side x side inside ``size``."""
    height, width = min(side, size[0]), min(side, size[1])
    return random.randint(0, size[0] - height), random.randint(0, size[1] - width), height, width


if __name__ == "__main__":
    main(parse_args())
