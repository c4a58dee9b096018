"""The rp-diffusers metric set as a Hugging Face ``evaluate`` module: ``evaluate.load(path_of_this_file)``.

It runs offline (the file ships inside the package; nothing is fetched) and measures exactly what
``rp-diffusers evaluate`` measures, through the same :func:`rp_diffusers.evaluation.measure`: PSNR, MS-SSIM and
every installed weight-free perceptual metric by default, and any other names of
``rp_diffusers.metrics.AVAILABLE_METRICS``.

Example:
    >>> import evaluate  # doctest: +SKIP
    >>> from rp_diffusers.metrics import EVALUATE_MODULE
    >>> quality = evaluate.load(str(EVALUATE_MODULE))  # doctest: +SKIP
    >>> quality.compute(predictions=[decoded], references=[original], metrics="psnr,ssimulacra2")  # doctest: +SKIP
    {'psnr': 31.2, 'ssimulacra2': 64.0, 'num_images': 1}
"""

import datasets
import evaluate

_DESCRIPTION = """Full-reference image quality of decoded images against their originals, as rp-diffusers
measures it: PSNR (8-bit RGB), MS-SSIM, SSIMULACRA2, Butteraugli (max and 3-norm), VMAF and VMAF-NEG where
their tools are installed, LPIPS and DISTS where their weights load. Each value is the mean over the images."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of PIL images): the decoded images.
    references (list of PIL images): the originals, one per prediction, of the same size.
    metrics (str or list of str): metric names, or "default" (PSNR, MS-SSIM and every installed weight-free
        perceptual metric).
Returns:
    dict: the mean of each metric computed over the images (a metric undefined at an image's size, such as
    MS-SSIM under 161 px a side, is averaged over the other images), and "num_images".
"""

_CITATION = """@inproceedings{ssimulacra2, title={SSIMULACRA 2}, author={Sneyers, Jon}, year={2022},
note={https://github.com/cloudinary/ssimulacra2}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RpImageQuality(evaluate.Metric):
    """rp-diffusers' image-quality metrics behind ``evaluate``'s ``compute`` / ``add_batch`` interface."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(self, predictions, references, metrics="default"):
        from rp_diffusers.evaluation import measure, parse_metrics, usable_metrics
        from rp_diffusers.utils import load_image

        names = usable_metrics(parse_metrics(metrics))
        sums: dict[str, list[float]] = {}
        for prediction, reference in zip(predictions, references):
            values = measure(load_image(reference), load_image(prediction), names)
            for name, value in values.items():
                sums.setdefault(name, []).append(value)
        return {**{name: sum(v) / len(v) for name, v in sums.items()}, "num_images": len(predictions)}
