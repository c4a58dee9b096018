#!/usr/bin/env python
"""Train CorrDiff (arXiv:2404.04916) in two phases: the codec + end-to-end decoder, then the diffusion decoder.

Phase ``codec``: analysis/synthesis transforms, scale hyperprior and the end-to-end decoder with the rate-distortion
loss ``bpp + lambda_q * 255**2 * MSE(x_e2e, x)``, the quality q drawn per sample and ``lambda_q = lmbda * gain_q**2``
(one variable-rate model; the gain sets the quantisation step). At the end the integer coding tables are built
(``model.update()``) and the model is saved (``CorrDiffCodec.from_pretrained`` reads it).
Phase ``diffusion``: the codec is frozen; the conditional UNet learns the x0 estimate of noisy images given x_e2e
(decoded with real rounding at a random quality). The output folder holds the whole model.

    accelerate launch training/train_corrdiff.py --phase codec --train_data_dir photos/ --resolution 256 \
      --train_batch_size 8 --learning_rate 1e-4 --lmbda 0.013 --max_train_steps 200000 --output_dir corrdiff-codec
    accelerate launch training/train_corrdiff.py --phase diffusion --pretrained_model_name_or_path corrdiff-codec \
      --train_data_dir photos/ --resolution 256 --train_batch_size 8 --max_train_steps 200000 --output_dir corrdiff

Checkpoints (``checkpoint-{step}/``, ``--checkpoints_total_limit`` keeps the last N) are those of every training
script (``rp_diffusers.training_utils.runner``): the trained network as ``model.safetensors`` plus Accelerate's
optimiser, gradient-scaler and RNG states. ``--resume_from_checkpoint latest`` continues exactly where the run
stopped: crops depend on (seed, epoch, image index), the epoch order on (seed, epoch), and the noise/qualities of
batch k on (seed, rank, k). SIGTERM / SIGUSR1 save a checkpoint and stop the run (without the final model).
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from rp_diffusers.corrdiff import CorrDiffConfig, CorrDiffModel, load_model, save_model
from rp_diffusers.corrdiff.diffusion import build_scheduler, build_unet, diffusion_loss, sampling_timesteps
from rp_diffusers.training_utils import (
    RandomCropImageDataset,
    add_training_args,
    build_optimizer,
    collate_images,
    end_run,
    end_stopped_run,
    finish_update,
    load_image_dataset,
    make_accelerator,
    optimizer_step,
    resume,
    step_generator,
    stop_on_signals,
)
from rp_diffusers.utils.image import list_images, load_image

logger = get_logger(__name__, log_level="INFO")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train CorrDiff: phase 'codec', then phase 'diffusion'.")
    parser.add_argument("--phase", choices=["codec", "diffusion"], required=True, help="Which networks to train.")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="Phase diffusion: the phase-1 output (folder or Hub id). Phase codec: optional init (its weights change, "
        "so the new model refuses the files of this one and of the models it was made from).",
    )
    # model (phase codec)
    parser.add_argument("--channels", type=int, default=128, help="Width N of the transforms.")
    parser.add_argument("--latent_channels", type=int, default=192, help="Channels M of y.")
    parser.add_argument("--hyper_channels", type=int, default=128, help="Channels of z.")
    parser.add_argument(
        "--gains",
        type=str,
        default="0.5,0.7071,1.0,1.4142,2.0",
        help="Comma-separated quantisation gains, one per quality (ascending).",
    )
    parser.add_argument("--lmbda", type=float, default=0.013, help="Rate-distortion lambda at gain 1.")
    # model (phase diffusion)
    parser.add_argument(
        "--unet_block_out_channels",
        type=str,
        default=None,
        help="UNet widths per level (default 64,128,128). These three --unet_* flags shape a new UNet; when the "
        "--pretrained_model_name_or_path model already has one, its training continues and they must match it.",
    )
    parser.add_argument("--unet_layers_per_block", type=int, default=None, help="ResNet blocks per UNet level (1).")
    parser.add_argument(
        "--unet_patch_size",
        type=int,
        default=None,
        help="Pixel-unshuffle factor of the UNet input (default 2: the UNet runs at half resolution; 4: a quarter).",
    )
    parser.add_argument("--num_inference_steps", type=int, default=4, help="DDIM steps stored in the config.")
    parser.add_argument(
        "--timestep_sampling",
        choices=["uniform", "inference"],
        default="uniform",
        help="Phase diffusion: 'uniform' draws every training timestep of the 1000; 'inference' only the "
        "--num_inference_steps DDIM timesteps the decoder is sampled at (4 at strength 1: 999, 749, 499, 249), "
        "for a few-step decoder on a small budget (it is then tied to that number of steps).",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="Phase diffusion: the decoder's strength, stored in the config (default 1: from pure noise at t = 999; "
        "0.1 with 4 steps starts from x_e2e noised to t = 99 and runs t = 99, 74, 49, 24). Training draws its "
        "timesteps from that range only.",
    )
    parser.add_argument(
        "--sigma_data",
        type=float,
        default=None,
        help="Phase diffusion, a new UNet: EDM preconditioning of the residual x0 - x_e2e with this standard deviation "
        "(in [-1, 1] units; 0.1 suits a codec at about 29 dB; stored in the config). Without it the UNet returns the "
        "residual directly and must learn to pass x_t through, which is slow. A model's existing UNet keeps its own.",
    )
    parser.add_argument("--block_size", type=int, default=64, help="Correction block side stored in the config.")
    parser.add_argument("--distortion_weight", type=float, default=0.5, help="Default distortion weight (config).")
    # data
    add_training_args(parser, "data", defaults={"resolution": 256}, helps={"cache_dir": "Where datasets are cached."})
    # optimisation
    add_training_args(
        parser,
        "training",
        defaults={"train_batch_size": 8, "max_train_steps": 1000},
        helps={
            "mixed_precision": "Autocast precision (entropy models stay float32).",
        },
    )
    parser.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Also stop (and save) after this many minutes of training (small machines).",
    )
    parser.add_argument(
        "--lr_decay_start",
        type=float,
        default=0.9,
        help="Fraction of max_train_steps after which the learning rate is divided by 10.",
    )
    # outputs
    add_training_args(parser, "outputs", defaults={"report_to": "none"}, required=["output_dir"])
    parser.add_argument("--logging_steps", type=int, default=20, help="Print the running losses every N steps.")
    parser.add_argument(
        "--cache_images",
        action="store_true",
        help="Decode the --train_data_dir photographs once and keep them in memory (a few hundred photographs: "
        "about 3.5 MB each; saves a PNG decode per crop, close to half of a small model's step on a CPU).",
    )
    args = parser.parse_args(input_args)
    if args.resolution % CorrDiffConfig.pad_multiple:
        parser.error(f"--resolution must be a multiple of {CorrDiffConfig.pad_multiple}")
    if args.strength is not None and not 0.0 < args.strength <= 1.0:
        parser.error(f"--strength must lie in (0, 1], got {args.strength}")
    if args.phase == "diffusion" and args.pretrained_model_name_or_path is None:
        parser.error("--phase diffusion needs --pretrained_model_name_or_path (the phase-1 output)")
    if args.dataset_name is None and args.train_data_dir is None:
        parser.error("pass --train_data_dir (a folder of images) or --dataset_name")
    return args


def image_entries(args) -> tuple[list | object, str | None]:
    """A folder's images, listed here (datasets' imagefolder would read a file named ``train_*`` as a split
    marker and drop the others), or a Hub dataset through ``load_image_dataset``."""
    if args.train_data_dir is None:
        return load_image_dataset(args.dataset_name, None, args.image_column, args.dataset_config_name,
                                  args.cache_dir, max_samples=args.max_train_samples)  # fmt: skip
    files = list_images(args.train_data_dir, recursive=True)[: args.max_train_samples]
    if args.cache_images:
        return [load_image(p) for p in tqdm(files, desc="decoding photographs", leave=False)], None
    return [{"path": str(p)} for p in files], None


def build_model(args) -> tuple[CorrDiffModel, list[torch.nn.Parameter]]:
    """The model of this phase and the parameters it trains."""
    if args.phase == "codec":
        if args.pretrained_model_name_or_path:
            model = load_model(args.pretrained_model_name_or_path)
            model.config.lmbda = args.lmbda
            # the weights change, so the decoders this model was made from no longer decode with them: their
            # files must be refused by the new model, not decoded with its weights
            model.config.earlier_decoders = ()
        else:
            config = CorrDiffConfig(
                channels=args.channels, latent_channels=args.latent_channels, hyper_channels=args.hyper_channels,
                gains=tuple(float(g) for g in args.gains.split(",")), lmbda=args.lmbda,
                num_inference_steps=args.num_inference_steps, block_size=args.block_size,
                distortion_weight=args.distortion_weight,
            )  # fmt: skip
            model = CorrDiffModel(config)
        model.unet = None
        return model, [p for p in model.parameters()]
    model = load_model(args.pretrained_model_name_or_path)
    model.requires_grad_(False)
    model.config.num_inference_steps, model.config.block_size = args.num_inference_steps, args.block_size
    model.config.distortion_weight = args.distortion_weight
    if args.strength is not None:
        model.config.strength = args.strength
    asked = {
        "block_out_channels": None if args.unet_block_out_channels is None
        else tuple(int(c) for c in args.unet_block_out_channels.split(",")),
        "layers_per_block": args.unet_layers_per_block,
        "patch_size": args.unet_patch_size,
    }  # fmt: skip
    if model.unet is None:
        defaults = {"block_out_channels": (64, 128, 128), "layers_per_block": 1, "patch_size": 2}
        model.unet = build_unet(**{k: defaults[k] if v is None else v for k, v in asked.items()})
        model.config.sigma_data = args.sigma_data
    elif args.sigma_data is not None and args.sigma_data != model.config.sigma_data:
        raise ValueError(
            f"{args.pretrained_model_name_or_path} already has a UNet trained with sigma_data "
            f"{model.config.sigma_data}; drop --sigma_data (it continues with its own)"
        )
    else:  # continue the model's own UNet: a --unet_* flag that reshapes it is an error, not silently ignored
        config = model.unet.config
        has = {
            "block_out_channels": tuple(config.block_out_channels),
            "layers_per_block": config.layers_per_block,
            "patch_size": math.isqrt(config.in_channels // 6),
        }
        wrong = {k: (v, has[k]) for k, v in asked.items() if v is not None and v != has[k]}
        if wrong:
            raise ValueError(
                f"{args.pretrained_model_name_or_path} already has a UNet, whose training continues; the --unet_* "
                f"flags differ from it ({', '.join(f'{k}: asked {a}, has {h}' for k, (a, h) in wrong.items())}): drop "
                "them, or start from a phase-1 model without a UNet"
            )
    model.unet.requires_grad_(True)
    return model, list(model.unet.parameters())


# --------------------------------------------------------------------------- data and schedule


class _EpochCrops(torch.utils.data.Dataset):
    """Items keyed by (epoch, index), so that worker processes draw the crop of the right epoch."""

    def __init__(self, crops: RandomCropImageDataset):
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        self.crops.set_epoch(epoch)
        return self.crops[index]


def crop_keys(count: int, args, accelerator, epoch: int, skip: int, per_epoch: int):
    """Endless (epoch, index) stream from batch ``skip`` of ``epoch`` on; epoch e's order is drawn from (seed, e)."""
    while True:
        order = torch.randperm(count, generator=step_generator(args.seed, epoch)).tolist()
        order = order[accelerator.process_index :: accelerator.num_processes][: per_epoch * args.train_batch_size]
        for index in order[skip * args.train_batch_size :]:
            yield epoch, index
        epoch, skip = epoch + 1, 0


