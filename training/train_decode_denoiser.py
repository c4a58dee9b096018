"""Train the small pixel-space diffusion denoiser that perceptual decoding ships with (``enhance --model default``).

The model is a fully convolutional diffusers ``UNet2DModel`` (no attention and no ``sample_size``), so it runs on
whole images of any size without tiling. It is trained with the EDM objective of Karras et al. 2022 ("Elucidating
the Design Space of Diffusion-Based Generative Models"): the preconditioning of diffusers' ``EDMEulerScheduler``
(``c_skip``, ``c_out``, ``c_in``, ``c_noise = log(sigma) / 4``), the loss weight ``(sigma^2 + sigma_data^2) /
(sigma sigma_data)^2`` and a log-normal noise level. Every noise level of the scheduler's range
[0.002, 80] is trained. The log-normal is a mixture that puts most of the mass where perceptual decoding of
codec output works (sigma 0.01-0.5 on pixels in [-1, 1]): ``--p_mean`` / ``--p_std`` for the
low-noise part and EDM's own (-1.2, 1.2) for the rest.

Data: random crops of the lossless training photographs (``train-clean``) and of ``train-sunhays80``, at full size
and at half size (a Lanczos-downscaled copy of each photograph, which is cleaner and closer to the sharpness of
the test photographs), with random flips. Never Kodak (the test set) and never val-set14 (it is used only to
report the denoising PSNR during training and, later, to calibrate the noise levels).

On a GPU (``--device cuda``, the default when one is present) the photographs are held on the device and the
crops are cut there (the random draws stay numpy's, the same ones as on the CPU), the noise is drawn on the
device, ``--mixed_precision bf16`` runs the forward pass under ``torch.autocast`` (the loss is taken in float32;
weights, EMA and optimizer stay float32) and TF32 matmuls/convolutions are allowed. ``--anneal_to_max_minutes`` makes the cosine
learning-rate schedule end at ``--max_minutes`` instead of ``--max_steps``, for runs bounded by wall time.

The output folder is a ``PerceptualDecodePipeline`` (unet + EDM scheduler) that ``from_pretrained`` loads. The
weights are EMA weights, stored in float16 safetensors. ``train_log.json`` holds the loss and the validation
denoising PSNR per noise level.

This is a plain one-process torch loop, not ``rp_diffusers.training_utils.runner`` (the scaffold of the Accelerate
scripts): the photographs stay in memory (on a GPU, on the device, where the crops are cut), the weights it
saves are an EMA, and the schedule may follow wall time. It writes no resumable checkpoint: ``--save_steps``
saves the pipeline so far, and a stopped run starts again.

Example (about an hour on 2 CPU cores):
    python training/train_decode_denoiser.py --data ../shared/data/train-clean ../shared/data/train-sunhays80 \\
        --validation_data ../shared/data/val-set14 --output_dir denoiser --max_steps 8000

On a GPU, with data packed by ``training/pack_training_crops.py`` (see ``.gpu_carry/run_decode.sh``):
    python training/train_decode_denoiser.py --data pack/train-clean pack/train-sunhays80 --data_shares 0.6 0.4 \\
        --validation_data val-set14 --output_dir denoiser --mixed_precision bf16 --resolution 128 \\
        --train_batch_size 256 --max_steps 1000000 --max_minutes 7.5 --anneal_to_max_minutes
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import EDMEulerScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm.auto import tqdm

from rp_diffusers.utils.files import write_json
from rp_diffusers.utils.image import list_images, load_image

VALIDATION_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", required=True, help="folders of training photographs (not Kodak)")
    parser.add_argument("--validation_data", help="folder of held-out photographs for the denoising PSNR (val-set14)")
    parser.add_argument("--output_dir", required=True, help="where the PerceptualDecodePipeline folder is written")
    parser.add_argument("--block_out_channels", default="16,32,64,96,128", help="UNet widths, one per level")
    parser.add_argument("--layers_per_block", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=64, help="training crop side in pixels")
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--max_steps", type=int, default=8000)
    parser.add_argument("--max_minutes", type=float, default=None, help="stop (and save) after this wall time")
    parser.add_argument("--learning_rate", type=float, default=4e-4)
    parser.add_argument("--lr_warmup_steps", type=int, default=200)
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--p_mean", type=float, default=-2.5, help="mean of log(sigma), low-noise component")
    parser.add_argument("--p_std", type=float, default=1.2, help="std of log(sigma), low-noise component")
    parser.add_argument(
        "--edm_fraction", type=float, default=0.25, help="share of noise levels from EDM's (-1.2, 1.2)"
    )
    parser.add_argument("--sigma_data", type=float, default=0.5)
    parser.add_argument(
        "--half_size", action=argparse.BooleanOptionalAction, default=True, help="add half-size copies"
    )
    parser.add_argument(
        "--data_shares",
        type=float,
        nargs="+",
        default=None,
        help="share of the crops drawn from each --data folder (default: in proportion to area, as within a folder)",
    )
    parser.add_argument("--save_steps", type=int, default=2000, help="write the pipeline folder every N steps")
    parser.add_argument("--validation_steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--mixed_precision",
        choices=("no", "bf16"),
        default="no",
        help="bf16: torch.autocast for the forward pass (loss, weights, EMA and optimizer stay float32)",
    )
    parser.add_argument(
        "--anneal_to_max_minutes",
        action="store_true",
        help="end the cosine learning-rate schedule at --max_minutes (or --max_steps, whichever comes first)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(input_args)
    if args.data_shares is not None and (len(args.data_shares) != len(args.data) or min(args.data_shares) <= 0):
        parser.error("--data_shares needs one positive share per --data folder")
    if args.anneal_to_max_minutes and args.max_minutes is None:
        parser.error("--anneal_to_max_minutes needs --max_minutes")
    args.block_out_channels = tuple(int(c) for c in args.block_out_channels.split(","))
    multiple = 2 ** (len(args.block_out_channels) - 1)
    if args.resolution % multiple:
        parser.error(f"--resolution must be a multiple of {multiple} for {len(args.block_out_channels)} levels")
    for folder in args.data + ([args.validation_data] if args.validation_data else []):
        if "kodak" in Path(folder).resolve().name.lower():
            parser.error("Kodak is the test set: never train or validate on it")
    return args


def load_photographs(folders: list[str], half_size: bool) -> list[np.ndarray]:
    """Every photograph of ``folders`` as an (H, W, 3) uint8 array, plus a Lanczos half-size copy of each."""
    arrays = []
    for folder in folders:
        for path in list_images(folder):
            image = load_image(path)
            arrays.append(np.asarray(image))
            if half_size:
                half = image.resize((image.width // 2, image.height // 2), Image.LANCZOS)
                arrays.append(np.asarray(half))
    if not arrays:
        raise ValueError(f"no images found in {folders}")
    return arrays


class CropSampler:
    """Random crops (with flips) from in-memory photographs, drawn in proportion to each photograph's area.

    ``groups`` (the index of each photograph's folder) and ``shares`` fix the share of the crops that each folder
    gets; within a folder the draw is still in proportion to area. With a non-CPU ``device`` the photographs are
    copied there once (uint8, end to end in one flat tensor) and each batch is one gather from the same numpy draws
    (the same crops and flips as on the CPU), so the CPU does not hold up the GPU.
    """

    def __init__(
        self,
        arrays: list[np.ndarray],
        size: int,
        seed: int,
        device: str | torch.device = "cpu",
        groups: list[int] | None = None,
        shares: list[float] | None = None,
    ) -> None:
        keep = [i for i, a in enumerate(arrays) if min(a.shape[:2]) >= size]
        self.arrays = [arrays[i] for i in keep]
        areas = np.array([a.shape[0] * a.shape[1] for a in self.arrays], dtype=np.float64)
        if shares is not None:
            kept_groups = np.array([groups[i] for i in keep])
            for group, share in enumerate(shares):
                in_group = kept_groups == group
                if not in_group.any():
                    raise ValueError(f"no photograph of at least {size} px in data folder {group}")
                areas[in_group] *= share / areas[in_group].sum()
        self.weights = areas / areas.sum()
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.device = torch.device(device)
        self.flat = None
        if self.device.type != "cpu":
            self.flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in self.arrays])).to(self.device)
            self.offsets = np.cumsum([0] + [a.size for a in self.arrays[:-1]])

    def batch(self, count: int) -> torch.Tensor:
        if self.flat is not None:
            return self._device_batch(count)
        crops = []
        for index in self.rng.choice(len(self.arrays), size=count, p=self.weights):
            array = self.arrays[index]
            top = self.rng.integers(0, array.shape[0] - self.size + 1)
            left = self.rng.integers(0, array.shape[1] - self.size + 1)
            crop = array[top : top + self.size, left : left + self.size]
            if self.rng.random() < 0.5:
                crop = crop[:, ::-1]
            crops.append(np.ascontiguousarray(crop))
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
        return batch / 127.5 - 1  # the model's [-1, 1] pixel space

    def _device_batch(self, count: int) -> torch.Tensor:
        """``batch`` on the device: the same draws (photograph, top, left, flip) in the same order, one gather."""
        starts, strides, flips = [], [], []
        for index in self.rng.choice(len(self.arrays), size=count, p=self.weights):
            array = self.arrays[index]
            top = self.rng.integers(0, array.shape[0] - self.size + 1)
            left = self.rng.integers(0, array.shape[1] - self.size + 1)
            starts.append(self.offsets[index] + (top * array.shape[1] + left) * 3)
            strides.append(array.shape[1] * 3)
            flips.append(self.rng.random() < 0.5)
        shape = (count, 1, 1, 1)
        start = torch.tensor(np.array(starts, dtype=np.int64)).view(shape).to(self.device, non_blocking=True)
        stride = torch.tensor(np.array(strides, dtype=np.int64)).view(shape).to(self.device, non_blocking=True)
        flip = torch.tensor(np.array(flips)).view(shape).to(self.device, non_blocking=True)
        steps = torch.arange(self.size, device=self.device)
        rows, columns = steps.view(1, -1, 1, 1), steps.view(1, 1, -1, 1)
        columns = torch.where(flip, self.size - 1 - columns, columns)
        channels = torch.arange(3, device=self.device).view(1, 1, 1, 3)
        batch = self.flat[start + rows * stride + columns * 3 + channels]  # (count, size, size, 3) uint8
        return batch.permute(0, 3, 1, 2).float() / 127.5 - 1


def build_unet(args: argparse.Namespace) -> UNet2DModel:
    levels = len(args.block_out_channels)
    return UNet2DModel(
        sample_size=None,  # fully convolutional: PerceptualDecodePipeline runs it on whole images
        in_channels=3,
        out_channels=3,
        block_out_channels=args.block_out_channels,
        layers_per_block=args.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        add_attention=False,
        norm_num_groups=8,
    )


def denoise(unet: UNet2DModel, scheduler: EDMEulerScheduler, noisy: torch.Tensor, sigma: torch.Tensor):
    """EDM x0 estimate for per-sample ``sigma`` of shape (B, 1, 1, 1), with the scheduler's own preconditioning."""
    model_input = scheduler.precondition_inputs(noisy, sigma)
    c_noise = scheduler.precondition_noise(sigma).reshape(-1)
    output = unet(model_input, c_noise, return_dict=False)[0]
    return scheduler.precondition_outputs(noisy, output, sigma)


def sample_sigmas(count: int, args: argparse.Namespace, generator: torch.Generator) -> torch.Tensor:
    """Per-sample noise levels (B, 1, 1, 1) on the generator's device, from the log-normal mixture."""
    normal = torch.randn(count, generator=generator, device=generator.device)
    edm = torch.rand(count, generator=generator, device=generator.device) < args.edm_fraction
    log_sigma = torch.where(edm, -1.2 + 1.2 * normal, args.p_mean + args.p_std * normal)
    return log_sigma.exp().clamp(0.002, 80.0).view(-1, 1, 1, 1)


def validation_crops(folder: str, size: int = 256) -> torch.Tensor:
    """Centre crops of the validation photographs, Lanczos-resized to ``size`` (CPU, [-1, 1])."""
    crops = []
    for path in list_images(folder):
        image = load_image(path)
        side = min(size, image.width, image.height) // 16 * 16
        left, top = (image.width - side) // 2, (image.height - side) // 2
        crop = np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS))
        crops.append(torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(crops)


@torch.no_grad()
def validate(unet, scheduler, crops: torch.Tensor) -> dict[str, float]:
    """Denoising PSNR (dB, pixels in [0, 1]) of the held-out crops at each of ``VALIDATION_SIGMAS``."""
    generator = torch.Generator().manual_seed(1234)  # the same noise on every device
    result = {}
    for sigma in VALIDATION_SIGMAS:
        noise = torch.randn(crops.shape, generator=generator).to(crops.device)
        level = torch.full((crops.shape[0], 1, 1, 1), sigma, device=crops.device)
        estimate = denoise(unet, scheduler, crops + sigma * noise, level).clamp(-1, 1)
        mse = ((estimate - crops) / 2).pow(2).flatten(1).mean(1)
        result[f"psnr@{sigma}"] = float((-10 * mse.log10()).mean())
        result[f"noisy_psnr@{sigma}"] = float(-10 * math.log10((sigma / 2) ** 2))
    return result


def save_pipeline(unet: UNet2DModel, ema: EMAModel, scheduler, output_dir: Path, log: dict) -> None:
    from rp_diffusers.pipelines.perceptual_decode import PerceptualDecodePipeline

    export = build_unet(argparse.Namespace(**log["args"]))  # on the CPU, whatever the training device
    ema.copy_to(export.parameters())
    export.to(torch.float16)
    pipe = PerceptualDecodePipeline(unet=export, scheduler=scheduler)
    pipe.save_pretrained(output_dir, safe_serialization=True)
    write_json(output_dir / "train_log.json", log)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crop shapes
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    per_folder = [load_photographs([folder], args.half_size) for folder in args.data]
    arrays = [array for folder_arrays in per_folder for array in folder_arrays]
    groups = [index for index, folder_arrays in enumerate(per_folder) for _ in folder_arrays]
    sampler = CropSampler(arrays, args.resolution, args.seed, device, groups, args.data_shares)
    crops = validation_crops(args.validation_data).to(device) if args.validation_data else None
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=args.sigma_data)
    unet = build_unet(args).to(device)
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, foreach=device.type != "cpu")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=0.0)
    start = time.perf_counter()  # reset when training starts; the schedule reads it

    def schedule_fraction(step: int) -> float:
        """How far along the cosine schedule is: by steps, or by wall time with ``--anneal_to_max_minutes``."""
        fraction = min(step, args.max_steps) / args.max_steps
        if args.anneal_to_max_minutes:
            fraction = max(fraction, min(1.0, (time.perf_counter() - start) / 60 / args.max_minutes))
        return fraction

    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / args.lr_warmup_steps) * 0.5 * (1 + math.cos(math.pi * schedule_fraction(step)))
        ),
    )
    generator = torch.Generator().manual_seed(args.seed)
    # noise levels and noise on the training device (on the CPU: the same generator and draws as ever)
    noise_generator = generator if device.type == "cpu" else torch.Generator(device).manual_seed(args.seed)
    log = {
        "args": {  # folder names, not this machine's paths
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
            "data": [Path(folder).name for folder in args.data],
            "validation_data": Path(args.validation_data).name if args.validation_data else None,
            "output_dir": Path(args.output_dir).name,
        },
        "parameters": sum(p.numel() for p in unet.parameters()),
        "training_photographs": len(arrays),
        "loss": [],
        "validation": [],
    }
    tqdm.write(
        f"{len(arrays)} training photographs ({len(sampler.arrays)} of at least {args.resolution} px), "
        f"{log['parameters']:,} parameters, device {device}, mixed precision {args.mixed_precision}"
    )
    start, running = time.perf_counter(), []
    # a log file, not a terminal: a progress line every 30 s instead of every 0.1 s
    progress = tqdm(range(args.max_steps), desc="denoiser", mininterval=0.1 if sys.stderr.isatty() else 30)
    for step in progress:
        clean = sampler.batch(args.train_batch_size)
        sigma = sample_sigmas(clean.shape[0], args, noise_generator)
        noisy = clean + sigma * torch.randn(clean.shape, generator=noise_generator, device=device)
        weight = (sigma**2 + args.sigma_data**2) / (sigma * args.sigma_data) ** 2
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16"):
            estimate = denoise(unet, scheduler, noisy, sigma)
        loss = (weight * (estimate.float() - clean) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        running.append(loss.detach())  # read every 50 steps: no device sync per step
        done = step + 1
        minutes = (time.perf_counter() - start) / 60
        out_of_time = args.max_minutes is not None and minutes >= args.max_minutes
        if done % 50 == 0:
            mean_loss = float(np.mean([float(value) for value in running]))
            log["loss"].append({"step": done, "loss": mean_loss})
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            running = []
        if crops is not None and (done % args.validation_steps == 0 or done == args.max_steps or out_of_time):
            backup = [p.detach().clone() for p in unet.parameters()]
            ema.copy_to(unet.parameters())
            row = {"step": done, "minutes": round(minutes, 2), **validate(unet, scheduler, crops)}
            for parameter, saved in zip(unet.parameters(), backup):
                parameter.data.copy_(saved)
            log["validation"].append(row)
            tqdm.write(json.dumps(row))
        if done % args.save_steps == 0 or done == args.max_steps or out_of_time:
            log["steps"], log["minutes"] = done, round(minutes, 2)
            save_pipeline(unet, ema, scheduler, output_dir, log)
        if out_of_time:
            break


if __name__ == "__main__":
    main(parse_args())
