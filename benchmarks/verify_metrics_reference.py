"""Run the reference metric packages with seeded weights and store their outputs as our test fixture.

Runs in a THROWAWAY virtualenv (the reference packages pull torchvision, which must never enter the main
environment)::

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.14.1 torchvision==0.29.1 lpips dists-pytorch pytorch-fid torch-fidelity numpy
    PYTHONPATH=. /tmp/refenv/bin/python benchmarks/verify_metrics_reference.py \
        --output tests/fixtures/metrics_reference.json

How the references get our weights: exactly as a user's installation gets the official ones. The seeded weights
(`rp_diffusers.metrics.testing.seeded_state_dict`) are written in the official file formats into a temporary
torch-hub cache (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``, ``pt_inception-2015-12-05-6726825d.pth``,
with zero classifier heads) and an lpips ``alex.pth``/``vgg.pth``; `lpips`, `DISTS_pytorch` and `pytorch-fid` then
load them through their own constructors (DISTS's alpha/beta are assigned as its constructor does). Every
reference parameter is checked against ours through the key maps stored in the fixture. The fixture holds only
seeds, shapes, checksums and outputs (no weights). It also prints our implementation's differences in this
environment; ``tests/test_metrics.py`` repeats the comparison in the main environment.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from rp_diffusers.metrics.testing import (
    checksum,
    seeded_features,
    seeded_image_pair,
    seeded_network,
    seeded_state_dict,
)

IMAGE_CASES = [{"shape": [3, 3, 64, 64], "seed": 1}, {"shape": [2, 3, 67, 45], "seed": 2}]
INCEPTION_CASES = [{"shape": [2, 3, 64, 64], "seed": 11}, {"shape": [1, 3, 299, 299], "seed": 12}]
INCEPTION_STRIDE = 16
FEATURE_CASES = [
    {"count": 200, "dim": 64, "seeds": [21, 22], "shift": 0.1},
    {"count": 60, "dim": 128, "seeds": [23, 24], "shift": 0.05},
]
KID_CASES = [{"subsets": 20, "subset_size": 50}, {"subsets": 3, "subset_size": 200}]
INCEPTION_BLOCKS = [
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"],
    ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
    ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
    ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
]
KEY_MAPS = {
    "lpips": {
        r"^net\.slice\d\.(\d+)\.(weight|bias)$": r"features.\1.\2",
        r"^lins?\.?(\d)\.model\.1\.weight$": r"lin\1.weight",
        r"^scaling_layer\.(shift|scale)$": r"(constant \1)",
    },
    "dists": {
        r"^stage\d\.(\d+)\.(weight|bias)$": r"features.\1.\2",
        r"^(alpha|beta)$": r"\1",
        r"^(mean|std|stage\d\.\d+\.filter)$": r"(constant \1)",
    },
    "pytorch_fid": {r"^blocks\.(\d)\.(\d+)\.(.*)$": "(block \\1, layer \\2 in INCEPTION_BLOCKS).\\3"},
}


def _our_key(family: str, key: str) -> str:
    if family == "pytorch_fid":
        block, layer, rest = re.match(r"^blocks\.(\d)\.(\d+)\.(.*)$", key).groups()
        return f"{INCEPTION_BLOCKS[int(block)][int(layer)]}.{rest}"
    for pattern, replacement in KEY_MAPS[family].items():
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise KeyError(f"{family}: no key map for {key}")


def _check_same_weights(family: str, reference: torch.nn.Module, ours: dict[str, torch.Tensor]) -> int:
    """Assert every reference parameter equals ours under the key map; return how many were compared."""
    compared = 0
    for key, value in reference.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        mapped = _our_key(family, key)
        if mapped.startswith("(constant"):
            continue
        if not torch.equal(value.cpu().float(), ours[mapped]):
            raise AssertionError(f"{family}: {key} -> {mapped} differs: the reference did not load our weights")
        compared += 1
    return compared


def _torchvision_file(hub: Path, arch: str, features: dict[str, torch.Tensor]) -> None:
    import torchvision

    model = {"alexnet": torchvision.models.alexnet, "vgg16": torchvision.models.vgg16}[arch](weights=None)
    state = {key: torch.zeros_like(value) for key, value in model.state_dict().items()}
    state.update({key: value for key, value in features.items() if key.startswith("features.")})
    name = {"alexnet": "alexnet-owt-7be5be79.pth", "vgg16": "vgg16-397923af.pth"}[arch]
    torch.save(state, hub / "checkpoints" / name)


def _images(case):
    return seeded_image_pair(tuple(case["shape"]), case["seed"])


def _run_pair_metric(name, reference_fn, ours_model, cases, table):
    out = []
    for case in cases:
        x, y = _images(case)
        with torch.no_grad():
            ref = reference_fn(x, y).reshape(-1).double()
            ours = ours_model(x, y).reshape(-1).double()
        table.append(
            (name, str(case["shape"]), (ours - ref).abs().max().item(), ((ours - ref).abs() / ref.abs()).max().item())
        )
        out.append({**case, "input_checksum": checksum(x) + checksum(y), "reference": ref.tolist()})
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="tests/fixtures/metrics_reference.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    import lpips
    from DISTS_pytorch import DISTS
    from pytorch_fid.fid_score import calculate_frechet_distance
    from pytorch_fid.inception import InceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    from rp_diffusers.metrics.fid import fid_from_features, kid_from_features

    fixture = {
        "generated_by": "benchmarks/verify_metrics_reference.py",
        "versions": {
            p: version(p)
            for p in (
                "torch",
                "torchvision",
                "lpips",
                "dists-pytorch",
                "pytorch-fid",
                "torch-fidelity",
                "numpy",
                "scipy",
            )
        },
        "seed": args.seed,
        "recipe": "weights: rp_diffusers.metrics.testing.seeded_state_dict(name, seed); images: seeded_image_pair(shape, seed); "
        "features: seeded_features(count, dim, seed, shift) for the second set, shift 0 for the first",
        "key_maps": KEY_MAPS | {"inception_blocks": INCEPTION_BLOCKS},
        "weights_checksum": {},
    }
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        hub = Path(tmp) / "hub"
        (hub / "checkpoints").mkdir(parents=True)
        torch.hub.set_dir(str(hub))

        for net, arch in (("alex", "alexnet"), ("vgg", "vgg16")):
            name = f"lpips_{net}"
            ours_sd = seeded_state_dict(name, args.seed)
            fixture["weights_checksum"][name] = checksum(ours_sd)
            _torchvision_file(hub, arch, ours_sd)
            lins = Path(tmp) / f"{net}.pth"
            torch.save({f"lin{k}.model.1.weight": ours_sd[f"lin{k}.weight"] for k in range(5)}, lins)
            reference = lpips.LPIPS(
                net=net, version="0.1", pretrained=True, pnet_rand=False, model_path=str(lins), verbose=False
            ).eval()
            compared = _check_same_weights("lpips", reference, ours_sd)
            fixture[name] = {
                "tensors_compared": compared,
                "cases": _run_pair_metric(
                    name,
                    lambda x, y, r=reference: r(x, y, normalize=True),
                    seeded_network(name, args.seed),
                    IMAGE_CASES,
                    table,
                ),
            }

        ours_sd = seeded_state_dict("dists", args.seed)
        fixture["weights_checksum"]["dists"] = checksum(ours_sd)
        _torchvision_file(hub, "vgg16", ours_sd)
        reference = DISTS(load_weights=False).eval()
        reference.alpha.data, reference.beta.data = ours_sd["alpha"].clone(), ours_sd["beta"].clone()
        compared = _check_same_weights("dists", reference, ours_sd)
        fixture["dists"] = {
            "tensors_compared": compared,
            "cases": _run_pair_metric(
                "dists", lambda x, y: reference(x, y), seeded_network("dists", args.seed), IMAGE_CASES, table
            ),
        }

        ours_sd = seeded_state_dict("fid_inception", args.seed)
        fixture["weights_checksum"]["fid_inception"] = checksum(ours_sd)
        state = dict(ours_sd)
        state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
        torch.save(state, hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
        reference = InceptionV3([3]).eval()
        compared = _check_same_weights("pytorch_fid", reference, ours_sd)
        ours_model = seeded_network("fid_inception", args.seed)
        cases = []
        for case in INCEPTION_CASES:
            x, _ = _images(case)
            with torch.no_grad():
                ref = reference(x)[0].flatten(1).double()
                ours = ours_model(x).double()
            table.append(
                (
                    "fid_inception",
                    str(case["shape"]),
                    (ours - ref).abs().max().item(),
                    ((ours - ref).abs() / ref.abs().max()).max().item(),
                )
            )
            cases.append(
                {
                    **case,
                    "input_checksum": checksum(x),
                    "stride": INCEPTION_STRIDE,
                    "reference_strided": ref[:, ::INCEPTION_STRIDE].tolist(),
                    "reference_sum": ref.sum(1).tolist(),
                    "reference_norm": ref.norm(dim=1).tolist(),
                }
            )
        fixture["fid_inception"] = {"tensors_compared": compared, "cases": cases}

    fid_cases, kid_cases = [], []
    for case in FEATURE_CASES:
        a = seeded_features(case["count"], case["dim"], case["seeds"][0])
        b = seeded_features(case["count"], case["dim"], case["seeds"][1], case["shift"])
        mu_a, mu_b = a.numpy().mean(axis=0), b.numpy().mean(axis=0)
        sigma_a, sigma_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
        ref_pytorch_fid = float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))
        ref_fidelity = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)[
            "frechet_inception_distance"
        ]
        ours = fid_from_features(a, b)
        table.append(
            (
                "fid vs pytorch-fid",
                f"{case['count']}x{case['dim']}",
                abs(ours - ref_pytorch_fid),
                abs(ours - ref_pytorch_fid) / abs(ref_pytorch_fid),
            )
        )
        table.append(
            (
                "fid vs torch-fidelity",
                f"{case['count']}x{case['dim']}",
                abs(ours - ref_fidelity),
                abs(ours - ref_fidelity) / abs(ref_fidelity),
            )
        )
        fid_cases.append(
            {
                **case,
                "features_checksum": checksum(a) + checksum(b),
                "pytorch_fid": ref_pytorch_fid,
                "torch_fidelity": ref_fidelity,
            }
        )
        for kid in KID_CASES:
            ref = kid_features_to_metric(
                a,
                b,
                kid_subsets=kid["subsets"],
                kid_subset_size=min(kid["subset_size"], case["count"]),
                rng_seed=2020,
                verbose=False,
            )
            ours = kid_from_features(
                a, b, num_subsets=kid["subsets"], subset_size=kid["subset_size"], seed=2020, return_std=True
            )
            ref_mean, ref_std = ref["kernel_inception_distance_mean"], ref["kernel_inception_distance_std"]
            table.append(
                (
                    "kid vs torch-fidelity",
                    f"{case['count']}x{case['dim']} s{kid['subset_size']}",
                    abs(ours[0] - ref_mean),
                    abs(ours[0] - ref_mean) / abs(ref_mean),
                )
            )
            kid_cases.append({**case, **kid, "torch_fidelity_mean": ref_mean, "torch_fidelity_std": ref_std})
    fixture["fid"], fixture["kid"] = fid_cases, kid_cases
    fixture["ours_in_reference_env"] = [dict(zip(("metric", "case", "max_abs", "max_rel"), row)) for row in table]

    print(f"{'metric':<24}{'case':<22}{'max abs diff':>14}{'max rel diff':>14}")
    for metric, case, abs_diff, rel_diff in table:
        print(f"{metric:<24}{case:<22}{abs_diff:>14.3e}{rel_diff:>14.3e}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
