"""Stage-2 adapters of the compact model trained through a learned proxy alone vs with the real codec in the loop.

The compact default model's WebP adapters were trained through the WebP proxy (``training/compact_recipe.sh``) and
lose on held-out photographs, even in the metric they were trained on. This benchmark trains the same adapters from
the same base with the same flags, once more with ``--surrogate_forward real`` (``CodecInTheLoop``: the real encoder
and decoder forward, the proxy's gradient backward), and validates both sets the way the shipped model is validated
(``rp_diffusers.evaluation.validate.validate_adapters``: real files, real decoders, val-set14, BD-rate against the
codec alone in every metric; the verdict's headline metrics are the perceptual ones the adapter was not trained on).

Adapters already trained in ``--work`` are reused; with ``--reuse_shipped``, the model's own adapters stand for the
proxy-trained ones (they were trained by the recipe with these flags). Kodak is not used. Example (about 45 min on
2 CPU cores when both ways are trained; 15 min with the shipped adapters and trained loop adapters reused):

    python benchmarks/adapters_in_the_loop.py --model rp_diffusers/assets/default_model --codec webp \\
        --train_data_dir ../shared/data/train-sunhays80 --images ../shared/data/val-set14 --reuse_shipped \\
        --work adapters-loop --output benchmarks/results/adapters_in_the_loop.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rp_diffusers.utils.files import write_json

REPO = Path(__file__).resolve().parents[1]
FORWARDS = ("surrogate", "real")
# The stage-2 flags of training/compact_recipe.sh (its defaults), so that only --surrogate_forward differs.
RECIPE_FLAGS = [
    "--quality_range", "10", "80", "--rate_weighting", "codec_slope", "--surrogate_rounding", "soft",
    "--perceptual_loss", "ms_ssim", "--lambda_perceptual", "1.0", "--lambda_mse", "1.0", "--rank", "4",
    "--lora_target_modules", "to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out",
    "--resolution", "192", "--train_batch_size", "2", "--learning_rate", "1e-3", "--lr_scheduler", "constant",
    "--report_to", "none", "--checkpointing_steps", "100000", "--random_flip",
]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="A gathered RPPreprocessPipeline folder (its base is used).")
    parser.add_argument("--codec", default="webp", help="A codec with a learned proxy (webp, avif, heic, hevc, vvc).")
    parser.add_argument("--lambdas", nargs="+", default=["1", "2"], help="Rate weights (x the codec's own slope).")
    parser.add_argument("--train_data_dir", required=True, help="Training photographs (the recipe's TRAIN).")
    parser.add_argument("--images", required=True, help="Held-out validation photographs (val-set14; never Kodak).")
    parser.add_argument("--steps", type=int, default=600, help="Training steps per adapter (the recipe's RP_STEPS).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forwards", nargs="+", default=list(FORWARDS), choices=FORWARDS)
    parser.add_argument(
        "--reuse_shipped", action="store_true", help="The model's adapters are the proxy-trained ones."
    )
    parser.add_argument("--work", default="adapters-loop", help="Working folder (adapters found there are reused).")
    parser.add_argument("--workers", type=int, default=None, help="Codec worker processes of the validation.")
    parser.add_argument("--output", default="benchmarks/results/adapters_in_the_loop.json")
    return parser.parse_args(argv)


def extract_base(model: Path, base: Path) -> Path:
    """A copy of the gathered ``model`` without its adapters and codec steps: the stage-1 base the recipe trains on."""
    if (base / "model_index.json").is_file():
        return base
    shutil.copytree(model, base, ignore=shutil.ignore_patterns("adapters", "*.png", "README.md"))
    index = json.loads((base / "model_index.json").read_text())
    index.pop("codec_steps", None)
    (base / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return base


def _link_training_folder(photos: Path, work: Path) -> Path:
    """``datasets``' imagefolder takes a folder named ``train-*`` for a split pattern: link the photos elsewhere."""
    folder = work / "train" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(photos.iterdir()):
        link = folder / path.name
        if path.is_file() and not link.exists():
            link.symlink_to(path.resolve())
    return folder.parent


