"""Stage 1 on a real teacher: the distilled student's ONE call against the teacher's multi-step sample.

The teacher is perceptual decoding's shipped EDM denoiser; the students come from
``training/distill_decode_denoiser.py`` (SiD's generator loss and fake-score update with CiD's consistency term,
the package's ``training_utils.sid``). On held-out photographs (val-set14 centre crops, never used to train), each
crop is noised once per noise level, ``y = x + sigma n`` (the same ``n`` for every method), and mapped back by

- ``posterior mean``: the teacher's single call D(y, sigma), which is also the student BEFORE distillation (the
  student starts as a copy of the teacher);
- ``teacher ODE``: the teacher's 10-step DPM-Solver++(2M) PF-ODE solve (perceptual decoding's ``medium`` preset);
- ``teacher SDE``: the teacher's 25-step Euler-Maruyama reverse SDE (a posterior sample);
- each student: its one call G(y, sigma) = D_student(y, sigma).

Per noise level it reports, against the clean source: PSNR, SSIMULACRA2 and Butteraugli (3-norm, where
``butteraugli_main`` is installed); against the teacher ODE's output from the same ``y``: PSNR; two patch
statistics of realism: the high-frequency energy ratio (mean squared Laplacian of the output over the source's:
1 is the source's sharpness, a posterior mean is below 1) and the sliced Wasserstein distance between the output's
and the sources' 8x8 patches (0 is the sources' patch distribution); and the time per crop, as seconds and as a
multiple of one call.

Example (about 6 minutes on 2 CPU cores):
    python benchmarks/decode_one_step.py --student full=decode-one-step/student --student lora=decode-lora/student
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import EDMEulerScheduler, UNet2DModel
from PIL import Image
from tqdm.auto import tqdm

from rp_diffusers.decode.denoisers import make_denoiser
from rp_diffusers.decode.solvers import karras_sigmas, sample_dpmpp_2m, sample_euler_maruyama
from rp_diffusers.metrics.compute import compute_metrics
from rp_diffusers.metrics.psnr import quantize_8bit
from rp_diffusers.pipelines.perceptual_decode import DEFAULT_DECODE_MODEL_DIR
from rp_diffusers.utils.files import write_json
from rp_diffusers.utils.image import list_images, load_image, pil_to_tensor

TEACHER_ODE_STEPS = 10
TEACHER_SDE_STEPS = 25


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(DEFAULT_DECODE_MODEL_DIR), help="PerceptualDecodePipeline folder")
    parser.add_argument(
        "--student", action="append", default=[], help="NAME=FOLDER of a distilled UNet2DModel (repeatable)"
    )
    parser.add_argument("--images", default="../shared/data/val-set14", help="held-out photographs (not Kodak)")
    parser.add_argument("--crop", type=int, default=224, help="centre crop side (a multiple of 16)")
    parser.add_argument("--sigmas", default="0.05,0.1,0.2", help="noise levels in [-1, 1] pixel units")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure_image", default="zebra", help="the crop shown side by side")
    parser.add_argument("--output", default="benchmarks/results/decode_one_step.json")
    args = parser.parse_args(argv)
    args.sigmas = [float(s) for s in args.sigmas.split(",")]
    args.student = dict(item.split("=", 1) for item in args.student)
    if args.crop % 16:
        raise ValueError("--crop must be a multiple of 16 (the model's downsampling)")
    if "kodak" in args.images.lower():
        raise ValueError("Kodak is the test set of the methods, not of this comparison: use held-out photographs")
    return args


def centre_crops(folder: str, size: int) -> tuple[list[str], torch.Tensor]:
    names, crops = [], []
    for path in list_images(folder):
        image = load_image(path)
        if min(image.size) < size:
            continue
        left, top = (image.width - size) // 2, (image.height - size) // 2
        crops.append(pil_to_tensor(image.crop((left, top, left + size, top + size))))
        names.append(path.stem)
    if not crops:
        raise ValueError(f"no photograph of at least {size}x{size} px in {folder}")
    return names, torch.cat(crops)


def denoiser_of(unet: UNet2DModel, scheduler):
    unet.eval().requires_grad_(False)
    return make_denoiser(lambda sample, t: unet(sample, t, return_dict=False)[0], scheduler)


def laplacian_energy(images: torch.Tensor) -> torch.Tensor:
    """Per image, the mean squared response of the 3x3 Laplacian on the luma of [0, 1] images."""
    luma = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(luma, kernel).square().mean(dim=(1, 2, 3))


def patches(images: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Every non-overlapping size x size RGB patch of [0, 1] images, flattened: (P, 3 size^2)."""
    unfolded = F.unfold(images, size, stride=size)  # (N, 3 s^2, L)
    return unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced W1 between two point clouds (equal quantile grids of the 1-D projections)."""
    generator = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(a.shape[1], projections, generator=generator), dim=0)
    quantiles = torch.linspace(0, 1, 512)
    qa = torch.quantile(a @ directions, quantiles, dim=0)
    qb = torch.quantile(b @ directions, quantiles, dim=0)
    return float((qa - qb).abs().mean())


def timed(fn):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - start


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    scheduler = EDMEulerScheduler.from_pretrained(args.teacher, subfolder="scheduler")
    teacher = denoiser_of(UNet2DModel.from_pretrained(args.teacher, subfolder="unet"), scheduler)
    students = {
        name: denoiser_of(UNet2DModel.from_pretrained(folder), scheduler) for name, folder in args.student.items()
    }
    names, sources = centre_crops(args.images, args.crop)
    methods = ["posterior mean (1 call)", f"teacher ODE ({TEACHER_ODE_STEPS})", f"teacher SDE ({TEACHER_SDE_STEPS})"]
    methods += [f"student {name} (1 call)" for name in students]
    metric_names = ("psnr", "ssimulacra2", "butteraugli_3norm")

    report = {"images": Path(args.images).name, "crops": names, "crop": args.crop, "levels": []}
    figure = {}
    for sigma in args.sigmas:
        outputs = {m: [] for m in methods}
        seconds = {m: 0.0 for m in methods}
        for index in tqdm(range(len(names)), desc=f"sigma={sigma}"):
            x = sources[index : index + 1] * 2 - 1
            generator = torch.Generator().manual_seed(args.seed * 1000 + index)
            y = x + sigma * torch.randn(x.shape, generator=generator)
            ode = karras_sigmas(sigma, teacher.sigma_min, TEACHER_ODE_STEPS)
            sde = karras_sigmas(sigma, teacher.sigma_min, TEACHER_SDE_STEPS)
            runs = {
                methods[0]: partial(teacher, y, sigma),
                methods[1]: partial(sample_dpmpp_2m, teacher, y, ode),
                methods[2]: partial(sample_euler_maruyama, teacher, y, sde, generator),
            }
            for name, student in students.items():
                runs[f"student {name} (1 call)"] = partial(student, y, sigma)
            for method, run in runs.items():
                out, took = timed(run)
                outputs[method].append(quantize_8bit((out * 0.5 + 0.5).clamp(0, 1)))
                seconds[method] += took
            if names[index] == args.figure_image and sigma == max(args.sigmas):
                figure = {
                    "source": sources[index : index + 1],
                    "noised": (y * 0.5 + 0.5).clamp(0, 1),
                    **{m: outputs[m][-1] for m in methods},
                }
        reference = outputs[methods[1]]
        source_patches = patches(sources)
        rows = {}
        for method in methods:
            images = torch.cat(outputs[method])
            scores = compute_metrics(sources, images, metric_names)
            rows[method] = {
                **{k: float(np.mean(v)) for k, v in scores.items()},
                "psnr_to_teacher_ode": float(
                    np.mean(compute_metrics(torch.cat(reference), images, ("psnr",))["psnr"])
                ),
                "hf_energy_ratio": float((laplacian_energy(images) / laplacian_energy(sources)).mean()),
                "patch_swd_x100": 100 * sliced_wasserstein(patches(images), source_patches),
                "seconds_per_crop": seconds[method] / len(names),
            }
        one_call = rows[methods[0]]["seconds_per_crop"]
        for row in rows.values():
            row["time_vs_one_call"] = row["seconds_per_crop"] / one_call
        report["levels"].append({"sigma": sigma, "methods": rows})
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "torch_threads": args.threads}
    output = Path(args.output)
    write_json(output, report)
    print_tables(report)
    if figure:
        crop_figure(figure, output.with_name(output.stem + "_crops.png"))
    return report


def print_tables(report: dict) -> None:
    for level in report["levels"]:
        print(f"\nsigma = {level['sigma']} ({len(report['crops'])} crops of {report['crop']} px)")
        columns = list(next(iter(level["methods"].values())))
        print("| method | " + " | ".join(columns) + " |")
        print("| --- " * (len(columns) + 1) + "|")
        for method, row in level["methods"].items():
            print(f"| {method} | " + " | ".join(f"{row[c]:.4g}" for c in columns) + " |")


def crop_figure(panels: dict, path: Path, size: int = 96) -> None:
    """source | noised | each method, the top-left ``size`` px of the figure crop, upscaled 2x, labelled."""
    from PIL import ImageDraw

    tiles = []
    for label, image in panels.items():
        array = (image[0, :, :size, :size].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        tile = Image.fromarray(array).resize((2 * size, 2 * size), Image.NEAREST)
        canvas = Image.new("RGB", (2 * size, 2 * size + 16), "white")
        canvas.paste(tile, (0, 16))
        ImageDraw.Draw(canvas).text((2, 2), label[:32], fill="black")
        tiles.append(canvas)
    sheet = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height), "white")
    for index, tile in enumerate(tiles):
        sheet.paste(tile, (index * tile.width, 0))
    sheet.save(path)


if __name__ == "__main__":
    main(parse_args())
