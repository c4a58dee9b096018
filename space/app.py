"""rp-diffusers Space: the same photo through a standard codec alone and after rate-perception pre-processing.

Run locally with ``python space/app.py`` (honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT). The model comes from
$RP_SPACE_MODEL (a folder or Hub id), else the compact model shipped with rp-diffusers; the comparison is
``rp_diffusers.evaluation.compare`` and the rest of the logic ``space_support.py`` beside this file: this file
only lays out the page.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import gradio as gr

from rp_diffusers.codecs import CodecError, available_codecs, get_codec
from rp_diffusers.evaluation import EXAMPLES_DIR, usable_metrics
from rp_diffusers.evaluation.compare import compare
from rp_diffusers.evaluation.results import RESULT_KEYS
from rp_diffusers.metrics import MS_SSIM_MIN_SIDE, default_metrics
from rp_diffusers.utils import ImageLoadError, list_images

sys.path.insert(0, str(Path(__file__).resolve().parent))  # space_support.py sits beside this file
from space_support import (  # noqa: E402
    MAX_PIXELS,
    NO_ADAPTER,
    NO_NETWORK,
    NO_PREPROCESS,
    SPACE_MODEL_ID,
    RequestFolders,
    SpaceModel,
    adapter_choice_value,
    load_space_model,
    open_upload,
    safe_stem,
    write_files,
)

logger = logging.getLogger("rp_space")

MAX_FILE_SIZE = os.environ.get("RP_SPACE_MAX_FILE_SIZE", "20mb")  # refused by the server before any decoding
CONCURRENCY = int(os.environ.get("RP_SPACE_CONCURRENCY", "2"))  # requests computed at once (2 vCPU Space)
QUEUE_SIZE = int(os.environ.get("RP_SPACE_QUEUE_SIZE", "32"))  # waiting requests beyond this are turned away
DELETE_CACHE = (600, 1800)  # every 10 min, delete cached uploads and results older than 30 min
SLOW_CODECS = {"vvc": "VVC (vvenc) is slow: expect several seconds per encode, more in 'same bpp' mode"}
MATCH_CHOICES = [
    ("same bpp: rp + codec at the quality, codec alone at the highest quality within that bpp", "bpp"),
    ("same quality setting for both", "quality"),
    ("target bpp: each at its highest quality within the budget", "target_bpp"),
]
METRIC_HEADERS = {
    "psnr": "PSNR (dB)",
    "ms_ssim": "MS-SSIM",
    "ssimulacra2": "SSIMULACRA2",
    "butteraugli": "Butteraugli (max)",
    "butteraugli_3norm": "Butteraugli (3-norm)",
    "vmaf": "VMAF",
    "vmaf_neg": "VMAF-NEG",
    "lpips": "LPIPS",
    "dists": "DISTS",
}
METRIC_FORMAT = {
    "psnr": "{:.2f}",
    "ms_ssim": "{:.4f}",
    "ssimulacra2": "{:.2f}",
    "butteraugli": "{:.3f}",
    "butteraugli_3norm": "{:.3f}",
    "vmaf": "{:.2f}",
    "vmaf_neg": "{:.2f}",
    "lpips": "{:.4f}",
    "dists": "{:.4f}",
}
CSS = "#model-banner.random {border: 2px solid #d97706; border-radius: 8px; padding: 0 12px; background: #fffbeb}"


def _user_errors(fn):
    """Turn every failure into a one-line ``gr.Error`` for the page (the traceback goes to the server log only)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageLoadError, CodecError, ValueError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            logger.exception("request failed")
            raise gr.Error(
                f"Something went wrong ({type(error).__name__}); please try another image or setting",
                print_exception=False,
            ) from None

    return wrapper


def _codec_choices() -> list[tuple[str, str]]:
    return [(f"{name} (slow)" if name in SLOW_CODECS else name, name) for name in available_codecs()]


def _banner(model: SpaceModel, metrics: tuple[str, ...]) -> str:
    lines = [f"**Model:** {model.label}."]
    if model.is_random:
        lines.insert(0, "### ⚠️ Tiny RANDOM model: the pre-processed images are noise, not results")
    lines += [f"- {note}" for note in model.notes]
    skipped = [METRIC_HEADERS[m] for m in ("lpips", "dists") if m not in metrics]
    if skipped:
        lines.append(f"{' and '.join(skipped)}: weights not available on this server, not computed.")
    return "\n\n".join(lines)


