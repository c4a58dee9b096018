"""``rp-diffusers bd-rate ANCHOR.json TEST.json...``: BD-rate table for every metric the files share."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from ..utils.files import json_safe


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bd-rate",
        help="BD-rate of results files against an anchor, per shared metric",
        description="Bjontegaard-delta rate (percent; negative = fewer bits for the same quality) of each TEST "
        "results file against ANCHOR, for every metric both contain. Lower-is-better metrics (LPIPS, DISTS, FID) "
        "are handled. Test files sharing a curve name (e.g. a/jpeg.json and b/jpeg.json) are labelled "
        "'NAME (PATH)'.",
    )
    parser.add_argument("anchor", help="anchor results JSON (CompressAI schema)")
    parser.add_argument("tests", nargs="+", help="results JSON files to compare")
    parser.add_argument("--method", default="akima", choices=["akima", "pchip", "cubic"], help="interpolation")
    parser.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (undefined BD-rates are null)"
    )
    parser.set_defaults(func=run)


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def load_curve(path: str) -> dict:
    """:func:`~rp_diffusers.evaluation.load_results` plus the shape checks BD-rate needs, one clear line each.

    ``name`` must be a string; ``results.bpp`` and every metric in ``results`` lists of numbers (``null`` allowed
    for a missing point), the metrics one value per ``bpp`` entry.
    """
    from ..evaluation import load_results
    from ..evaluation.results import quality_keys

    try:
        data = load_results(path)
    except TypeError:  # "results" is a number: load_results cannot look inside it
        raise ValueError(
            f'{path}: field results must be an object such as {{"bpp": [...], "psnr-rgb": [...]}}'
        ) from None
    results = data["results"]
    if not isinstance(results, dict):
        raise ValueError(f'{path}: field results must be an object such as {{"bpp": [...]}}, got {_kind(results)}')
    if not isinstance(data["name"], str):
        raise ValueError(f"{path}: field name must be a string, got {_kind(data['name'])}")
    bpp = results["bpp"]
    for key in ["bpp", *(k for k in quality_keys(results) if k != "bpp")]:
        values = results[key]
        if not isinstance(values, list):
            raise ValueError(f"{path}: field results.{key} must be a list of numbers, got {_kind(values)}")
        bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)
        if bad is not None:
            raise ValueError(f"{path}: field results.{key}[{bad}] must be a number or null, got {_kind(values[bad])}")
        if len(values) != len(bpp):
            raise ValueError(
                f"{path}: field results.{key} has {len(values)} values but results.bpp has {len(bpp)}; "
                "they pair up, one per quality"
            )
    return data


def run(args: argparse.Namespace) -> int:
    from ..evaluation import MIN_OVERLAP, bd_overlap, bd_table, format_bd_table

    anchor = load_curve(args.anchor)
    tests = [(path, load_curve(path)) for path in args.tests]
    counts = Counter(test["name"] for _, test in tests)
    labels = [f"{test['name']} ({path})" if counts[test["name"]] > 1 else test["name"] for path, test in tests]
    repeated = [label for label, count in Counter(labels).items() if count > 1]
    if repeated:
        raise ValueError(f"{repeated[0]} is given more than once; list each test file once")
    rows, overlaps = {}, {}
    for label, (_, test) in zip(labels, tests):
        rows[label] = bd_table(anchor, test, method=args.method)
        overlaps[label] = bd_overlap(anchor, test)
    if args.json:
        table = {"anchor": anchor["name"], "method": args.method, "bd_rate": rows, "overlap": overlaps}
        print(json.dumps(json_safe({**table, "min_overlap": MIN_OVERLAP}), indent=2, allow_nan=False))
    else:
        print(format_bd_table(rows, anchor["name"], overlaps))
    return 0
