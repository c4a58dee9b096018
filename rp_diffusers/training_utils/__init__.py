"""Library side of the training scripts in ``training/``: shared flags, data, checkpoints, loop, validation, cards.

The scripts keep only their models, losses, loop bodies and CLI; everything they share lives here and is tested
here. ``runner`` is their common scaffold (accelerator, checkpoint hooks, data, schedule, resume, batches, and the
tail of each update: logs, checkpoints and their rotation, validation, signals) and the one module that reads the
shared flags of :func:`add_training_args` from the parsed ``Namespace``; the rest take plain values.
"""

from .args import TRAINING_ARG_GROUPS, TRAINING_ARGS, add_training_args
from .checkpoints import (
    checkpoint_folders,
    checkpoint_step,
    epoch_loader,
    load_trainable_weights,
    resolve_resume_checkpoint,
    resume_position,
    rotate_checkpoints,
    save_args,
    save_trainable_weights,
    save_training_state,
    stop_on_signals,
    trainable_state_dict,
)
from .data import (
    RandomCropImageDataset,
    collate_images,
    load_image_dataset,
    random_crop,
    step_generator,
)
from .loop import PreparedModel, build_optimizer, is_sharded, log_images, move_model
from .runner import (
    check_resolution,
    check_training_args,
    checkpoint_due,
    end_run,
    end_stopped_run,
    finish_update,
    make_accelerator,
    make_lr_schedule,
    make_train_dataloader,
    optimizer_step,
    push_output_folder,
    register_weight_hooks,
    resume,
    scaled_learning_rate,
    stop_requested,
    train_steps,
    training_batches,
    validation_due,
)
from .validation import (
    VALIDATION_METRICS,
    codec_validation,
    load_validation_metric_models,
    render_training_card,
    validation_table,
)

__all__ = [
    "PreparedModel",
    "RandomCropImageDataset",
    "TRAINING_ARGS",
    "TRAINING_ARG_GROUPS",
    "VALIDATION_METRICS",
    "add_training_args",
    "build_optimizer",
    "check_resolution",
    "check_training_args",
    "checkpoint_due",
    "checkpoint_folders",
    "checkpoint_step",
    "codec_validation",
    "collate_images",
    "end_run",
    "end_stopped_run",
    "epoch_loader",
    "finish_update",
    "is_sharded",
    "load_image_dataset",
    "load_trainable_weights",
    "load_validation_metric_models",
    "log_images",
    "make_accelerator",
    "make_lr_schedule",
    "make_train_dataloader",
    "move_model",
    "optimizer_step",
    "push_output_folder",
    "random_crop",
    "register_weight_hooks",
    "render_training_card",
    "resolve_resume_checkpoint",
    "resume",
    "resume_position",
    "rotate_checkpoints",
    "save_args",
    "save_trainable_weights",
    "save_training_state",
    "scaled_learning_rate",
    "step_generator",
    "stop_on_signals",
    "stop_requested",
    "train_steps",
    "trainable_state_dict",
    "training_batches",
    "validation_due",
    "validation_table",
]
