"""Side-by-side crops: original, codec alone, and what ``--model default`` runs before the codec, at about the same bpp.

For each codec the pre-processing is the one the shipped model's policy picks (``pipe.adapter_for(codec)``: a
validated adapter, else the base model if it won in validation, else nothing; then the codec step, such as the JPEG
dead zone, where the model validated one); ``--config NAME`` shows another
one (an adapter name, or ``base``) and the figure says it is not the default. The rp + codec file is encoded at
``--quality``; the codec alone gets the lowest quality whose file is at least as large, so the codec alone never
has fewer bits than rp + codec. Under each crop: bpp and the whole-image metrics against the original.

    python benchmarks/default_crops.py --image ../shared/data/kodak/kodim23.png --codec webp --quality 20 \
        --output benchmarks/results/default_crops_webp.png
"""

import argparse
import json
from pathlib import Path

from rp_diffusers.default_model import load_preprocessor
from rp_diffusers.evaluation import usable_metrics
from rp_diffusers.evaluation.compare import encode_pair, measure_pair
from rp_diffusers.utils.image import load_image

METRICS = ("psnr", "ssimulacra2", "butteraugli_3norm", "vmaf_neg")
LABELS = {
    "psnr-rgb": "PSNR {:.2f} dB",
    "ssimulacra2": "SSIMULACRA2 {:.1f}",
    "butteraugli-3norm": "Butteraugli-3n {:.2f}",
}
LABELS["vmaf-neg"] = "VMAF-NEG {:.1f}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="Pipeline folder or 'default'.")
    parser.add_argument("--image", required=True, help="The photograph (not one the model was tuned on).")
    parser.add_argument("--codec", default="webp", help="Codec name.")
    parser.add_argument("--quality", type=int, default=20, help="Quality of the rp + codec encode.")
    parser.add_argument("--config", default=None, help="Adapter name or 'base' (default: the model's policy).")
    parser.add_argument("--crop", type=int, nargs=4, default=None, help="left top width height (default: centre).")
    parser.add_argument("--zoom", type=int, default=2, help="Nearest-neighbour zoom of the crops.")
    parser.add_argument("--output", required=True, help="PNG to write (a JSON with the numbers goes beside it).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    args = parse_args(argv)
    pipe = load_preprocessor(args.model, "cpu")
    pipe.set_progress_bar_config(disable=True)
    choice = pipe.adapter_for(args.codec)
    step = choice.codec_step
    if args.config is None:
        preprocess, adapter = choice.preprocess, choice.adapter
        what = f"default: {choice.reason}"
        parts = [choice.adapter or "the base model"] if choice.preprocess else []
        parts += [step.description] if step is not None else []
        short = f"the default for {args.codec}: " + (" + ".join(parts) or "no pre-processing")
    else:
        preprocess, adapter = True, None if args.config == "base" else args.config
        default = choice.label or "codec alone"
        what = f"{args.config}, NOT the default (the default for {args.codec} is {default})"
        short, step = what, None
    original = load_image(args.image)
    pre = pipe(original, adapter_name=adapter or []).images[0] if preprocess else original
    # the codec alone at the lowest quality whose file is at least as large: it never has fewer bits than rp
    alone, rp = encode_pair(args.codec, original, pre, quality=args.quality, match="bpp_or_more", codec_step=step)
    scores = measure_pair(original, (alone, rp), usable_metrics(list(METRICS)))
    rows = {
        "original": {"bpp": 24.0},
        f"{args.codec} alone (q {alone.quality})": {"bpp": alone.bpp, **scores["codec alone"]},
        f"rp + {args.codec} (q {rp.quality})": {"bpp": rp.bpp, **scores["rp + codec"]},
    }
    w, h = original.size
    left, top, cw, ch = args.crop or ((w - 256) // 2, (h - 192) // 2, 256, 192)
    box = (left, top, left + cw, top + ch)
    crops = [
        im.crop(box).resize((cw * args.zoom, ch * args.zoom), Image.NEAREST)
        for im in (original, alone.reconstruction, rp.reconstruction)
    ]
    fig, axes = plt.subplots(1, 3, figsize=(3 * cw * args.zoom / 100, ch * args.zoom / 100 + 1.0), dpi=100)
    for ax, crop, (name, values) in zip(axes, crops, rows.items()):
        ax.imshow(crop)
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [name] + ([f"{values['bpp']:.3f} bpp"] if name != "original" else ["24 bpp (lossless)"])
        lines += [LABELS[k].format(v) for k, v in values.items() if k in LABELS]
        ax.set_xlabel("\n".join(lines), fontsize=9)
    fig.suptitle(f"{Path(args.image).name}, crop {box}, metrics on the whole image; rp = {short}", fontsize=10)
    fig.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, bbox_inches="tight")
    plt.close(fig)
    report = {
        "image": str(args.image),
        "codec": args.codec,
        "config": args.config or "default",
        "choice": what,
        "crop": box,
        "rows": rows,
    }
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
