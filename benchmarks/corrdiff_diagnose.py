"""Why a CorrDiff codec's PSNR can stay flat while its rate grows: its transforms against its quantiser.

For each checkpoint of a phase-1 run (``train_corrdiff.py --phase codec``) and each quality (gain ``g``), on
held-out photographs (val-set14 by default; never Kodak), this measures:

- ``bpp``: the model's rate estimate with hard rounding (what the range coder spends, to within its overhead);
- ``psnr-quantised``: ``g_s(round(g y) / g)``, the end-to-end decoder's output;
- ``psnr-transform``: ``g_s(y)`` with no quantisation at all, the best any rate can give these transforms;
- ``quantiser-loss-db``: the difference of the two.

When ``psnr-transform`` is barely above ``psnr-quantised`` at every gain, the transforms, not the quantiser, cap
the quality: more bits cannot help, and the R-D curve is flat. Then the cure is in training (steps, learning rate,
capacity), not in the rate term or the gains.

Example:
    python benchmarks/corrdiff_diagnose.py --run corrdiff --limit 6 --output benchmarks/results/corrdiff_diagnose.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from rp_diffusers.corrdiff import CorrDiffConfig, CorrDiffModel, load_model
from rp_diffusers.training_utils.checkpoints import checkpoint_folders
from rp_diffusers.utils.files import write_json
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "val-set14"


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="Output folder of train_corrdiff.py --phase codec.")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="Held-out photographs (not the test set).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N images.")
    parser.add_argument(
        "--steps", default=None, help="Comma-separated checkpoint steps and/or 'final' (default: all)."
    )
    parser.add_argument("--output", default=None, help="JSON output path.")
    args = parser.parse_args(input_args)
    if "kodak" in args.images.lower():
        parser.error("Kodak is the test set: diagnose on held-out photographs")
    return args


def load_images(folder: str, limit: int | None) -> list[torch.Tensor]:
    """Each photograph cropped to multiples of 64 (the model's padding multiple), as (1, 3, H, W) in [0, 1]."""
    images = []
    for path in list_images(folder)[:limit]:
        image = load_image(path)
        width, height = image.width // 64 * 64, image.height // 64 * 64
        if width and height:
            images.append(pil_to_tensor(image.crop((0, 0, width, height))))
    if not images:
        raise SystemExit(f"no photograph of at least 64x64 px in {folder}")
    return images


def model_at(run: Path, folder: Path, config: CorrDiffConfig) -> CorrDiffModel:
    model = CorrDiffModel(config)
    name = "model.safetensors" if folder.name.startswith("checkpoint-") else "codec.safetensors"
    state = load_file(str(folder / name))
    missing, _ = model.load_state_dict({k: v for k, v in state.items() if not k.startswith("unet.")}, strict=False)
    missing = [k for k in missing if not k.startswith("unet.")]
    if missing:
        raise SystemExit(f"{folder} holds no phase-1 codec ({len(missing)} weights missing, e.g. {missing[0]})")
    return model.eval()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b) ** 2)
    return float(10 * math.log10(1.0 / float(mse)))


@torch.no_grad()
def diagnose(model: CorrDiffModel, images: list[torch.Tensor]) -> list[dict]:
    rows = []
    for quality, gain in enumerate(model.config.gains):
        bits = pixels = 0.0
        quantised, transform = [], []
        for image in images:
            y = model.g_a(image)
            z_hat = torch.round(model.h_a(torch.abs(y)))
            scales = model.h_s(z_hat) * gain
            symbols = torch.round(y * gain)
            y_bits = -torch.log2(model.gaussian_conditional.likelihood(symbols, scales)).sum()
            z_bits = -torch.log2(model.entropy_bottleneck.likelihood(z_hat)).sum()
            bits += float(y_bits + z_bits)
            pixels += image.shape[-1] * image.shape[-2]
            quantised.append(_psnr(model.g_s(symbols / gain), image))
            transform.append(_psnr(model.g_s(y), image))
        q, t = sum(quantised) / len(quantised), sum(transform) / len(transform)
        rows.append({"quality": quality, "gain": gain, "bpp": bits / pixels, "psnr-quantised": q,
                     "psnr-transform": t, "quantiser-loss-db": t - q})  # fmt: skip
    return rows


def command_line() -> str:
    """This run's command, with folder names instead of this machine's paths."""
    words = sys.argv[1:]
    named = [Path(w).name if i and words[i - 1] in ("--run", "--images") else w for i, w in enumerate(words)]
    return " ".join(["python benchmarks/corrdiff_diagnose.py", *named])


def main(args: argparse.Namespace) -> dict:
    run = Path(args.run)
    if (run / "config.json").is_file():  # a finished run: its own config
        saved = {k: v for k, v in json.loads((run / "config.json").read_text()).items() if not k.startswith("_")}
        config = CorrDiffConfig.from_dict(saved)
    elif (saved := json.loads((run / "args.json").read_text())).get("pretrained_model_name_or_path"):
        config = load_model(saved["pretrained_model_name_or_path"]).config  # a run started from a model: its config
    else:  # a run still in progress: its flags
        config = CorrDiffConfig(
            channels=saved["channels"],
            latent_channels=saved["latent_channels"],
            hyper_channels=saved["hyper_channels"],
            gains=tuple(float(g) for g in saved["gains"].split(",")),
        )
    folders = checkpoint_folders(run) + ([run] if (run / "codec.safetensors").is_file() else [])
    if args.steps:
        wanted = {s if s == "final" else f"checkpoint-{s}" for s in args.steps.split(",")}
        folders = [f for f in folders if (f.name if f != run else "final") in wanted]
    images = load_images(args.images, args.limit)
    report = {"run": run.name, "images": Path(args.images).name, "num_images": len(images),
              "command": command_line(), "checkpoints": {}}  # fmt: skip
    print(
        f"{'checkpoint':>16} {'q':>2} {'gain':>6} {'bpp':>7} {'PSNR quantised':>15} {'PSNR transform':>15} {'gap':>6}"
    )
    for folder in folders:
        rows = diagnose(model_at(run, folder, config), images)
        report["checkpoints"][folder.name if folder != run else "final"] = rows
        for row in rows:
            print(f"{folder.name if folder != run else 'final':>16} {row['quality']:>2} {row['gain']:>6.3f} "
                  f"{row['bpp']:>7.3f} {row['psnr-quantised']:>15.2f} {row['psnr-transform']:>15.2f} "
                  f"{row['quantiser-loss-db']:>6.2f}")  # fmt: skip
    if args.output:
        write_json(args.output, report)
    return report


if __name__ == "__main__":
    main(parse_args())
