"""``dpbeam train``: the tf.distribute training job over the export-sc shards.

Training is no Beam pipeline, but it is one of the commands: this module only
checks the inputs, builds the plan and hands over to :mod:`dpcore.trainer`.
Everything that can be wrong is checked before the first step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from dataclasses import replace

from dpcore.checkpoints import CheckpointError
from dpcore.config import Config
from dpcore.layout import ProjectLayout
from dpcore.locking import output_lock
from dpcore.profiling import pretrained_weights_file
from dpcore.training import TrainingError, TrainingPlan, checkpoint_name
from dpcore.storage import StoragePath, as_storage_path
from dpcore.tensorflow_runtime import load_tensorflow
from dpcore.training_data import ExportInfo, TrainingDataError

from beam_pipelines.context import CommandContext, UsageError, acceleration_options

logger = logging.getLogger(__name__)


def check_config(config: Config, pretrained_weights: StoragePath) -> None:
    """Refuse, before reading any data, a config that cannot train (also run by ``validate``)."""
    model = config.train.model
    generator = model.crop_generator
    if generator == "repeat_channel_crop_generator":
        raise TrainingError("crop_generator repeat_channel_crop_generator is for profiling with ImageNet models, "
                            "not for training; use sampled_crop_generator, online_labels_cropgen or "
                            "full_image_crop_generator")
    if generator == "full_image_crop_generator" and config.dataset.locations.mode != "full_image":
        raise TrainingError("crop_generator full_image_crop_generator needs dataset.locations.mode "
                            "'full_image' (and an export made in that mode)")
    if model.initialization == "imagenet" and not pretrained_weights.exists():
        raise TrainingError(f"train.model.initialization ImageNet needs the Keras ImageNet 'notop' weights for "
                            f"{model.name}, which cannot be downloaded here: put the file at {pretrained_weights} "
                            f"or pass --pretrained-weights FILE")


def pretrained_weights(layout: ProjectLayout, config: Config, given: str | None) -> StoragePath:
    model = config.train.model
    return as_storage_path(given) if given else pretrained_weights_file(layout.pretrained_dir, model.name,
                                                                        model.params.conv_blocks)


def check_inputs(config: Config, info: ExportInfo) -> None:
    """Refuse, before training, what cannot train on this export."""
    partition = config.train.partition
    if info.box_size != config.dataset.locations.box_size:
        raise TrainingError(f"the export at {info.folder} has {info.box_size}-pixel crops but "
                            f"dataset.locations.box_size is {config.dataset.locations.box_size}: re-export")
    if not info.counts.get("training"):
        raise TrainingError(f"no cell of the training split: no site has {partition.split_field} in "
                            f"{list(partition.training or [])} (export counts: {info.counts})")
    present = [label for label, n in info.label_counts.get("training", {}).items() if n > 0]
    if len(present) < 2:
        names = [info.labels[i] for i in present]
        raise TrainingError(f"the training split holds a single class {names}: a classifier needs two or more")
    frame = config.train.validation.frame
    if frame == "val" and not info.counts.get("validation"):
        raise TrainingError(f"train.validation.frame is 'val' but no cell has {partition.split_field} in "
                            f"{list(partition.validation or [])}; add validation values or set frame to 'train'")
    if config.train.model.checkpoint_policy == "best" and not info.counts.get(
            {"val": "validation", "train": "training", "all": "training"}[frame]):
        raise TrainingError("checkpoint_policy 'best' needs validation data")


def _use_cores(tf, cores: int) -> None:
    """``--cores N``: TensorFlow's thread pools (ops and tf.data's input pipeline share them) get N threads."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:  # the runtime started already in this process (a notebook, the tests)
        logger.warning("--cores %d: TensorFlow has already started in this process; its thread counts stay", cores)
        return
    logger.info("TensorFlow uses %d thread(s) per pool (--cores)", cores)


def _without_op_determinism() -> None:
    """A run without --seed starts as in a fresh process, even after a seeded run in this one (a notebook,
    the tests): determinism is process-wide once on, and XLA refuses some ops under it. TensorFlow has
    no public switch back, hence its config module's own function, when it exists."""
    from tensorflow.python.framework import config as tf_config  # noqa: PLC0415

    disable = getattr(tf_config, "disable_op_determinism", None)
    if disable is not None:
        disable()


def _remove_earlier_run(layout: ProjectLayout, emit) -> None:
    """``--epoch 1``: the checkpoints, backup, log and curves of an earlier run in this experiment are removed
    (the curves are redrawn only every CURVES_EVERY_SECONDS: an earlier run's must not stand beside this one's log)."""
    folder = layout.checkpoint_dir
    earlier = folder.glob("checkpoint_*.hdf5")
    backup = folder / "backup"
    if not earlier and not backup.exists():
        return
    for path in earlier:
        path.remove()
    backup.remove(recursive=True)
    (layout.logs_dir / "log.csv").remove()
    (layout.logs_dir / "training_curves.png").remove()
    (layout.logs_dir / "soft_labels").remove(recursive=True)
    emit(f"train: --epoch 1 starts over: removed {len(earlier)} checkpoint(s) and the backup of an earlier run "
         f"from {folder}")