def _summary(comparison, note: str | None, name: str, target_bpp: float | None = None) -> str:
    alone, rp = comparison.codec_alone, comparison.rp
    psnr = {variant: values.get("psnr-rgb") for variant, values in comparison.metrics.items()}
    text = {
        "bpp": "Same bpp: the codec alone got the highest quality whose rate does not exceed rp + codec's.",
        "quality": "Same quality setting: the two rates differ; compare bpp as well as quality.",
        "target_bpp": "Each got the highest quality whose rate fits the budget.",
    }[comparison.match]
    lines = [
        f"**rp + codec**: {rp.bpp:.3f} bpp (quality {rp.quality}), PSNR {psnr['rp + codec']:.2f} dB · "
        f"**codec alone**: {alone.bpp:.3f} bpp (quality {alone.quality}), PSNR {psnr['codec alone']:.2f} dB. {text}",
    ]
    budget = {"bpp": rp.bpp, "target_bpp": target_bpp}.get(comparison.match)
    over = [variant for variant, coded in comparison.results().items() if budget is not None and coded.bpp > budget]
    if over:
        lines.append(f"⚠️ {' and '.join(over)}: even the lowest quality exceeds {budget:.3f} bpp.")
    if min(comparison.original.size) < MS_SSIM_MIN_SIDE:
        lines.append("MS-SSIM needs at least 161 pixels per side: not computed for this image.")
    if note:
        lines.append(f"Note: {name}: {note}.")
    return "\n\n".join(lines)


