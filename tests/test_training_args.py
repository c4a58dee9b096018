"""Training flags: the shared groups of ``add_training_args`` and the parsed defaults of the training scripts."""

import argparse
from pathlib import Path
from unittest import mock

import pytest

from rp_diffusers.training_utils import TRAINING_ARG_GROUPS, TRAINING_ARGS, add_training_args
from rp_diffusers.utils.testing import load_script

TRAINING = Path(__file__).resolve().parents[1] / "training"

# the smallest command line each script accepts
REQUIRED_ARGV = {
    "distill_cid": ["--pretrained_model_name_or_path", "model", "--train_data_dir", "photos"],
    "finetune_rp": ["--pretrained_model_name_or_path", "model", "--train_data_dir", "photos"],
    "train_corrdiff": ["--phase", "codec", "--output_dir", "out", "--train_data_dir", "photos"],
}
ONE_STEP_GROUPS = {"pretrained", "lora", "data", "cropping", "training", "adamw", "outputs", "validation", "hub"}
SAME_EVERYWHERE = {
    "seed": 0,
    "max_grad_norm": 1.0,
    "lr_warmup_steps": 0,
    "mixed_precision": None,
    "dataloader_num_workers": 0,
    "random_flip": False,
    "logging_dir": "logs",
    "checkpointing_steps": 500,
    "checkpoints_total_limit": None,
    "resume_from_checkpoint": None,
}
SCRIPT_GROUPS = {
    "distill_cid": ONE_STEP_GROUPS,
    "finetune_rp": ONE_STEP_GROUPS,
    "train_corrdiff": {"data", "training", "outputs"},
}


def _parse_through_helper(name: str) -> tuple[argparse.Namespace, argparse.ArgumentParser, list[tuple], list[str]]:
    """Import ``training/<name>.py``, parse its minimal command line and record every ``add_training_args`` call."""
    module = load_script(TRAINING / f"{name}.py", f"rp_training_args_{name}")
    calls, added, parsers = [], [], []

    def recording(parser, *groups, **kwargs):
        calls.append(groups)
        parsers.append(parser)
        names = add_training_args(parser, *groups, **kwargs)
        added.extend(names)
        return names

    with mock.patch.object(module, "add_training_args", recording):
        args = module.parse_args(REQUIRED_ARGV[name])
    assert len({id(p) for p in parsers}) == 1, "all shared flags go to the script's own parser"
    return args, parsers[0], calls, added


@pytest.fixture(scope="module")
def scripts():
    return {name: _parse_through_helper(name) for name in REQUIRED_ARGV}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "distill_cid",
            {
                "learning_rate": 1e-5,
                "train_batch_size": 1,
                "adam_beta1": 0.0,
                "adam_weight_decay": 0.0,
                "resolution": 512,
                "max_train_steps": None,
                "output_dir": "rp-onestep",
                "report_to": "tensorboard",
                "lr_scheduler": "constant",
                "tracker_project_name": "rp-distill-cid",
            },
        ),
        (
            "finetune_rp",
            {
                "learning_rate": 1e-4,
                "train_batch_size": 4,
                "adam_beta1": 0.9,
                "adam_weight_decay": 1e-2,
                "resolution": 512,
                "max_train_steps": None,
                "output_dir": "rp-lora",
                "report_to": "tensorboard",
                "rate_weighting": "fixed",
                "slope_delta": 5.0,
                "surrogate_rounding": None,
            },
        ),
        (
            "train_corrdiff",
            {
                "learning_rate": 1e-4,
                "train_batch_size": 8,
                "resolution": 256,
                "max_train_steps": 1000,
                "output_dir": "out",
                "report_to": "none",
                "logging_steps": 20,
            },
        ),
    ],
)
def test_training_args_script_defaults_unchanged(scripts, name, expected):
    args = vars(scripts[name][0])
    assert {key: args[key] for key in expected} == expected
    assert {key: args[key] for key in SAME_EVERYWHERE} == SAME_EVERYWHERE


@pytest.mark.parametrize("name", list(REQUIRED_ARGV))
def test_training_args_scripts_take_shared_flags_from_helper(scripts, name):
    _, parser, calls, added = scripts[name]
    assert {group for groups in calls for group in groups} == SCRIPT_GROUPS[name]
    assert sorted(added) == sorted(flag for group in SCRIPT_GROUPS[name] for flag in TRAINING_ARG_GROUPS[group])
    # no shared flag is declared a second time by hand, and each keeps the table's type, choices and nargs
    actions = {action.dest: action for action in parser._actions}
    assert set(TRAINING_ARGS) & set(actions) == set(added)
    for flag in added:
        spec = TRAINING_ARGS[flag]
        assert actions[flag].option_strings == [f"--{flag}"]
        assert (actions[flag].type, actions[flag].choices) == (spec.get("type"), spec.get("choices")), flag
        assert actions[flag].nargs == spec.get("nargs", 0 if spec.get("action") == "store_true" else None), flag


def test_training_args_common_groups_in_all_three_scripts(scripts):
    option_sets = [
        {s for action in scripts[name][1]._actions if action.dest in TRAINING_ARGS for s in action.option_strings}
        for name in REQUIRED_ARGV
    ]
    common = {f"--{flag}" for group in ("data", "training", "outputs") for flag in TRAINING_ARG_GROUPS[group]}
    assert all(common <= options for options in option_sets)
    assert option_sets[0] == option_sets[1]  # the two one-step scripts share every group


def test_add_training_args_defaults_and_helps_apply_per_flag():
    parser = argparse.ArgumentParser()
    names = add_training_args(
        parser, "training", "outputs", defaults={"learning_rate": 3e-5, "output_dir": "x"}, helps={"seed": "Seed."}
    )
    assert names == [*TRAINING_ARG_GROUPS["training"], *TRAINING_ARG_GROUPS["outputs"]]
    args = parser.parse_args(["--train_batch_size", "2"])
    assert (args.learning_rate, args.output_dir, args.train_batch_size, args.seed) == (3e-5, "x", 2, 0)
    assert next(a.help for a in parser._actions if a.dest == "seed") == "Seed."


def test_add_training_args_required_flag_has_no_default():
    parser = argparse.ArgumentParser()
    add_training_args(parser, "outputs", required=["output_dir"])
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert parser.parse_args(["--output_dir", "o"]).output_dir == "o"


@pytest.mark.parametrize(
    ("groups", "kwargs", "message"),
    [
        (("optimizer",), {}, "unknown flag group"),
        (("data",), {"defaults": {"learning_rate": 1.0}}, "not in the groups"),
        (("data",), {"helps": {"seed": "x"}}, "not in the groups"),
        (("outputs",), {}, "no common default"),
        (("outputs",), {"defaults": {"output_dir": "o"}, "required": ["output_dir"]}, "both required"),
    ],
)
def test_add_training_args_rejects_bad_requests(groups, kwargs, message):
    with pytest.raises(ValueError, match=message):
        add_training_args(argparse.ArgumentParser(), *groups, **kwargs)


def test_training_args_groups_partition_the_table():
    flags = [flag for group in TRAINING_ARG_GROUPS.values() for flag in group]
    assert sorted(flags) == sorted(TRAINING_ARGS)
