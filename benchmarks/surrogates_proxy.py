"""Fidelity and speed of the learned codec proxies against the real codecs on Kodak.

For each codec with shipped proxy weights, at a low, the default and a high quality (``proxy_qualities``: the bottom
of the codec's R-D sweep, its default, halfway again above the default), over the 24 Kodak images:
PSNR between the proxy's output and the real decode (min and median, 8-bit), the identity baseline (PSNR between
the input and the real decode: what a proxy that changed nothing would score) and the mean gain over it, median
absolute relative error of the predicted file size in bits, Pearson correlation of log bits across images, and time
per megapixel of the proxy (forward; forward + backward) against the real codec's encode + decode, in the same run.
Per codec, it also scans every integer quality of the proxy's fitted range on each image and counts the images whose
predicted size falls somewhere as the quality rises (a size that falls with quality misleads the codec-slope rate
weighting), and checks the targets: mean gain >= +2.5 dB, median bits error <= 8 %, log-bits Pearson >= 0.98 at
all three levels.

Kodak is the TEST set: nothing here feeds back into training or tuning.

Example:
    python benchmarks/surrogates_proxy.py --codecs heic vvc --output benchmarks/results/surrogates_proxy.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rp_diffusers.codecs import get_codec
from rp_diffusers.surrogates.proxy import PROXY_CODECS, WEIGHTS_DIR, load_proxy, measure_fidelity, proxy_qualities
from rp_diffusers.utils.image import list_images, load_image

DEFAULT_KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", nargs="+", default=None, help="Proxies to measure (default: all shipped).")
    parser.add_argument("--images", type=str, default=str(DEFAULT_KODAK), help="Folder of test images (Kodak).")
    parser.add_argument("--max_images", type=int, default=24, help="Use at most this many images.")
    parser.add_argument("--weights_dir", type=str, default=None, help="Proxy weights folder (default: shipped).")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--output", type=str, default="benchmarks/results/surrogates_proxy.json", help="JSON path.")
    parser.add_argument(
        "--cache_dir",
        type=str,
        default=None,
        help="Keep the real codec's decodes, sizes and timings here (npz) and reuse them on the next run.",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="Also write each codec's rows into fidelity['kodak'] of its proxy_{codec}.json (a record, not tuning).",
    )
    return parser.parse_args(input_args)


def time_proxy(proxy, image: torch.Tensor, quality: float, backward: bool, repeats: int = 2) -> float:
    """Seconds per call (best of ``repeats``) of the proxy on one image, optionally with a backward pass."""
    best = float("inf")
    for _ in range(repeats):
        x = image.clone().requires_grad_(backward)
        start = time.perf_counter()
        if backward:
            out = proxy(x, quality)
            (out.reconstruction.mean() + out.bits.sum() * 1e-6).backward()
        else:
            with torch.no_grad():
                proxy(x, quality)
        best = min(best, time.perf_counter() - start)
    return best


TARGETS = {"psnr_gain_mean": 2.5, "bits_median_abs_rel_err": 0.08, "log_bits_pearson": 0.98}


@torch.no_grad()
def monotonicity(proxy, images: list) -> dict:
    """Predicted bits at every integer quality of the fitted range, per image: how many images' sizes fall somewhere
    as the quality rises, and the worst fall (d log bits per quality step; positive = never falls)."""
    lo, hi = (int(round(q)) for q in proxy.fitted_quality_range)
    qualities = torch.arange(lo, hi + 1, dtype=torch.float32)
    falling, worst = 0, float("inf")
    for image in images:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
        log_bits = torch.stack([torch.log(proxy.bits(x, float(q))[0]) for q in qualities])
        steps = log_bits[1:] - log_bits[:-1]
        falling += int(bool((steps < 0).any()))
        worst = min(worst, float(steps.min()))
    return {"qualities": [lo, hi], "images_falling": falling, "images": len(images), "worst_dlogbits": round(worst, 4)}


def targets_met(rows: list[dict]) -> dict:
    """Per codec: whether each target holds at every measured level, and whether all do."""
    met = {}
    for name in dict.fromkeys(r["codec"] for r in rows):
        mine = [r for r in rows if r["codec"] == name]
        checks = {
            "gain": all(r["psnr_gain_mean"] >= TARGETS["psnr_gain_mean"] for r in mine),
            "bits_error": all(r["bits_median_abs_rel_err"] <= TARGETS["bits_median_abs_rel_err"] for r in mine),
            "pearson": all(r["log_bits_pearson"] >= TARGETS["log_bits_pearson"] for r in mine),
        }
        met[name] = {**checks, "all": all(checks.values())}
    return met


def run_codec(codec, image, quality: int, cache_dir: str | None, stem: str) -> tuple[np.ndarray, int, float]:
    """(decoded RGB array, bits, encode + decode seconds) of the real codec, from ``cache_dir`` when stored there.

    The cache file is named by the codec, the quality, ``stem`` and a digest of the image's pixels and the codec's
    encoder settings, so one folder can serve several image sets and codec settings without a stale decode."""
    path = None
    if cache_dir:
        pixels = np.asarray(image.convert("RGB"))
        digest = hashlib.sha1(pixels.tobytes() + repr(pixels.shape).encode())
        digest.update(json.dumps(codec.encoder_settings(quality), sort_keys=True, default=str).encode())
        path = Path(cache_dir) / f"{codec.name}_q{quality}_{stem}_{digest.hexdigest()[:12]}.npz"
    if path is not None and path.is_file():
        stored = np.load(path)
        return stored["decoded"], int(stored["bits"]), float(stored["seconds"])
    result = codec.run(image, quality)
    decoded, bits = np.asarray(result.reconstruction.convert("RGB")), 8 * len(result.data)
    seconds = result.encode_seconds + result.decode_seconds
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, decoded=decoded, bits=bits, seconds=seconds)
    return decoded, bits, seconds


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    folder = Path(args.images)
    paths = list_images(folder)[: args.max_images]
    if not paths:
        raise FileNotFoundError(f"no images in {folder}: pass --images with the Kodak folder")
    images = [load_image(p) for p in paths]
    weights_dir = Path(args.weights_dir) if args.weights_dir else WEIGHTS_DIR
    names = args.codecs or [c for c in PROXY_CODECS if (weights_dir / f"proxy_{c}.safetensors").is_file()]
    rows = []
    for name in names:
        proxy = load_proxy(name, weights_dir)
        codec = get_codec(name)  # the codec as users run it (the proxy may have been fitted with threads=1)
        scan = monotonicity(proxy, images)
        print(
            f"{name}: predicted size falls with quality on {scan['images_falling']}/{scan['images']} images",
            flush=True,
        )
        for label, quality in proxy_qualities(codec).items():
            cache, codec_seconds = {}, 0.0
            for index, image in enumerate(images):
                decoded, bits, seconds = run_codec(codec, image, quality, args.cache_dir, f"{paths[index].stem}")
                codec_seconds += seconds
                cache[(index, quality)] = (decoded, bits)
            fidelity = measure_fidelity(proxy, codec, images, quality, cache=cache)
            identity = [
                10 * np.log10(255.0**2 / np.mean((np.asarray(im, np.float64) - cache[(i, quality)][0]) ** 2))
                for i, im in enumerate(images)
            ]
            megapixels = sum(im.width * im.height for im in images) / 1e6
            x = torch.from_numpy(np.array(images[0])).permute(2, 0, 1)[None].float() / 255.0
            mp0 = images[0].width * images[0].height / 1e6
            row = {
                "codec": name,
                "level": label,
                "quality": quality,
                **fidelity,
                "psnr_identity_median": round(float(np.median(identity)), 3),
                "real_bpp_median": round(
                    float(np.median([cache[(i, quality)][1] / (im.width * im.height) for i, im in enumerate(images)])),
                    4,
                ),
                "proxy_s_per_mp": round(time_proxy(proxy, x, float(quality), backward=False) / mp0, 4),
                "proxy_fwd_bwd_s_per_mp": round(time_proxy(proxy, x, float(quality), backward=True) / mp0, 4),
                "codec_s_per_mp": round(codec_seconds / megapixels, 4),
                "rate_features": proxy.net.rate_features,
                "threads": args.threads,  # a run on some codecs keeps the other codecs' rows, with their threads
                "monotonicity": scan,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    header = (
        f"{'codec':6} {'level':7} {'q':>3} {'PSNR min':>8} {'PSNR med':>8} {'ident.':>7} {'gain':>6} {'bits err':>8} "
        f"{'pearson':>7} {'s/MP fwd':>8} {'s/MP f+b':>8} {'codec s/MP':>10} {'ratio':>6}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['codec']:6} {r['level']:7} {r['quality']:>3} {r['psnr_min']:8.2f} {r['psnr_median']:8.2f} "
            f"{r['psnr_identity_median']:7.2f} {r['psnr_gain_mean']:+6.2f} {100 * r['bits_median_abs_rel_err']:7.1f}% "
            f"{r['log_bits_pearson']:7.3f} "
            f"{r['proxy_s_per_mp']:8.3f} {r['proxy_fwd_bwd_s_per_mp']:8.3f} {r['codec_s_per_mp']:10.3f} "
            f"{r['proxy_s_per_mp'] / r['codec_s_per_mp']:6.2f}"
        )
    report = {
        "benchmark": "surrogates_proxy",
        "images": f"{folder.name} ({len(images)} images)",
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__} (threads: each row's)",
        "columns": {
            "psnr_min/psnr_median": "dB, proxy output vs real decode (8-bit RGB)",
            "psnr_identity_median": "dB, input vs real decode (a proxy that returns its input)",
            "bits_median_abs_rel_err": "median |bits_proxy - bits_real| / bits_real over images",
            "psnr_gain_mean": "dB, mean over images of PSNR(proxy) - PSNR(identity): the gain over the identity",
            "log_bits_pearson": "Pearson r of log bits (proxy vs real) across images",
            "monotonicity": "images whose predicted size falls as the quality rises over the fitted range",
            "proxy_s_per_mp / proxy_fwd_bwd_s_per_mp / codec_s_per_mp": "seconds per megapixel; ratio = proxy/codec",
        },
        "targets": TARGETS,
        "results": rows,
    }
    if args.record:
        for name in names:
            path = weights_dir / f"proxy_{name}.json"
            metadata = json.loads(path.read_text())
            metadata.setdefault("fidelity", {})["kodak"] = {
                str(r["quality"]): {k: v for k, v in r.items() if k not in ("codec", "quality")}
                for r in rows
                if r["codec"] == name
            }
            path.write_text(json.dumps(metadata, indent=2) + "\n")
    output = Path(args.output)
    if output.is_file():  # a run on some codecs keeps the other codecs' rows
        kept = [r for r in json.loads(output.read_text()).get("results", []) if r.get("codec") not in names]
        report["results"] = kept + rows
    report["targets_met"] = targets_met([r for r in report["results"] if "psnr_gain_mean" in r])
    for name, met in report["targets_met"].items():
        print(f"{name}: targets met: {met}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(parse_args())