def build_demo(model: SpaceModel | None = None, metrics: tuple[str, ...] | None = None) -> gr.Blocks:
    """The page: inputs on the left, the comparison on the right. ``model``/``metrics`` default to start-up probes."""
    model = model or load_space_model()
    if metrics is None:  # tools and network metrics that run here (probed once, not per request)
        metrics = tuple(usable_metrics(default_metrics()))
    adapters = model.pipe.available_adapters()
    folders = RequestFolders()
    codecs = available_codecs()
    first_codec = "jpeg" if "jpeg" in codecs else codecs[0]
    headers = ["variant", "quality", "bpp", "bytes", *(METRIC_HEADERS[m] for m in metrics)]

    def on_codec(codec: str):
        if codec in SLOW_CODECS:
            gr.Warning(SLOW_CODECS[codec])
        coder = get_codec(codec)
        lo, hi = coder.quality_range
        quality = gr.Slider(
            minimum=lo, maximum=hi, value=coder.default_quality, label=f"quality ({lo}-{hi}, higher = better)"
        )
        choice = model.pipe.adapter_for(codec)
        if not choice.preprocess:
            gr.Info(f"{choice.reason}; choose an adapter to run the network anyway")
        return quality, gr.Dropdown(value=adapter_choice_value(model.pipe, codec))

    @_user_errors
    def run(upload, codec, match, quality, target_bpp, adapter, strength):
        # preprocess=False below: the upload arrives as gradio's file record (already checked to lie in the
        # upload folder), so load_image, not gradio's Image.open, decodes it and explains every bad file.
        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path:
            raise gr.Error("Upload an image first (or click one of the examples).", print_exception=False)
        name = Path(path).name
        step = model.pipe.codec_step_for(codec)[0] if adapter == NO_NETWORK else None
        if adapter == NO_NETWORK and step is None:
            raise gr.Error(
                f"This model has no validated codec step for {codec}: choose 'codec alone' or a network.",
                print_exception=False,
            )
        image, note = open_upload(path, max_pixels=MAX_PIXELS)
        if note:
            gr.Warning(f"{name}: {note}")
        result = compare(
            model.pipe,
            image,
            codec,
            quality=None if quality is None else (int(quality) if float(quality).is_integer() else quality),
            target_bpp=target_bpp,
            match=match,
            adapter_name=None if adapter in (None, "", NO_ADAPTER, NO_PREPROCESS, NO_NETWORK) else adapter,
            adapter_weight=1.0 if strength is None else float(strength),
            pre_process=adapter not in (NO_PREPROCESS, NO_NETWORK),
            metrics=tuple(metrics),
            codec_step=step,  # the model's validated step runs alone, never with a network (not validated so)
        )
        rows = []
        for variant, coded in result.results().items():
            values = result.metrics[variant]  # under CompressAI's results keys (psnr -> psnr-rgb)
            keys = [RESULT_KEYS.get(m, m) for m in metrics]
            cells = [METRIC_FORMAT[m].format(values[k]) if k in values else "n/a" for m, k in zip(metrics, keys)]
            rows.append([variant, coded.quality, f"{coded.bpp:.4f}", len(coded.data), *cells])
        files = write_files(result, folders.new(), safe_stem(path))
        images = (result.codec_alone.reconstruction, result.rp.reconstruction)
        summary = _summary(result, note, name, target_bpp)
        if adapter == NO_PREPROCESS:
            summary = (
                "**No pre-processing**: both files are the codec alone; choose an adapter, or 'no network' where the "
                f"model has a codec step, to see what it would do (the default for {codec}: "
                f"{model.pipe.adapter_for(codec).reason}).\n\n" + summary
            )
        elif step is not None:
            summary = f"**rp + codec = {step.description}, then the codec** (no network).\n\n" + summary
        return images, *images, summary, rows, *map(str, files)

    with gr.Blocks(
        title="rp-diffusers: rate-perception pre-processing", delete_cache=DELETE_CACHE, analytics_enabled=False
    ) as demo:
        gr.Markdown(
            "# rp-diffusers: better-looking JPEG / WebP / AVIF / HEVC / VVC at the same bitrate\n"
            "A one-step diffusion model pre-processes the photo, then an **unmodified** codec encodes it: any "
            "ordinary decoder reads the file. Compare it with the codec alone at the same bpp."
        )
        gr.Markdown(
            _banner(model, tuple(metrics)),
            elem_id="model-banner",
            elem_classes=["random"] if model.is_random else None,
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                image = gr.Image(
                    label=f"photo (up to {MAX_PIXELS / 1e6:.0f} MP, {MAX_FILE_SIZE})",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    elem_id="input-image",
                )
                codec = gr.Dropdown(_codec_choices(), value=first_codec, label="codec", elem_id="codec")
                match = gr.Radio(MATCH_CHOICES, value="bpp", label="compare at", elem_id="match")
                coder = get_codec(first_codec)
                quality = gr.Slider(
                    *coder.quality_range,
                    value=coder.default_quality,
                    step=1,
                    elem_id="quality",
                    label=f"quality ({coder.quality_range[0]}-{coder.quality_range[1]}, higher = better)",
                )
                target_bpp = gr.Number(0.5, minimum=0.01, maximum=24, step=0.05, label="target bpp", elem_id="bpp")
                adapter = gr.Dropdown(
                    [
                        ("codec alone (no pre-processing)", NO_PREPROCESS),
                        ("no network (the codec step only, e.g. the JPEG dead zone)", NO_NETWORK),
                        ("none (base one-step model)", NO_ADAPTER),
                        *((n, n) for n in sorted(adapters)),
                    ],
                    value=adapter_choice_value(model.pipe, first_codec),
                    label="rate-perception adapter",
                    elem_id="adapter",
                    interactive=bool(adapters),
                )
                strength = gr.Slider(
                    0,
                    1,
                    value=1,
                    step=0.05,
                    label="adapter strength (0 = base model)",
                    elem_id="strength",
                    interactive=bool(adapters),
                )
                button = gr.Button("Compress and compare", variant="primary", elem_id="run-button")
                gr.Examples([[str(p)] for p in list_images(EXAMPLES_DIR)], inputs=[image], label="example photos")
            with gr.Column(scale=3, min_width=400):
                slider = gr.ImageSlider(
                    label="codec alone | rp + codec (drag)", format="png", type="pil", elem_id="comparison-slider"
                )
                with gr.Row():
                    alone_image = gr.Image(label="codec alone", format="png", type="pil", elem_id="codec-alone")
                    rp_image = gr.Image(label="rp + codec", format="png", type="pil", elem_id="rp-codec")
                summary = gr.Markdown(label="summary", elem_id="summary")
                table = gr.Dataframe(
                    headers=headers, interactive=False, label="bpp and quality", elem_id="results-table"
                )
                with gr.Row():
                    alone_file = gr.File(label="codec alone file", elem_id="codec-alone-file")
                    rp_file = gr.File(label="rp + codec file", elem_id="rp-codec-file")
        gr.Markdown(
            f"Model card: [{SPACE_MODEL_ID}](https://huggingface.co/{SPACE_MODEL_ID}). bpp counts every byte "
            "of the downloadable file over the original pixels; metrics compare each decode with the upload."
        )

        codec.change(on_codec, codec, [quality, adapter], api_name=False)
        button.click(
            run,
            [image, codec, match, quality, target_bpp, adapter, strength],
            [slider, alone_image, rp_image, summary, table, alone_file, rp_file],
            api_name="compare",
            preprocess=False,
        )
    return demo


def launch_kwargs() -> dict:
    """The ``demo.launch`` settings of the Space (upload limit, style); the server name and port come from
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT as in any Gradio app."""
    return {"max_file_size": MAX_FILE_SIZE, "css": CSS, "footer_links": ["api"]}


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    demo = build_demo()
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    demo.launch(**launch_kwargs())


if __name__ == "__main__":
    main()
