"""Stage 1 on a known answer: SiD convergence, SiD's per-sample noise levels, and CiD's task-weight trade-off.

The teacher is the exact denoiser of a 2-D Gaussian mixture (four modes at (+-1.5, +-1.5), std 0.3; see
``rp_diffusers.training_utils.sid_toy``); the student, fake score and update step are stage 1's
(``rp_diffusers.training_utils.sid``, as ``training/distill_cid.py``). Three tables:

1. ``generate``: N(0, I) -> mixture, energy distance to the mixture before and after, for several seeds, with one
   timestep per sample (SiD) and one per batch (the project's earlier behaviour).
2. ``restore``: noisy mixture samples (std 0.5 noise) -> mixture with CiD's consistency term, swept over its
   weight: distance to the mixture (on the manifold?), MSE to the input (consistent?) and the share of outputs
   nearest to the mode their input came from.
3. a figure of the student's outputs for a few task weights.

    python benchmarks/sid_toy.py --output benchmarks/results/sid_toy.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from rp_diffusers.training_utils.sid_toy import GaussianMixture, ToyConfig, distill_toy
from rp_diffusers.utils.files import write_json

TEACHER_ARGS = {"spread": 1.5, "std": 0.3}
CONFIG = ToyConfig(steps=1500, batch_size=512, learning_rate=5e-4, fake_learning_rate=2e-3)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="Seeds of the generate runs.")
    parser.add_argument("--task_weights", default="0,0.1,0.3,1,3,10", help="lambda_task of the restore sweep.")
    parser.add_argument("--steps", type=int, default=CONFIG.steps)
    parser.add_argument("--output", default="benchmarks/results/sid_toy.json")
    return parser.parse_args(argv)


def row(result, seconds: float, **extra) -> dict:
    return {
        **extra,
        "distance_initial": result.distance_initial,
        "distance_final": result.distance_final,
        "fall": result.distance_initial / result.distance_final,
        "distance_floor": result.distance_floor,
        "input_mse": result.input_mse_final,
        "mode_agreement": result.mode_agreement_final,
        "seconds": seconds,
    }


def timed(config: ToyConfig, teacher: GaussianMixture, keep: dict | None = None):
    start = time.perf_counter()
    result = distill_toy(config, teacher, keep=keep)
    return result, time.perf_counter() - start


def main(args) -> dict:
    torch.set_num_threads(1)
    teacher = GaussianMixture.square(**TEACHER_ARGS)
    base = dataclasses.replace(CONFIG, steps=args.steps)
    generate = []
    for per_sample in (True, False):
        for seed in range(args.seeds):
            config = dataclasses.replace(base, seed=seed, per_sample_timesteps=per_sample)
            result, seconds = timed(config, teacher)
            generate.append(row(result, seconds, timesteps="per sample" if per_sample else "per batch", seed=seed))
            print(generate[-1])

    restore, samples = [], {}
    for weight in (float(w) for w in args.task_weights.split(",")):
        config = dataclasses.replace(base, task="restore", lambda_task=weight)
        keep = {}
        result, seconds = timed(config, teacher, keep)
        restore.append(row(result, seconds, lambda_task=weight))
        samples[weight] = keep
        print(restore[-1])

    report = {
        "teacher": {"kind": "gaussian mixture", **TEACHER_ARGS, "modes": 4},
        "config": dataclasses.asdict(base),
        "generate": generate,
        "restore": restore,
    }
    output = Path(args.output)
    write_json(output, report)
    plot(samples, teacher, output.with_suffix(".png"))
    print_tables(report)
    return report


def print_tables(report: dict) -> None:
    print("\n| noise levels | seed | distance before | after | fall | sampling floor | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in report["generate"]:
        print(
            f"| {r['timesteps']} | {r['seed']} | {r['distance_initial']:.4f} | {r['distance_final']:.4f} | "
            f"{r['fall']:.0f}x | {r['distance_floor']:.4f} | {r['seconds']:.0f} |"
        )
    print("\n| lambda_task | distance to the mixture | MSE to the input | outputs at their input's mode |")
    print("| --- | --- | --- | --- |")
    for r in report["restore"]:
        print(
            f"| {r['lambda_task']:g} | {r['distance_final']:.4f} | {r['input_mse']:.4f} | {r['mode_agreement']:.1%} |"
        )


def plot(samples: dict, teacher: GaussianMixture, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = list(samples)
    fig, axes = plt.subplots(1, len(weights) + 1, figsize=(3 * (len(weights) + 1), 3.2), sharex=True, sharey=True)
    first = samples[weights[0]]
    axes[0].scatter(*first["inputs"][:1500].T, s=1, c="0.5")
    axes[0].scatter(*teacher.means.T, c="red", marker="x")
    axes[0].set_title("inputs (noisy data)")
    for axis, weight in zip(axes[1:], weights):
        axis.scatter(*samples[weight]["outputs"][:1500].T, s=1)
        axis.scatter(*teacher.means.T, c="red", marker="x")
        axis.set_title(f"lambda_task = {weight:g}")
    for axis in axes:
        axis.set_xlim(-3.5, 3.5)
        axis.set_ylim(-3.5, 3.5)
        axis.set_aspect("equal")
    fig.suptitle("One-step student's outputs (CiD restore task; red: the mixture's modes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(parse_args())
