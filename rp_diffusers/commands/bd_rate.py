"""``rp-diffusers bd-rate ANCHOR.json TEST.json...``: BD-rate table for every metric the files share."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bd-rate",
        help="BD-rate of results files against an anchor, per shared metric",
        description="Bjontegaard-delta rate (percent; negative = fewer bits for the same quality) of each TEST "
        "results file against ANCHOR, for every metric both contain. Lower-is-better metrics (LPIPS, DISTS, FID) "
        "are handled.",
    )
    parser.add_argument("anchor", help="anchor results JSON (CompressAI schema)")
    parser.add_argument("tests", nargs="+", help="results JSON files to compare")
    parser.add_argument("--method", default="akima", choices=["akima", "pchip", "cubic"], help="interpolation")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import MIN_OVERLAP, bd_overlap, bd_table, format_bd_table, load_results

    anchor = load_results(args.anchor)
    rows, overlaps = {}, {}
    for path in args.tests:
        test = load_results(path)
        rows[test["name"]] = bd_table(anchor, test, method=args.method)
        overlaps[test["name"]] = bd_overlap(anchor, test)
    if args.json:
        table = {"anchor": anchor["name"], "method": args.method, "bd_rate": rows, "overlap": overlaps}
        print(json.dumps({**table, "min_overlap": MIN_OVERLAP}, indent=2))
    else:
        print(format_bd_table(rows, anchor["name"], overlaps))
    return 0
