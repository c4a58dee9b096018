"""Gather a base pipeline and trained adapter folders into one pipeline folder (what the compact recipe ships).

    python training/gather_adapters.py --base WORK/base --adapters WORK/rp_jpeg_1 WORK/rp_webp_1 --output DEST

The adapters' rp_adapter.json (training record, validation verdict) is kept as written by training, plus the base
model and any surrogate note: it is each adapter's one record (DEST/model_index.json lists no adapters). The
selection saved with the pipeline is none (adapters off): callers pick per codec with ``pipe.adapter_for(codec)``.
"""

import argparse
import json
import shutil
from pathlib import Path

from rp_diffusers.adapters import read_adapter_info
from rp_diffusers.pipelines import RPPreprocessPipeline


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="The base RPPreprocessPipeline folder (stage 1).")
    parser.add_argument("--adapters", nargs="+", required=True, help="Adapter folders written by finetune_rp.py.")
    parser.add_argument("--output", required=True, help="The pipeline folder to write.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    base, dest = Path(args.base), Path(args.output)
    if dest.exists() and not args.overwrite:
        raise SystemExit(f"{dest} exists; pass --overwrite to replace it")
    pipe = RPPreprocessPipeline.from_pretrained(base)
    for folder in args.adapters:
        pipe.load_lora_weights(folder)  # records the folder's rp_adapter.json; save_pretrained writes it back
        info = read_adapter_info(folder) or {}
        facts = {"base_model": info.get("base_model") or "stage 1 of training/compact_recipe.sh"}
        if info.get("surrogate") not in (None, info.get("codec")):
            facts["note"] = f"trained through the {info['surrogate']} surrogate as a STAND-IN for {info['codec']}"
        pipe.update_adapter_info(info["adapter_name"], **facts)
    pipe.disable_adapters()
    if dest.exists():
        shutil.rmtree(dest)
    pipe.save_pretrained(dest)
    for config in (dest / "model_index.json", dest / "unet" / "config.json", dest / "vae" / "config.json"):
        # diffusers records the folder it loaded from (a path of this machine); loading sets it again anyway
        entries = json.loads(config.read_text())
        entries.pop("_name_or_path", None)
        config.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    if (base / "stage1_metrics.json").is_file():
        shutil.copy(base / "stage1_metrics.json", dest / "stage1_metrics.json")
    print(f"saved {dest} with adapters {list(pipe.available_adapters())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