def learning_rate(args, step: int) -> float:
    warmup = min(1.0, (step + 1) / args.lr_warmup_steps) if args.lr_warmup_steps else 1.0
    decay = 0.1 if step >= args.lr_decay_start * args.max_train_steps else 1.0
    return args.learning_rate * warmup * decay


# --------------------------------------------------------------------------- losses of the two phases


def codec_loss(
    model, pixels: torch.Tensor, generator: torch.Generator, lmbda: float, config=None
) -> tuple[torch.Tensor, dict]:
    """Rate-distortion loss of a batch with one random quality per sample. ``model`` may be the DDP/FSDP-wrapped
    module, which hides the model's ``config``: pass it then."""
    b, _, h, w = pixels.shape
    cfg = model.config if config is None else config
    quality = torch.randint(0, len(cfg.gains), (b,), generator=generator)
    noise_y = torch.rand((b, cfg.latent_channels, h // 16, w // 16), generator=generator) - 0.5
    noise_z = torch.rand((b, cfg.hyper_channels, h // 64, w // 64), generator=generator) - 0.5
    out = model(pixels, quality.to(pixels.device), (noise_y.to(pixels.device), noise_z.to(pixels.device)))
    mse = F.mse_loss(out["x_e2e"].float(), pixels, reduction="none").flatten(1).mean(1)
    gains = torch.tensor(cfg.gains, device=pixels.device)[quality.to(pixels.device)]
    loss = (out["bpp"] + lmbda * gains**2 * 255**2 * mse).mean()
    return loss, {"bpp": float(out["bpp"].detach().mean()), "psnr": float((-10 * torch.log10(mse.detach())).mean())}


@torch.no_grad()
def hard_e2e(model: CorrDiffModel, pixels: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """x_e2e as the decoder sees it (real rounding of g * y), in [0, 1]."""
    gain = model.gain(quality)
    return model.g_s(torch.round(model.g_a(pixels) * gain) / gain).clamp(0, 1)


def main(args):
    accelerator = make_accelerator(args)  # + logging, the seed of the initial weights, output_dir/args.json

    # 1. Model and the parameters of this phase
    model, params = build_model(args)
    trained = model if args.phase == "codec" else model.unet
    model.to(accelerator.device)
    optimizer = build_optimizer(params, args.learning_rate)
    trained_prepared, optimizer = accelerator.prepare(trained, optimizer)
    if args.phase == "codec":
        model_call = trained_prepared
    else:
        model.unet = trained_prepared
    scheduler = build_scheduler()
    train_timesteps = None  # phase diffusion: the timesteps its decoder visits, or all of them up to its start
    if args.phase == "diffusion":
        visited = sampling_timesteps(args.num_inference_steps, model.config.strength)
        train_timesteps = visited if args.timestep_sampling == "inference" else int(visited[0])

    # 2. Data: crops depend on (seed, epoch, index); the order of epoch e on (seed, e)
    dataset, image_column = image_entries(args)
    train_dataset = RandomCropImageDataset(
        dataset, image_column, args.resolution, args.seed, random_flip=args.random_flip
    )
    per_epoch = len(train_dataset) // (args.train_batch_size * accelerator.num_processes)
    if per_epoch == 0:
        raise ValueError(f"{len(train_dataset)} images are fewer than one batch; lower --train_batch_size")

    # 3. Resume (weights, optimiser and RNG states; the crops and draws of each batch are keyed by its step)
    global_step, first_epoch, skip_batches = resume(accelerator, args, per_epoch)

    # 4. Loop
    if accelerator.is_main_process and accelerator.trackers == [] and args.report_to != "none":
        accelerator.init_trackers(f"corrdiff-{args.phase}", config={k: str(v) for k, v in vars(args).items()})
    trained_prepared.train()
    running: dict[str, float] = {}
    keys = crop_keys(len(train_dataset), args, accelerator, first_epoch, skip_batches, per_epoch)
    loader = torch.utils.data.DataLoader(_EpochCrops(train_dataset), batch_size=args.train_batch_size, sampler=keys,
                                         collate_fn=collate_images, num_workers=args.dataloader_num_workers)  # fmt: skip
    start_time, stopped = time.monotonic(), False
    with stop_on_signals(accelerator):
        for batch in loader:  # one pass over an endless stream of crops: ends at max_train_steps or the time limit
            if global_step >= args.max_train_steps:
                break
            pixels = batch["pixel_values"].to(accelerator.device)
            generator = step_generator(args.seed, accelerator.process_index, global_step)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, global_step)
            with accelerator.autocast():
                if args.phase == "codec":
                    loss, logs = codec_loss(model_call, pixels, generator, args.lmbda, config=model.config)
                else:
                    quality = torch.randint(0, len(model.config.gains), (pixels.shape[0],), generator=generator)
                    x_e2e = hard_e2e(model, pixels, quality.to(pixels.device))
                    loss = diffusion_loss(
                        model.unet, scheduler, pixels, x_e2e, generator, train_timesteps, model.config.sigma_data
                    )
                    logs = {"psnr_e2e": float(-10 * torch.log10(F.mse_loss(x_e2e, pixels)))}
            optimizer_step(accelerator, loss, trained_prepared, optimizer, None, args.max_grad_norm)
            global_step += 1
            for key, value in {"loss": float(loss.detach()), **logs, "steps": 1}.items():
                running[key] = running.get(key, 0.0) + value
            if global_step % args.logging_steps == 0:
                count = running.pop("steps")
                means = {k: v / count for k, v in running.items()}
                logger.info(f"step {global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
                accelerator.log(means, step=global_step)
                running = {}
            # checkpoint-{step} (rotated to --checkpoints_total_limit); True on a signal (checkpoint saved, then stop)
            stopped = finish_update(accelerator, args, global_step)
            if stopped:
                break
            if args.max_train_minutes and time.monotonic() - start_time > 60 * args.max_train_minutes:
                logger.info(f"stopping at step {global_step}: --max_train_minutes {args.max_train_minutes} reached")
                break

    if stopped:
        end_stopped_run(accelerator, global_step)
        return

    # 5. Integer tables and the final model
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.phase == "diffusion":
            model.unet = accelerator.unwrap_model(trained_prepared)
        model = model.float().cpu()
        if args.phase == "codec":
            model.update()  # phase 2 keeps the tables it loaded: the codec is frozen
        save_model(model, args.output_dir)
        logger.info(f"saved the CorrDiff model to {args.output_dir} (table hash {model.table_hash().hex()})")
    end_run(accelerator)


if __name__ == "__main__":
    main(parse_args())
