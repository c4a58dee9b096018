"""Add rate points to a trained CorrDiff model: more quantisation gains, no training (``CorrDiffModel.with_gains``).

A gain scales the latent before rounding, so a gain below the lowest trained one is a coarser quantiser of the
same transforms: a lower rate, as good as the transforms are at that step. Measure it before shipping it
(``benchmarks/corrdiff.py`` on the validation photographs). The model's gains keep their coding tables bit for
bit and the default quality stays on the same gain; a quality's index moves up by the number of gains added
below it. The shipped model's two lowest gains were added this way, to the five-gain model of the training
commands in training/README.md ("CorrDiff"; the shipped folder already has them, so it refuses them):

    python training/add_corrdiff_gains.py --model corrdiff-5 --add_gains 0.25,0.3536 --output_dir corrdiff-6
"""

import argparse
from pathlib import Path

from rp_diffusers.corrdiff import load_model, save_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A trained CorrDiff model folder (or Hub id).")
    parser.add_argument("--add_gains", required=True, help="Comma-separated gains to add, e.g. 0.25,0.3536.")
    parser.add_argument("--output_dir", required=True, help="New model folder; must not exist or be empty.")
    args = parser.parse_args(argv)
    try:
        args.add_gains = [float(g) for g in args.add_gains.split(",") if g.strip()]
    except ValueError:
        parser.error(f"--add_gains takes comma-separated numbers, got {args.add_gains!r}")
    if not args.add_gains:
        parser.error("--add_gains names no gain")
    output = Path(args.output_dir)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        parser.error(f"--output_dir {output} exists and is not an empty folder; nothing is overwritten")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    model = load_model(args.model)
    old = [float(g) for g in model.config.gains]
    clash = [g for g in args.add_gains if g in old]
    if clash:
        raise SystemExit(f"the model already has the gains {clash}")
    try:
        extended = model.with_gains(sorted(old + args.add_gains))
    except ValueError as error:
        raise SystemExit(str(error)) from None
    save_model(extended, args.output_dir)
    gains = list(extended.config.gains)
    default = extended.config.default_quality_index
    print(f"wrote {args.output_dir}: gains {gains} (qualities 0-{len(gains) - 1}), default quality {default}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