def train_adapter(args, base: Path, train: Path, forward: str, lam: str, out: Path) -> dict:
    """Train (or reuse) one adapter; returns how it was obtained."""
    name = f"rp_{args.codec}_lambda_{lam}"
    if (out / "pytorch_lora_weights.safetensors").is_file():
        record = json.loads((out / "rp_adapter.json").read_text())
        if record.get("surrogate_forward", "surrogate") != forward or record.get("adapter_name") != name:
            raise SystemExit(
                f"{out} holds {record.get('adapter_name')!r} trained with the {record.get('surrogate_forward', 'surrogate')} "
                f"forward, not {name!r} with the {forward} forward; remove it or use another --work"
            )
        return {"adapter": name, "source": "reused", "folder": str(out), "record": record}
    shipped = Path(args.model) / "adapters" / name
    if forward == "surrogate" and args.reuse_shipped and (shipped / "pytorch_lora_weights.safetensors").is_file():
        record = json.loads((shipped / "rp_adapter.json").read_text())
        if record.get("surrogate_forward", "surrogate") != "surrogate":
            raise SystemExit(f"{shipped} was not trained through the surrogate alone; drop --reuse_shipped")
        shutil.copytree(shipped, out)
        return {"adapter": name, "source": f"shipped ({shipped})", "folder": str(out), "record": record}
    command = [
        sys.executable, str(REPO / "training" / "finetune_rp.py"), "--pretrained_model_name_or_path", str(base),
        "--train_data_dir", str(train), "--codec", args.codec, "--surrogate", args.codec, "--lambda_rate", lam,
        *RECIPE_FLAGS, "--max_train_steps", str(args.steps), "--seed", str(args.seed), "--adapter_name", name,
        "--surrogate_forward", forward, "--output_dir", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    record = json.loads((out / "rp_adapter.json").read_text())
    return {"adapter": name, "source": "trained", "folder": str(out), "seconds": time.perf_counter() - start,
            "command": " ".join(command[1:]), "record": record}  # fmt: skip


def main(args: argparse.Namespace) -> dict:
    from rp_diffusers.evaluation.validate import validate_adapters

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = extract_base(Path(args.model), work / "base")
    train = _link_training_folder(Path(args.train_data_dir), work)
    report = {
        "benchmark": "adapters_in_the_loop",
        "description": __doc__.split("\n")[0],
        "settings": {k: v for k, v in vars(args).items()},
        "recipe_flags": RECIPE_FLAGS,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "forwards": {},
    }
    for forward in args.forwards:
        adapters = [
            train_adapter(args, base, train, forward, lam, work / forward / f"rp_{args.codec}_lambda_{lam}")
            for lam in args.lambdas
        ]
        model = work / f"model_{forward}"
        subprocess.run(
            [sys.executable, str(REPO / "training" / "gather_adapters.py"), "--base", str(base), "--adapters",
             *[a["folder"] for a in adapters], "--output", str(model), "--overwrite"],
            check=True,
        )  # fmt: skip
        verdicts = validate_adapters(model, args.images, codecs=[args.codec], workers=args.workers)
        report["forwards"][forward] = {"adapters": adapters, "verdicts": verdicts}
    print_table(report)
    write_json(args.output, report)
    return report


def print_table(report: dict) -> None:
    metrics = ("ms-ssim-rgb", "ssimulacra2", "butteraugli-3norm", "vmaf-neg", "psnr-rgb")
    print("\n| adapter | trained with | " + " | ".join(metrics) + " | held-out verdict |")
    print("| --- | --- |" + " --- |" * (len(metrics) + 1))
    for forward, result in report["forwards"].items():
        for name, verdict in result["verdicts"].items():
            if name.startswith("base/") and forward != next(iter(report["forwards"])):
                continue  # the base is the same model in each validation
            label = "(no adapter)" if name.startswith("base/") else f"{forward} forward"
            cells = " | ".join(f"{verdict['bd_rate'].get(m, float('nan')):+.2f}%" for m in metrics)
            print(f"| {name} | {label} | {cells} | {'wins' if verdict['wins'] else 'loses'} |")


if __name__ == "__main__":
    main(parse_args())
