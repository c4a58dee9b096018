"""The ``rp-diffusers`` command: one sub-command per module in ``rp_diffusers/commands``."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

# name -> module in rp_diffusers.commands; each module defines ``add_parser(subparsers)`` and ``run(args) -> int``.
COMMANDS = {
    "evaluate": "evaluate",
    "merge": "merge",
    "bd-rate": "bd_rate",
    "compress": "compress",
    "enhance": "enhance",
    "calibrate-decode": "calibrate_decode",
}


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rp-diffusers",
        description="Rate-perception pre-processing and perceptual decoding for standard image codecs.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show debug logs and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = import_module(f"rp_diffusers.commands.{module_name}")
        except ModuleNotFoundError as error:
            if error.name == f"rp_diffusers.commands.{module_name}":
                continue  # sub-command not built in this version
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        if args.verbose:
            raise
        print(f"rp-diffusers {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
