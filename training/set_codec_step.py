"""Store the codec step a validation run selected (``benchmarks/jpeg_deadzone.py --select``) in a model's config.

The step goes into ``model_index.json`` as ``codec_steps[codec]`` with its validation record (BD-rates against the
codec alone on the validation photographs, the headline metrics, ``wins``), the record ``adapter_for`` reads: a step
that did not win there is stored as such and never runs by default. Only the config is rewritten, not the weights.

    python training/set_codec_step.py --model rp_diffusers/assets/default_model \
        --selection benchmarks/results/jpeg_deadzone_val-set14.json
"""

import argparse
import json
from pathlib import Path

from rp_diffusers.codecs.prequantize import codec_step_from_config
from rp_diffusers.pipelines import RPPreprocessPipeline


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="The model folder (its model_index.json is rewritten).")
    parser.add_argument("--selection", required=True, help="JSON written by benchmarks/jpeg_deadzone.py --select.")
    return parser.parse_args(argv)


def validation_record(report: dict) -> tuple[object, dict]:
    """(the selected step, or the best-scoring one where none won; its validation record) of a selection run."""
    selection = report.get("selection")
    if selection is None:
        raise SystemExit("the JSON has no 'selection': run benchmarks/jpeg_deadzone.py with --select")
    headline = list(report["headline"])
    if selection["curve"] is None:  # nothing won: store the best, marked as lost, so the record says so

        def mean(name: str) -> float:  # a metric that was not measured, or NaN, ranks the step last
            values = [report["bd_rate_percent"][name].get(m, float("nan")) for m in headline]
            return sum(values) / len(values) if all(v == v for v in values) else float("inf")

        name = min(sorted(report["steps"]), key=mean)
    else:
        name = selection["curve"]
    step = codec_step_from_config(report["steps"][name])
    record = {
        "bd_rate": report["bd_rate_percent"][name],
        "overlap": report["overlap"][name],
        "codec": step.codec,
        "headline": headline,
        "images": f"{Path(report['images']).name} ({report['num_images']} photographs)",
        "qualities": report["qualities"],
        "trained_metrics": [],
        "trained_on": None,
        "wins": bool(selection["wins"]),
        "benchmark": "benchmarks/jpeg_deadzone.py",
    }
    return step, record


def main(argv=None) -> int:
    args = parse_args(argv)
    report = json.loads(Path(args.selection).read_text())
    step, record = validation_record(report)
    pipe = RPPreprocessPipeline.from_pretrained(args.model, text_encoder=None, tokenizer=None)
    pipe.set_codec_step(step.codec, step, record)
    pipe.save_config(args.model)
    index = Path(args.model) / "model_index.json"
    config = json.loads(index.read_text())
    config.pop("_name_or_path", None)  # a local path, as save_pretrained leaves it out
    index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    choice = pipe.adapter_for(step.codec)
    print(f"{args.model}: {step.codec}: {choice.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
