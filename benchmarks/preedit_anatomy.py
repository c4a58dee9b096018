"""What per-image pre-editing does to JPEG's coefficients: the measurement behind the JPEG dead zone.

Per-image pre-editing (``rp_diffusers.training_utils.preedit``: Adam on a crop's own pixels through DiffJPEG against
the rate-perception objective, the ceiling of ``benchmarks/preedit_ceiling.py`` and the targets of
``training/distill_preedits.py``) is run on random training crops at random qualities. Each crop and its edit are
then analysed with libjpeg's own integer forward path (DiffJPEG's exact half) at the crop's quality: which quantised
luma and chroma coefficients the edit changed, in which direction, and how far the edit moved each luma coefficient
(in quantisation steps, towards zero = shrink) as a function of where it sat. Training photographs only.

    python benchmarks/preedit_anatomy.py --num_crops 60 --output benchmarks/results/preedit_anatomy.json
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rp_diffusers.losses import RatePerceptionLoss, perceptual_distance
from rp_diffusers.surrogates import get_surrogate
from rp_diffusers.training_utils.preedit import pre_edit
from rp_diffusers.utils.image import list_images, load_image

BANDS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.0), (1.0, 1.5), (1.5, 3.0), (3.0, float("inf")))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images",
        nargs="+",
        default=["../shared/data/train-clean", "../shared/data/train-sunhays80"],
        help="Training photographs (folders).",
    )
    parser.add_argument("--num_crops", type=int, default=60, help="Random crops to edit.")
    parser.add_argument("--resolution", type=int, default=128, help="Crop side (a multiple of 16).")
    parser.add_argument("--quality_range", type=int, nargs=2, default=[15, 80], help="Qualities drawn per crop.")
    parser.add_argument("--perceptual_loss", default="ssimulacra2+3*vif", help="The edits' perceptual distance.")
    parser.add_argument("--steps", type=int, default=30, help="Adam steps per edit.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam step on pixels in [0, 1].")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the crops and qualities.")
    parser.add_argument("--output", default="benchmarks/results/preedit_anatomy.json", help="The JSON written.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    paths = list_images(args.images)
    if not paths:
        raise SystemExit(f"no images in {args.images}")
    jpeg = get_surrogate("jpeg")
    loss_fn = RatePerceptionLoss(
        jpeg,
        perceptual_distance(args.perceptual_loss),
        lambda_rate=1.0,
        lambda_perceptual=1.0,
        lambda_mse=1.0,
        rate_weighting="codec_slope",
    )
    size = args.resolution
    counts = {k: 0.0 for k in ("luma", "luma_changed", "luma_to_zero", "luma_from_zero", "chroma", "chroma_changed")}
    counts.update(chroma_to_zero=0.0, chroma_from_zero=0.0)
    shrink = {band: [] for band in BANDS}
    bits_ratio = []
    bar = tqdm(total=args.num_crops, desc="pre-editing crops")
    while bar.n < args.num_crops:
        image = load_image(rng.choice(paths))
        if min(image.size) < size:
            continue
        left = rng.randint(0, (image.width - size) // 8) * 8
        top = rng.randint(0, (image.height - size) // 8) * 8
        crop = image.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        quality = rng.randint(*args.quality_range)
        edited, _ = pre_edit(loss_fn, x, quality, args.steps, args.learning_rate)
        q = torch.tensor([float(quality)])
        with torch.no_grad():
            before, after = jpeg.analyze(x, q), jpeg.analyze(edited, q)
            for plane, a, b in (("luma", before.luma_exact, after.luma_exact), ("chroma", before.chroma_exact, after.chroma_exact)):  # fmt: skip
                counts[plane] += a.numel()
                counts[f"{plane}_changed"] += float((a != b).sum())
                counts[f"{plane}_to_zero"] += float(((a != 0) & (b == 0)).sum())
                counts[f"{plane}_from_zero"] += float(((a == 0) & (b != 0)).sum())
            s, t = before.luma_scaled.flatten(), after.luma_scaled.flatten()
            towards_zero = -(t - s) * torch.sign(s)
            for band in BANDS:
                chosen = (s.abs() >= band[0]) & (s.abs() < band[1])
                shrink[band].append(towards_zero[chosen])
            bits = jpeg.exact_bits(torch.cat([x, edited]), torch.cat([q, q]))
            bits_ratio.append(float(bits[1] / bits[0]))
        bar.update()
    bar.close()

    bands = []
    for band, parts in shrink.items():
        values = torch.cat(parts)
        bands.append(
            {
                "abs_coefficient_in_steps": [band[0], band[1] if np.isfinite(band[1]) else None],
                "count": int(values.numel()),
                "mean_shrink_in_steps": float(values.mean()) if values.numel() else None,
            }
        )
    report = {
        "images": args.images,
        "settings": {k: v for k, v in vars(args).items() if k not in ("images", "output")},
        "share_of_luma_coefficients": {
            "changed": counts["luma_changed"] / counts["luma"],
            "nonzero_to_zero": counts["luma_to_zero"] / counts["luma"],
            "zero_to_nonzero": counts["luma_from_zero"] / counts["luma"],
        },
        "share_of_chroma_coefficients": {
            "changed": counts["chroma_changed"] / counts["chroma"],
            "nonzero_to_zero": counts["chroma_to_zero"] / counts["chroma"],
            "zero_to_nonzero": counts["chroma_from_zero"] / counts["chroma"],
        },
        "luma_shrink_by_band": bands,
        "exact_bits_ratio_edited_to_original": {
            "mean": float(np.mean(bits_ratio)),
            "median": float(np.median(bits_ratio)),
        },
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("images", "settings")}, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
