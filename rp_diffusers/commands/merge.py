"""``rp-diffusers merge``: join the shards of ``evaluate --shard I/N`` into the results of one run."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="join the shard folders of `evaluate --shard I/N` into one run's results",
        description="Read the folders that `rp-diffusers evaluate --shard I/N` wrote (one per shard, all N of "
        "them), check they are the shards of one run, and write what a one-process run writes: one results JSON "
        "per curve (the same records, in the same order), rd.png and bd_rate.json.",
    )
    parser.add_argument("shards", nargs="+", help="the shard folders (their --output)")
    parser.add_argument("--output", required=True, help="folder for the merged results")
    parser.add_argument("--anchor", default=None, help="curve the BD-rate table is against (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier results in --output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.runs import read_shards
    from .evaluate import earlier_results, exists_error, write_results

    output = Path(args.output)
    if any(output.resolve() == Path(folder).resolve() for folder in args.shards):
        raise ValueError("--output must not be one of the shard folders: merge into a folder of its own")
    earlier = [p.name for p in earlier_results(output)]
    if earlier and not args.overwrite:
        raise exists_error(output, earlier)
    curves, plan = read_shards([Path(folder) for folder in args.shards])
    names = [curve["name"] for curve in curves]
    anchor = args.anchor or plan["anchor"]
    if anchor is not None and anchor not in names:
        raise ValueError(f"--anchor {anchor!r} is not one of the curves: {', '.join(names)}")
    print(f"merging {plan['count']} shards: {len(plan['images'])} images, {len(curves)} curves")
    write_results(output, curves, anchor, args.overwrite, earlier)
    return 0
