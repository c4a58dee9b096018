"""Validate a pipeline folder's base model and adapters on held-out photographs and record the verdicts.

Each adapter's verdict goes into its rp_adapter.json, the base model's into adapters/base_validation.json.
``--model default`` and the Space then pick, per codec, only an adapter (else the base model) whose validation
BD-rate against the codec alone is negative in every headline metric (perceptual metrics it was not trained on);
where nothing is, no network runs (the codec alone, or a codec step the model validated, see set_codec_step.py). Validate on photographs the numbers are NOT reported on (val-set14, never Kodak).

    python training/validate_adapters.py --model rp_diffusers/assets/default_model --images photos/val-set14
"""

import argparse
import json

from rp_diffusers.evaluation import parse_qualities
from rp_diffusers.evaluation.validate import DEFAULT_QUALITIES, validate_adapters


def _codec_qualities(spec: str) -> tuple[str, str]:
    """``"jpeg=10,30,50"`` -> ``("jpeg", "10,30,50")``, the spec checked by ``parse_qualities``."""
    codec, sep, qualities = spec.partition("=")
    if not sep or not codec or not qualities:
        raise argparse.ArgumentTypeError(
            f"expected CODEC=QUALITIES such as jpeg=10,30,50 or webp=10:80:10, got {spec!r}"
        )
    try:
        parse_qualities(qualities)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{codec}: {error}") from None
    return codec, qualities


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A saved RPPreprocessPipeline folder (with adapters/).")
    parser.add_argument("--images", required=True, help="Held-out validation photographs (a folder).")
    parser.add_argument("--codecs", nargs="*", default=None, help="Only adapters for these codecs.")
    parser.add_argument(
        "--qualities",
        nargs="*",
        type=_codec_qualities,
        default=[],
        help=f"Per codec: codec=spec (default {DEFAULT_QUALITIES}).",
    )
    parser.add_argument("--workers", type=int, default=None, help="Codec worker processes.")
    parser.add_argument("--dry_run", action="store_true", help="Print the verdicts without writing them.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    qualities = dict(args.qualities)
    records = validate_adapters(
        args.model, args.images, codecs=args.codecs, qualities=qualities, write=not args.dry_run, workers=args.workers
    )
    for name, record in records.items():
        rates = ", ".join(f"{m} {v:+.2f}%" for m, v in record["bd_rate"].items())
        verdict = "WINS" if record["wins"] else "loses"
        print(
            f"{name}: {verdict} (headline {', '.join(record['headline'])}; trained on {record['trained_on']}): {rates}"
        )
    if args.dry_run:
        print(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