def run_command(context: CommandContext, args: argparse.Namespace, emit) -> int:
    config = context.load_config("train")
    context = context.with_config_paths(config)
    context.select_gpu()
    layout = context.layout
    pretrained = pretrained_weights(layout, config, args.pretrained_weights)
    try:
        check_config(config, pretrained)
        info = ExportInfo.read(layout.single_cells_dir)
        check_inputs(config, info)
    except (TrainingDataError, TrainingError) as error:
        raise UsageError(str(error)) from error

    batch_size, acceleration = acceleration_options(args, config.train.model.params.batch_size,
                                                    "train.model.params.batch_size")
    if acceleration.xla and args.seed is not None:
        raise UsageError("--seed makes every operation deterministic, and XLA has no deterministic version of "
                         "some gradients (e.g. max pooling's): a repeatable run cannot use --xla; drop one of them")

    tf = load_tensorflow()  # TensorFlow loads only when training really starts
    if context.cores:
        _use_cores(tf, context.cores)
    import keras  # noqa: PLC0415

    from dpcore.trainer import DataSettings, Trainer  # noqa: PLC0415

    seed = 0 if args.seed is None else args.seed
    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
        tf.config.experimental.enable_op_determinism()
    else:
        _without_op_determinism()
    model = config.train.model
    plan = replace(TrainingPlan.from_config(config, info.num_classes,
                                            (info.box_size, info.box_size, info.channels), pretrained.url),
                   batch_size=batch_size)
    sampling, validation = config.train.sampling, config.train.validation
    data = DataSettings(cache_size=sampling.cache_size, workers=sampling.workers, factor=sampling.factor,
                        augmentations=model.augmentations, validation_frame=validation.frame,
                        validation_batch_size=validation.batch_size,
                        sample_first_crops=validation.sample_first_crops, seed=seed)
    try:
        trainer = Trainer(plan, info, data, layout, info.labels, acceleration=acceleration)
        # --epoch N > 1: DeepProfiler's restart from checkpoint N-1. An explicit --epoch 1 starts over: the
        # earlier run's checkpoints and backup go first (under the lock, below), so none of them is ever taken
        # for this run's. Without --epoch: resume an interrupted run.
        first = args.epoch or 1
        if first > 1:
            trainer.start_from_checkpoint(first)
        elif args.epoch is None:
            resumed = trainer.restore_backup()
            if resumed is not None:
                first = resumed
    except (TrainingError, CheckpointError) as error:
        raise UsageError(str(error)) from error
    if first > plan.epochs:  # one line, not a "continuing" line for a run that has nothing left
        emit(f"train: all {plan.epochs} epochs are done already ({layout.checkpoint_dir}); nothing to train "
             f"(--epoch K trains again from epoch K; --epoch 1 starts over)")
        return 0
    if first > (args.epoch or 1):
        emit(f"train: continuing an interrupted run after epoch {first - 1} ({layout.checkpoint_dir / 'backup'})")
    if trainer.chief:
        classes = json.dumps({"label_field": config.train.partition.label_field, "classes": list(info.labels)},
                             indent=1)
        (layout.experiment_dir / "classes.json").write_text(classes)
        (layout.checkpoint_dir / "classes.json").write_text(classes)
    emit(f"train: {plan.model_name} (conv_blocks {plan.conv_blocks}) on {info.counts.get('training', 0)} training "
         f"cells, {info.num_classes} classes {list(info.labels)}, epochs {first}..{plan.epochs}, "
         f"global batch {plan.batch_size}, {trainer.strategy.num_replicas_in_sync} replica(s) "
         f"({type(trainer.strategy).__name__}), {acceleration.describe()}")
    # Only the chief writes; with several workers the others must not contend for the lock.
    with output_lock(layout.checkpoint_dir, "train") if trainer.chief else contextlib.nullcontext():
        if args.epoch == 1 and trainer.chief:
            _remove_earlier_run(layout, emit)  # while holding the lock: never under another run's feet
        rows = trainer.run(first)
    last = rows[-1]
    emit("last epoch: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "epoch"))
    saved = sorted(p.name for p in layout.checkpoint_dir.glob("checkpoint_*.hdf5"))
    emit(f"checkpoints: {', '.join(saved) or 'none'} in {layout.checkpoint_dir}; log: {layout.logs_dir / 'log.csv'}; "
         f"curves: {layout.logs_dir / 'training_curves.png'}")
    if config.profile.checkpoint and config.profile.checkpoint not in saved:
        emit(f"note: profile.checkpoint is {config.profile.checkpoint!r}, which this run did not write "
             f"(it wrote {checkpoint_name(plan.epochs)} style names)")
    return 0

