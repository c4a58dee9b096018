"""How much of a codec's decode does its input predict? Reference points for the learned proxies' decode target.

The learned proxies' decode target (mean PSNR gain over the identity >= +2.5 dB at the low, default and high
quality) asks a proxy to predict a large share of the codec's error from its input. This benchmark measures, on real
files and real decoders, the mean over images of PSNR(reference, real decode) - PSNR(input, real decode) for:

- ``proxy``: the shipped proxy (what ``surrogates_proxy.py`` reports);
- ``codec_at_top``: the same codec's real decode at its top quality (the highest that encodes): its colour pipeline
  (YCbCr matrix, 4:2:0 filters, rounding, in-loop filters at a fine quantiser) without the coarse quantisation;
- ``codec_at_top_dct``: that, plus the best uniform quantisation of the luma's block-DCT AC coefficients (block,
  step and dead zone chosen per codec and quality on the same images from ``BLOCKS``, ``STEPS`` and ``DEAD_ZONES``,
  or no quantisation): a codec's block transform applied to the image itself, without the encoder's prediction and
  decisions. ``dct_oracle_choice.on_grid_edge`` says when the choice sits at an end of the grid;
- ``quality_below`` / ``quality_above``: the same encoder at the nearest lower (coarser) / higher quality whose
  decode differs (at most ``MAX_NEIGHBOUR_STEPS`` away; some qualities share a quantiser), and
  ``quality_neighbours_mean``, the average of those two decodes;
- ``dithered``: the same encoder at the same quality on the input plus an independent random -1/0/+1 (8-bit) dither,
  mean over ``--dithers`` draws; and ``dithered_mean``, the average of those draws' decodes. The dither changes the
  input by far less than the codec does (about 50 dB PSNR). If the decodes of the draws and the un-dithered decode
  scatter independently, with one variance, around a mean decode, that mean (a smooth function of the input)
  scores ``dithered`` + 3.01 dB: ``dithered_limit``, an estimate, not a measurement. The same assumption predicts
  that the average of two draws gains 1.25 dB over one draw, which the results can check.

The averaged references are not rounded to 8 bits; the others are decodes or rounded.

None of these is an upper bound on what a network could learn; they are scales for the target.

Example:
    python benchmarks/proxy_decode_structure.py --images ../shared/data/kodak \\
        --output benchmarks/results/proxy_decode_structure_kodak.json \\
        --plot benchmarks/results/proxy_decode_structure_kodak.png
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rp_diffusers.codecs import CodecError, get_codec
from rp_diffusers.surrogates.proxy import PROXY_CODECS, load_proxy, proxy_qualities
from rp_diffusers.surrogates.proxy_fidelity import dithered
from rp_diffusers.surrogates.proxy_model import dct_matrix, ycbcr_matrix
from rp_diffusers.utils.image import list_images, load_image
from rp_diffusers.utils.testing import load_script

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = HERE.parent.parent / "shared" / "data" / "val-set14"
TARGET_GAIN_DB = 2.5  # the learned-proxies issue's decode target
STEPS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)  # luma DCT steps, 8-bit units (orthonormal DCT)
DEAD_ZONES = (0.0, 0.25, 0.5)  # rounding offset removed before rounding: 0 = round to nearest
BLOCKS = (4, 8, 16)
MAX_NEIGHBOUR_STEPS = 5
PLOTTED = ("proxy", "codec_at_top_dct", "quality_above", "quality_neighbours_mean", "dithered_mean", "dithered_limit")
DITHER_LIMIT_DB = 10 * math.log10(2.0)  # one draw vs the mean of infinitely many (independent scatter)
REFERENCES = (
    "proxy",
    "codec_at_top",
    "codec_at_top_dct",
    "quality_below",
    "quality_above",
    "quality_neighbours_mean",
    "dithered",
    "dithered_mean",
)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", nargs="+", default=list(PROXY_CODECS), help="Codecs (shipped proxies).")
    parser.add_argument("--images", type=str, default=str(DEFAULT_IMAGES), help="Folder of photographs.")
    parser.add_argument("--max_images", type=int, default=24, help="Use at most this many images.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--dithers", type=int, default=2, help="Dithered encodes per image and quality (0: none).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the dither.")
    parser.add_argument(
        "--cache_dir",
        type=str,
        default=None,
        help="Keep the real decodes here (npz, named by codec, quality, image name and a digest of the pixels and "
        "the encoder settings) and reuse them.",
    )
    parser.add_argument("--output", type=str, default="benchmarks/results/proxy_decode_structure.json")
    parser.add_argument("--plot", type=str, default=None, help="Bar chart of the gains (.png); '' or unset: none.")
    return parser.parse_args(input_args)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


EXACT_MSE = 1e-3  # floor of a reference's MSE (8-bit units squared): an exact reference scores a finite, large gain


def gain_db(reference_mse: float, identity_mse: float) -> float:
    """PSNR(reference) - PSNR(input), both against the real decode (``identity_mse`` > 0)."""
    return 10 * math.log10(identity_mse / max(reference_mse, EXACT_MSE))


def dct_coefficients(luma: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) luma -> (its (H/b, W/b, b, b) orthonormal DCT coefficients over the whole blocks, the DCT basis)."""
    height, width = (luma.shape[0] // block) * block, (luma.shape[1] // block) * block
    basis = dct_matrix(block).double().numpy()
    blocks = luma[:height, :width].reshape(height // block, block, width // block, block).transpose(0, 2, 1, 3)
    return basis @ blocks @ basis.T, basis


def quantise(coefficients: np.ndarray, step: float, dead_zone: float) -> np.ndarray:
    """Uniform quantisation of the AC coefficients (the DC is kept: an intra predictor removes most of it)."""
    quantised = np.sign(coefficients) * np.floor(np.abs(coefficients) / step + 0.5 - dead_zone).clip(0) * step
    quantised[..., 0, 0] = coefficients[..., 0, 0]
    return quantised


def luma_replaced(rgb: np.ndarray, luma: np.ndarray, new_luma: np.ndarray) -> np.ndarray:
    """RGB with its luma moved from ``luma`` to ``new_luma`` over the top-left whole blocks, clipped and rounded.

    In every YCbCr matrix here Y adds equally to R, G and B, so changing Y alone adds the change to each channel."""
    height, width = new_luma.shape
    out = rgb.astype(np.float64).copy()
    out[:height, :width] += (new_luma - luma[:height, :width])[..., None]
    return out.clip(0, 255).round()


def inverse_dct(coefficients: np.ndarray, basis: np.ndarray) -> np.ndarray:
    rows, cols, block, _ = coefficients.shape
    return (basis.T @ coefficients @ basis).transpose(0, 2, 1, 3).reshape(rows * block, cols * block)


def quantise_luma(rgb: np.ndarray, matrix: str, block: int, step: float, dead_zone: float) -> np.ndarray:
    """(H, W, 3) RGB in [0, 255] -> the same with its luma's block-DCT AC coefficients uniformly quantised.

    The DC coefficient is kept (an intra predictor removes most of it), the blocks are aligned to the top-left corner
    and the partial blocks at the right and bottom edges are left as they are. Returns float RGB clipped and rounded
    to 8 bits.
    """
    luma = rgb.astype(np.float64) @ ycbcr_matrix(matrix).double().numpy()[0]
    coefficients, basis = dct_coefficients(luma, block)
    return luma_replaced(rgb, luma, inverse_dct(quantise(coefficients, step, dead_zone), basis))


def top_quality(codec, image, cache_dir: str | None, stem: str, run_codec) -> tuple[int, np.ndarray]:
    """The highest quality (from the top of the range down) at which the codec encodes ``image``."""
    lo, hi = codec.quality_range
    for quality in range(hi, lo - 1, -1):
        try:
            decoded, _, _ = run_codec(codec, image, quality, cache_dir, stem)
            return quality, decoded
        except CodecError:  # e.g. libvvenc's 8 bpp limit near qp 0
            continue
    raise CodecError(f"{codec.name} encoded {stem} at no quality")


@torch.no_grad()
def proxy_decode(proxy, image, quality: int) -> np.ndarray:
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
    out = proxy(x, float(quality)).reconstruction[0].clamp(0, 1)
    return (out.permute(1, 2, 0).numpy() * 255.0).round()


def neighbour(codec, image, stem: str, quality: int, decoded: np.ndarray, direction: int, cache_dir, run_codec):
    """``(distance, decode)`` of the nearest quality in ``direction`` (-1 or +1) whose decode differs from
    ``decoded``, at most ``MAX_NEIGHBOUR_STEPS`` away; ``None`` where there is none (or the codec fails there)."""
    lo, hi = codec.quality_range
    for distance in range(1, MAX_NEIGHBOUR_STEPS + 1):
        other_quality = quality + direction * distance
        if not lo <= other_quality <= hi:
            return None
        try:
            other, _, _ = run_codec(codec, image, other_quality, cache_dir, stem)
        except CodecError:
            return None
        if not np.array_equal(other, decoded):
            return distance, other
    return None


def oracle_gains(top: np.ndarray, decoded: np.ndarray, matrix: str, identity: float) -> dict:
    """Gain of every (block, step, dead zone) luma quantisation of ``top`` against ``decoded``."""
    luma = top.astype(np.float64) @ ycbcr_matrix(matrix).double().numpy()[0]
    gains = {}
    for block in BLOCKS:
        coefficients, basis = dct_coefficients(luma, block)
        for step in STEPS:
            for dead_zone in DEAD_ZONES:
                reference = luma_replaced(top, luma, inverse_dct(quantise(coefficients, step, dead_zone), basis))
                gains[(block, step, dead_zone)] = gain_db(mse(reference, decoded), identity)
    return gains


def measure_codec(
    name: str, images: list, stems: list[str], cache_dir: str | None, run_codec, dithers: int = 2, seed: int = 0
) -> list[dict]:
    proxy, codec = load_proxy(name), get_codec(name)
    matrix = proxy.net.matrix
    tops = [top_quality(codec, im, cache_dir, stem, run_codec) for im, stem in zip(images, stems)]
    rows = []
    for level, quality in proxy_qualities(codec).items():
        gains = {reference: [] for reference in REFERENCES}
        distances = {"quality_below": [], "quality_above": []}
        oracle = {}  # (block, step, dead zone) -> gains per image
        exact = 0  # images the codec decodes exactly (nothing to predict): left out
        for index, (image, stem, (_, top)) in enumerate(
            tqdm(list(zip(images, stems, tops)), desc=f"{name} {level}", leave=False)
        ):
            decoded, _, _ = run_codec(codec, image, quality, cache_dir, stem)
            identity = mse(np.array(image), decoded)
            if identity == 0:
                exact += 1
                continue

            found = {"proxy": proxy_decode(proxy, image, quality), "codec_at_top": top}
            for reference, direction in (("quality_below", -1), ("quality_above", 1)):
                hit = neighbour(codec, image, stem, quality, decoded, direction, cache_dir, run_codec)
                if hit is not None:
                    distances[reference].append(hit[0])
                    found[reference] = hit[1]
            if "quality_below" in found and "quality_above" in found:
                pair = np.stack([found["quality_below"], found["quality_above"]]).astype(np.float64)
                found["quality_neighbours_mean"] = pair.mean(axis=0)
            if dithers:
                rng = np.random.default_rng([seed, index, quality])
                draws = [
                    run_codec(codec, dithered(image, rng), quality, cache_dir, f"{stem}-dither{seed}-{k}")[0]
                    for k in range(dithers)
                ]
                gains["dithered"].append(float(np.mean([gain_db(mse(d, decoded), identity) for d in draws])))
                found["dithered_mean"] = np.stack(draws).astype(np.float64).mean(axis=0)
            for reference, value in found.items():
                gains[reference].append(gain_db(mse(value, decoded), identity))
            for key, value in oracle_gains(top, decoded, matrix, identity).items():
                oracle.setdefault(key, []).append(value)
        oracle[(None, None, None)] = gains["codec_at_top"]  # quantising nothing is one of the oracle's choices
        best = max(oracle, key=lambda key: np.mean(oracle[key]))
        gains["codec_at_top_dct"] = oracle[best]
        block, step, dead_zone = best
        row = {
            "codec": name,
            "level": level,
            "quality": quality,
            "top_qualities": sorted({q for q, _ in tops}),
            "dct_oracle_choice": {
                "block": block,
                "step": step,
                "dead_zone": dead_zone,
                "on_grid_edge": step is not None
                and (step in (STEPS[0], STEPS[-1]) or dead_zone == DEAD_ZONES[-1] or block == BLOCKS[-1]),
            },
            "images": len(images),
            "images_decoded_exactly": exact,
            "n": {reference: len(values) for reference, values in gains.items()},
            "neighbour_distance_median": {k: float(np.median(v)) if v else None for k, v in distances.items()},
            "dithers": dithers,
        }
        for reference, values in gains.items():
            row[f"gain_{reference}"] = round(float(np.mean(values)), 3) if values else None
        row["gain_dithered_limit"] = (
            None if row["gain_dithered"] is None else round(row["gain_dithered"] + DITHER_LIMIT_DB, 3)
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def plot_gains(report: dict, path: str | Path) -> Path:
    """One panel per quality level: the mean gain of ``PLOTTED`` references per codec, with the target as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, levels = report["rows"], list(dict.fromkeys(r["level"] for r in report["rows"]))
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 4.0), sharey=True)
    axes = np.atleast_1d(axes)
    width = 0.8 / len(PLOTTED)
    for ax, level in zip(axes, levels):
        for k, reference in enumerate(PLOTTED):
            estimate = reference == "dithered_limit"
            values = []
            for codec in codecs:
                row = next(r for r in rows if r["codec"] == codec and r["level"] == level)
                values.append(np.nan if row[f"gain_{reference}"] is None else row[f"gain_{reference}"])
            ax.bar(
                np.arange(len(codecs)) + (k - (len(PLOTTED) - 1) / 2) * width,
                values,
                width,
                label=f"{reference} (estimate)" if estimate else reference,
                hatch="///" if estimate else None,
                fill=not estimate,
                edgecolor="tab:brown" if estimate else None,
            )
        ax.axhline(report["target_gain_db"], color="black", linestyle="--", linewidth=1, label="target")
        ax.set_xticks(np.arange(len(codecs)), codecs)
        ax.set_title(f"{level} quality")
    axes[0].set_ylabel("gain over the identity (dB)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"What predicts a codec's decode ({report['images']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    run_codec = load_script(HERE / "surrogates_proxy.py", "surrogates_proxy_bench").run_codec
    folder = Path(args.images)
    paths = list_images(folder)[: args.max_images]
    if not paths:
        raise FileNotFoundError(f"no images in {folder}: pass --images with a folder of photographs")
    images, stems = [load_image(p) for p in paths], [p.stem for p in paths]
    rows = [
        row
        for name in args.codecs
        for row in measure_codec(name, images, stems, args.cache_dir, run_codec, args.dithers, args.seed)
    ]
    print(
        f"\nmean PSNR gain over the identity, dB (target {TARGET_GAIN_DB:+.1f}), {folder.name}, {len(images)} images"
    )
    print(f"{'codec':6} {'level':8} {'q':>3} " + " ".join(f"{r:>16}" for r in REFERENCES))
    for r in rows:
        cells = " ".join(
            f"{'-':>16}" if r[f"gain_{ref}"] is None else f"{r[f'gain_{ref}']:+16.2f}" for ref in REFERENCES
        )
        print(f"{r['codec']:6} {r['level']:8} {r['quality']:>3} {cells}")
    report = {
        "benchmark": "proxy_decode_structure",
        "images": f"{folder.name} ({len(images)} images)",
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads",
        "target_gain_db": TARGET_GAIN_DB,
        "references": {
            "proxy": "the shipped proxy's decode",
            "codec_at_top": "the real decode at the codec's top quality that encodes (top_qualities)",
            "codec_at_top_dct": "codec_at_top with its luma's block-DCT AC coefficients uniformly quantised; block, "
            f"step and dead zone chosen per row on these images (oracle) from blocks {list(BLOCKS)}, steps "
            f"{list(STEPS)}, dead zones {list(DEAD_ZONES)}, or none",
            "quality_below / quality_above": "the real decode at the nearest lower / higher quality whose decode "
            f"differs (at most {MAX_NEIGHBOUR_STEPS} steps away; images with none are left out of the mean: see n)",
            "quality_neighbours_mean": "the average of those two decodes, on the images that have both",
            "dithered": f"the real decode, same quality, of the input plus a random -1/0/+1 dither; mean over "
            f"{args.dithers} draws per image",
            "dithered_mean": "the average of those draws' decodes",
            "dithered_limit": "dithered + 3.01 dB: the mean of infinitely many draws, if the draws' decodes and the "
            "un-dithered decode scatter independently, with one variance, around it (an estimate; the same assumption "
            "predicts avg of 2 draws = one draw + 1.25 dB)",
        },
        "columns": {"gain_*": "dB, mean over images of PSNR(reference, real decode) - PSNR(input, real decode)"},
        "rows": rows,
    }
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_gains(report, args.plot)
    return report


if __name__ == "__main__":
    main(parse_args())
