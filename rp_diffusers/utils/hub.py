"""Hub helpers: render ``model_card.md`` with measured results and push a pipeline with its adapters."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parents[2] / "model_card.md"
PACKAGED_TEMPLATE = Path(__file__).resolve().parents[1] / "assets" / "model_card.md"


def _template_path(template: str | os.PathLike | None) -> Path:
    for candidate in (template, TEMPLATE, PACKAGED_TEMPLATE):
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError("model_card.md template not found; pass template=PATH")


def eval_results(bd_rows: dict[str, dict[str, float]], dataset: str = "Kodak") -> list[EvalResult]:
    """BD-rate rows -> Hub ``model-index`` entries (one per curve and metric, finite values only)."""
    results = []
    for curve, row in bd_rows.items():
        for metric, value in row.items():
            if value is None or not math.isfinite(value):
                continue
            results.append(
                EvalResult(
                    task_type="image-to-image",
                    dataset_type=dataset.lower(),
                    dataset_name=dataset,
                    metric_type=f"bd-rate-{metric}",
                    metric_name=f"BD-rate {metric} ({curve}) [%]",
                    metric_value=round(float(value), 3),
                )
            )
    return results


def render_model_card(
    repo_id: str,
    *,
    adapters: list[dict] | None = None,
    bd_rows: dict[str, dict[str, float]] | None = None,
    rd_plot: str | None = None,
    validation_table: str | None = None,
    base_model: str | None = None,
    summary: str = "",
    training: str = "",
    limits: str = "",
    results_intro: str = "",
    dataset: str = "Kodak",
    template: str | os.PathLike | None = None,
) -> ModelCard:
    """Render ``model_card.md`` into a ``huggingface_hub.ModelCard`` with ``model-index`` metrics.

    Args:
        repo_id: the Hub repository the card describes (used in the usage snippet).
        adapters: ``[{"name", "codec", "lam", "rank"}]`` as recorded in the pipeline config.
        bd_rows: ``{curve_name: {metric: bd_rate_percent}}`` (e.g. from ``rp_diffusers.evaluation.bd_table``).
        rd_plot: relative path of the R-D plot inside the repository (e.g. ``"rd.png"``).
        validation_table: markdown table from training validation.

    Example:
        >>> card = render_model_card("me/rp-tiny", adapters=[{"name": "rp_jpeg_lambda_1", "codec": "jpeg",
        ...     "lam": 1, "rank": 4}])  # doctest: +SKIP
        >>> card.save("README.md")  # doctest: +SKIP
    """
    adapters = adapters or []
    bd_rows = bd_rows or {}
    card_data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        base_model=base_model,
        pipeline_tag="image-to-image",
        tags=["rp-diffusers", "image-compression", "rate-perception", "lora"],
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(bd_rows, dataset) or None,
    )
    example = adapters[0] if adapters else {"name": None, "codec": "jpeg"}
    try:
        from ..codecs import get_codec

        codec = get_codec(example["codec"])
        quality, extension = codec.default_quality, codec.extension
    except Exception:  # an unknown codec in a card must not stop rendering
        quality, extension = 40, ".bin"
    return ModelCard.from_template(
        card_data,
        template_path=str(_template_path(template)),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        summary=summary,
        adapters=adapters,
        example_adapter=example["name"],
        example_codec=example["codec"],
        example_quality=quality,
        example_extension=extension,
        bd_rows=bd_rows,
        bd_metrics=sorted({m for row in bd_rows.values() for m in row}),
        rd_plot=rd_plot,
        validation_table=validation_table,
        results_intro=results_intro,
        training=training,
        limits=limits,
    )


def push_pipeline_to_hub(
    pipe,
    repo_id: str,
    card: ModelCard,
    *,
    extra_files: dict[str, str | os.PathLike] | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload rp-diffusers pipeline",
) -> str:
    """Save ``pipe`` (safetensors, with its adapters and prompt embedding), the card and extra files; upload.

    ``extra_files`` maps a path in the repository (e.g. ``"rd.png"``) to a local file. Returns the commit URL.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        stage_pipeline(pipe, folder, card, extra_files)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(info)


def stage_pipeline(pipe, folder: str | os.PathLike, card: ModelCard, extra_files: dict | None = None) -> Path:
    """Write what ``push_pipeline_to_hub`` uploads into ``folder`` (tested offline)."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    card.save(folder / "README.md")
    for target, source in (extra_files or {}).items():
        destination = folder / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return folder


def dtype_kwargs(dtype) -> dict:
    """The ``from_pretrained`` keyword for a dtype: ``dtype=`` where diffusers has it, else ``torch_dtype=``.

    Recent diffusers renamed ``torch_dtype`` to ``dtype`` and warns on the old name; older releases only know
    ``torch_dtype``. ``None`` (or float32, the default) passes nothing.
    """
    import torch

    if dtype is None or dtype == torch.float32:
        return {}
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}
