"""Hub helpers: find optional files in folders or Hub repos, render ``model_card.md``, push a pipeline."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .assets import ASSETS_DIR

# Weight files that torch.load would unpickle (run code from): never loaded, refused with a message.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# The one model-card template: in a checkout, a link to the repository's top-level ``model_card.md``; a built
# wheel holds the file itself.
PACKAGED_TEMPLATE = ASSETS_DIR / "model_card.md"


def _template_path(template: str | os.PathLike | None) -> Path:
    for candidate in (template, PACKAGED_TEMPLATE):
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError("model_card.md template not found; pass template=PATH")


def resolve_optional_file(
    source: str | os.PathLike, filename: str, subfolder: str | None = None, **hub_kwargs
) -> Path | None:
    """Local path of ``filename`` in a folder or Hub repo (downloaded if needed), or ``None`` when it is absent.

    Args:
        source: a local folder or a Hub repo id.
        filename: file name inside ``source`` (or inside ``subfolder``).
        subfolder: optional folder inside ``source``.
        hub_kwargs: ``cache_dir``, ``revision``, ``token``, ``local_files_only`` for Hub repos (others ignored).

    Returns:
        ``pathlib.Path`` of the local (or cached) file, or ``None`` when ``source`` has no such file, the repo does
        not exist, or it is not cached while offline.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "prompt_embeds.safetensors").write_bytes(b"")
        >>> resolve_optional_file(folder, "prompt_embeds.safetensors").name, resolve_optional_file(folder, "x.json")
        ('prompt_embeds.safetensors', None)
    """
    local = Path(source) / (subfolder or "")
    if Path(source).exists():
        path = local / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    allowed = {k: hub_kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in hub_kwargs}
    try:
        return Path(hf_hub_download(str(source), filename, subfolder=subfolder, **allowed))
    except (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError):
        return None


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
    example_quality: int | None = None,
    example_extension: str | None = None,
) -> ModelCard:
    """Render ``model_card.md`` into a ``huggingface_hub.ModelCard`` with ``model-index`` metrics.

    Args:
        repo_id: the Hub repository the card describes (used in the usage snippet).
        adapters: ``[{"name", "codec", "lam", "rank"}]`` as recorded in the pipeline config.
        bd_rows: ``{curve_name: {metric: bd_rate_percent}}`` (e.g. from ``rp_diffusers.evaluation.bd_table``).
        rd_plot: relative path of the R-D plot inside the repository (e.g. ``"rd.png"``).
        validation_table: markdown table from training validation.
        example_quality: quality in the usage snippet, on the first adapter's codec scale (the codec's
            ``default_quality``, e.g. ``get_codec("jpeg").default_quality``; default 40).
        example_extension: file extension in the usage snippet (the codec's ``extension``, e.g. ``".jpg"``;
            default ``".bin"``). :func:`rp_diffusers.codecs.card_example` gives both for a codec name.

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
    example_quality = 40 if example_quality is None else example_quality  # utils knows no codec: callers say
    example_extension = ".bin" if example_extension is None else example_extension
    return ModelCard.from_template(
        card_data,
        template_path=str(_template_path(template)),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        summary=summary,
        adapters=adapters,
        example_adapter=example["name"],
        example_codec=example["codec"],
        example_quality=example_quality,
        example_extension=example_extension,
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
