"""The training run: model, optimizer and loop under a ``tf.distribute`` strategy.

Outputs (chief worker only) in ``outputs/<exp>/``: ``checkpoint/checkpoint_{epoch:04d}.hdf5``,
``checkpoint/classes.json`` and ``classes.json``, ``logs/log.csv``, ``logs/training_curves.png``,
``logs/soft_labels/NNNN.parquet`` (online labels: each training cell's soft label after epoch NNNN),
TensorBoard scalars in ``summaries/``, and
``checkpoint/backup/`` -- the state after the last finished epoch (weights, optimizer, schedule),
from which a killed or pre-empted run continues when started again.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from dpcore import models
from dpcore.acceleration import Acceleration
from dpcore.charts import training_curves
from dpcore.checkpoints import CheckpointError, load_weights_by_name, read_layer_weights, save_weights
from dpcore.layout import ProjectLayout
from dpcore.progress import Progress, progress_seconds
from dpcore.storage import StoragePath
from dpcore.tensorflow_runtime import load_tensorflow
from dpcore.training import (KERAS_TOP_K, EpochSums, PlateauController, TrainingError, TrainingPlan,
                             checkpoint_name, initial_soft_labels, is_chief, read_log, update_soft_labels,
                             write_log)
from dpcore.training_data import (ExportInfo, cells_per_epoch, numbered_records, parsed_records, steps_for,
                                  training_dataset, validation_dataset)

logger = logging.getLogger(__name__)

_NOT_BUILT = object()  # Trainer._validation_batches before the first validation (None: no cells to validate)

# logs/training_curves.png is redrawn after an epoch only when this long has passed since the last drawing,
# and always after the last epoch. Drawing the four panels costs ~0.4 s of CPU: nothing against an epoch of
# minutes, but most of the bookkeeping of epochs that take seconds (small models, tests). log.csv, the
# checkpoints and the backup are still written after every epoch; the picture is at most this stale.
CURVES_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class DataSettings:
    cache_size: int
    workers: int
    factor: float
    augmentations: bool
    validation_frame: str
    validation_batch_size: int
    sample_first_crops: bool
    seed: int


def imagenet_initialise(model, plan: TrainingPlan) -> None:
    """Load ImageNet weights from a local file; replicate the first convolution's RGB
    filters across the configured channels (DeepProfiler's trick), scaled by 3/C so
    activations keep their size."""
    if not plan.pretrained_weights or not StoragePath(plan.pretrained_weights).exists():
        raise TrainingError(
            f"initialization ImageNet needs the Keras ImageNet weights file for {plan.model_name}, which cannot "
            f"be downloaded here: expected {plan.pretrained_weights} (or pass --pretrained-weights FILE)")
    stored = read_layer_weights(StoragePath(plan.pretrained_weights))
    loaded = adapted = 0
    channels = plan.input_shape[-1]
    for layer in model.layers:
        arrays = stored.get(layer.name)
        if not arrays or len(arrays) != len(layer.weights):
            continue
        values = []
        for array, variable in zip(arrays, layer.weights):
            target = tuple(variable.shape)
            if array.shape == target:
                values.append(array)
            elif array.ndim == 4 and array.shape[2] == 3 and target[:2] + target[3:] == array.shape[:2] + array.shape[3:]:
                values.append(np.take(array, np.arange(channels) % 3, axis=2) * (3.0 / channels))
                adapted += 1
            else:
                values = None
                break
        if values is not None:
            for variable, value in zip(layer.weights, values):
                variable.assign(value)
            loaded += 1
    if not loaded:
        raise TrainingError(f"{plan.pretrained_weights}: no layer matches {plan.model_name}")
    logger.info("ImageNet initialisation: %d layer(s) loaded, %d input convolution(s) replicated to %d channels",
                loaded, adapted, channels)


class Trainer:
    def __init__(self, plan: TrainingPlan, info: ExportInfo, data: DataSettings, layout: ProjectLayout,
                 labels: tuple[str, ...], strategy=None, acceleration: Acceleration | None = None):
        tf = load_tensorflow()
        from dpcore.training import choose_strategy  # noqa: PLC0415

        self.tf = tf
        self.plan, self.info, self.data, self.layout, self.labels = plan, info, data, layout, labels
        self.acceleration = acceleration = acceleration or Acceleration()
        self.strategy = strategy or choose_strategy()
        self.chief = is_chief()
        with self.strategy.scope():
            with acceleration.building():
                self.model = models.classifier(plan.model_name, plan.input_shape, plan.num_classes,
                                               plan.conv_blocks, regularize=plan.optimizer == "sgd",
                                               feature_dim=plan.feature_dim)
            if plan.initialization == "imagenet":
                imagenet_initialise(self.model, plan)
            import keras  # noqa: PLC0415
            if plan.optimizer == "adam":  # DeepProfiler's cnn, Keras' defaults otherwise
                self.optimizer = keras.optimizers.Adam(learning_rate=plan.learning_rate)
            else:
                self.optimizer = keras.optimizers.SGD(learning_rate=plan.learning_rate, momentum=0.9,
                                                      nesterov=True)
            if acceleration.loss_scaling:  # float16 gradients underflow unless the loss is scaled up first
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
            self.loss = keras.losses.CategoricalCrossentropy(label_smoothing=plan.label_smoothing,
                                                             reduction="none")
            # Online labels: one soft label per training cell (DeepProfiler's), row = the cell's number in
            # manifest order; N x K float32 in memory, as in DeepProfiler.
            self.first_rows = info.first_rows("training") if plan.online_labels else None
            cells = info.cells(("training",)) if plan.online_labels else 1
            self.soft_labels = tf.Variable(tf.zeros((cells, plan.num_classes)), trainable=False, name="soft_labels")
        self.rows = []
        self._curves_drawn_at = time.monotonic()  # of the last drawing, or of the start (reset in run())
        self._summaries_staging: str | None = None
        self.plateau = PlateauController(plan.learning_rate)
        self.best_validation = float("inf")
        self._train_step = self._build_train_step()
        # One trace for every batch size: validation's last batch is usually smaller, and tracing the
        # network's forward pass again for it costs seconds of Python for an EfficientNet.
        self._eval_step = tf.function(lambda images: self.model(images, training=False),
                                      input_signature=[tf.TensorSpec((None, *plan.input_shape), tf.float32)],
                                      jit_compile=acceleration.xla, autograph=False)
        # A validation batch's metrics and loss in one compiled call rather than a dozen eager ops.
        self._validation_step = tf.function(
            self._validation_sums, autograph=False,
            input_signature=[tf.TensorSpec((None, *plan.input_shape), tf.float32),
                             tf.TensorSpec((None, plan.num_classes), tf.float32), tf.TensorSpec((None,), tf.int64)])
        # Built at the first validation and iterated again at each: rebuilt every epoch, its functions (the
        # balanced draw's scan among them) were traced again each time. With both, the cnn's 120 synthetic
        # validation crops took 0.2 s per epoch instead of 0.3-0.5 s (2026-12-02).
        self._validation_batches = _NOT_BUILT

    # ------------------------------------------------------------- steps
    def _sums(self, probabilities, onehot, labels):
        tf = self.tf
        probabilities = tf.cast(probabilities, tf.float32)
        k = self.plan.num_classes
        predicted = tf.argmax(probabilities, axis=1, output_type=tf.int64)
        correct = tf.cast(tf.equal(predicted, labels), tf.float32)
        top_k = tf.cast(tf.math.in_top_k(labels, probabilities, self.plan.top_k), tf.float32)
        top_5 = tf.cast(tf.math.in_top_k(labels, probabilities, min(KERAS_TOP_K, k)), tf.float32)
        above = tf.cast(probabilities > 0.5, tf.float32)  # Keras' threshold for Precision and binary_accuracy
        return {
            "examples": tf.cast(tf.shape(labels)[0], tf.float32),
            "correct": tf.reduce_sum(correct),
            "top_k": tf.reduce_sum(top_k),
            "top_5": tf.reduce_sum(top_5),
            "binary_correct": tf.reduce_sum(tf.reduce_mean(tf.cast(tf.equal(above, onehot), tf.float32), axis=1)),
            "true_positives": tf.reduce_sum(above * onehot, axis=0),
            "predicted": tf.reduce_sum(above, axis=0),
        }

    def _build_train_step(self):
        tf, plan = self.tf, self.plan

        def forward_backward(images, targets):
            with tf.GradientTape() as tape:
                probabilities = self.model(images, training=True)
                per_example = self.loss(targets, probabilities)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=plan.batch_size)
                if self.model.losses:
                    loss += tf.nn.scale_regularization_loss(
                        tf.add_n([tf.cast(term, tf.float32) for term in self.model.losses]))
                loss = self.optimizer.scale_loss(loss)  # unchanged unless --precision mixed_float16
            return tape.gradient(loss, self.model.trainable_variables), probabilities, per_example

        # XLA compiles the network's forward and backward pass; the optimizer's update stays outside, where
        # tf.distribute aggregates the replicas' gradients.
        if self.acceleration.xla:
            forward_backward = tf.function(forward_backward, jit_compile=True)

        def step(images, onehot, labels, rows):
            # DeepProfiler's online generator trains on each cell's soft label (label_smoothing is 0 then).
            targets = tf.gather(self.soft_labels, rows) if plan.online_labels else onehot
            gradients, probabilities, per_example = forward_backward(images, targets)
            self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
            sums = self._sums(probabilities, onehot, labels)
            sums["loss"] = tf.reduce_sum(per_example)
            return sums

        # autograph=False: the step has no Python control flow on tensors, so converting its code (the
        # network's included) buys nothing; without it the demo's B0 train took ~7 s less here (117 -> 110 s).
        @tf.function(autograph=False)
        def distributed(batch):
            per_replica = self.strategy.run(step, args=batch)
            return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

        return distributed

    # ------------------------------------------------------------ epochs
    def _batches(self, first_epoch: int):
        """One iterator for the whole run (see training_dataset), distributed over the replicas."""
        tf = self.tf
        dataset = training_dataset(self.info, self.plan.batch_size, self.data.cache_size, self.data.workers,
                                   self.data.factor, self.data.augmentations, self.data.seed, first_epoch,
                                   first_rows=self.first_rows)
        if isinstance(self.strategy, tf.distribute.OneDeviceStrategy):
            # The CPU alone: nothing to split or copy, so the batches go to the step as they are. A
            # distributed dataset here made every training step twice as slow on 2 cores (EfficientNet-B0,
            # batch 32: 3.2 s against 1.5 s per step; the op threads spent half their time in system calls,
            # 43 s of system time against 11 s).
            return iter(dataset)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return iter(self.strategy.experimental_distribute_dataset(dataset.with_options(options)))

    def train_epoch(self, batches, epoch: int = 0) -> EpochSums:
        steps = steps_for(cells_per_epoch(self.info.label_counts.get("training", {}), self.plan.num_classes,
                                          self.data.factor), self.plan.batch_size)
        sums = EpochSums(self.plan.num_classes)
        # An epoch takes minutes on a CPU: a line every DPBEAM_PROGRESS_SECONDS (15) says how far it is.
        progress = Progress(f"epoch {epoch}/{self.plan.epochs}", steps, "steps", every_s=progress_seconds())
        for step in range(1, steps + 1):
            sums.add({k: v.numpy() for k, v in self._train_step(next(batches)).items()})
            if step == 1:
                progress.restart(1)  # the first step traces and compiles: it says nothing about the rate
            elif step < steps:
                progress.update(step, f"loss {sums.loss / max(sums.examples, 1.0):.4g}")
        return sums

    def validate(self) -> EpochSums | None:
        if self._validation_batches is _NOT_BUILT:
            # The same crops at every validation: the frame's cells, or one balanced draw with a fixed seed.
            self._validation_batches = validation_dataset(
                self.info, self.data.validation_frame, self.data.validation_batch_size, self.data.sample_first_crops,
                self.data.workers, balanced=self.plan.balanced, seed=self.data.seed)
        if self._validation_batches is None:
            return None
        sums = EpochSums(self.plan.num_classes)
        for images, onehot, labels in self._validation_batches:
            sums.add({k: v.numpy() for k, v in self._validation_step(images, onehot, labels).items()})
        return sums

    def _validation_sums(self, images, onehot, labels):
        probabilities = self._eval_step(images)
        sums = self._sums(probabilities, onehot, labels)
        sums["loss"] = self.tf.reduce_sum(self.loss(onehot, probabilities))
        return sums

    # ------------------------------------------------------ online labels
    def _training_cells(self):
        """Every training cell once, in row order (manifest order of shards, records in file order)."""
        files = self.info.files(("training",))
        records = numbered_records(files, self.first_rows, self.info.compression, self.data.workers)
        return parsed_records(records, self.info, self.data.workers)

    def training_labels(self) -> np.ndarray:
        labels = self._training_cells().map(lambda record: record["label"]).batch(4096)
        return np.concatenate([batch.numpy() for batch in labels]).astype(np.int64)

    def predict_training_cells(self) -> np.ndarray:
        """The model's probabilities for every training cell in row order (DeepProfiler's ``update_online_labels``)."""
        images = self._training_cells().map(lambda record: self.tf.cast(record["image"], self.tf.float32) / 255.0,
                                            num_parallel_calls=max(1, self.data.workers))
        batches = images.batch(self.data.validation_batch_size).prefetch(self.tf.data.AUTOTUNE)
        return np.concatenate([np.asarray(self._eval_step(batch), dtype=np.float32) for batch in batches])

    def _write_soft_labels(self, epoch: int) -> None:
        """``logs/soft_labels/NNNN.parquet`` (DeepProfiler's ``soft_labels/NNNN.csv``): per training cell its
        ``Shard`` and ``Record`` (as in the export's index) and one column per class."""
        import pandas as pd  # noqa: PLC0415

        soft = self.soft_labels.numpy()
        rows = np.arange(len(soft))
        shard = np.searchsorted(np.asarray(self.first_rows), rows, side="right") - 1
        names = [StoragePath(f).name for f in self.info.files(("training",))]
        table = pd.DataFrame({"Shard": pd.Categorical.from_codes(shard, names),
                              "Record": rows - np.asarray(self.first_rows)[shard]})
        table = pd.concat([table, pd.DataFrame(soft, columns=list(self.labels))], axis=1)
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        (self.layout.logs_dir / "soft_labels" / f"{epoch:04d}.parquet").write_bytes(buffer.getvalue())

    def run(self, first_epoch: int) -> list[dict]:
        plan = self.plan
        writer = self._summary_writer() if self.chief else None
        self._curves_drawn_at = time.monotonic()
        batches = self._batches(first_epoch)
        if plan.online_labels and first_epoch == 1:
            self.soft_labels.assign(initial_soft_labels(self.training_labels(), plan.num_classes,
                                                        plan.online_smoothing))
            if self.chief:
                self._write_soft_labels(0)
        for epoch in range(first_epoch, plan.epochs + 1):
            rate = self.plateau.rate if plan.schedule == "plateau" else plan.learning_rate_for(epoch)
            self.optimizer.learning_rate.assign(rate)
            started = time.perf_counter()
            sums = self.train_epoch(batches, epoch)
            trained = time.perf_counter()
            row = {"epoch": epoch, "learning_rate": rate, **sums.metrics(plan.metrics, plan.top_k)}
            improved = False
            if epoch % plan.validation_frequency == 0 or epoch == plan.epochs:
                validation = self.validate()
                if validation is not None:
                    logger.info("epoch %d/%d: validated on %d crops (frame %s%s)", epoch, plan.epochs,
                                int(validation.examples), self.data.validation_frame,
                                f", the first {self.data.validation_batch_size} of each site"
                                if self.data.sample_first_crops else "")
                    row.update(validation.metrics(plan.metrics, plan.top_k, prefix="val_"))
                    improved = row["val_loss"] < self.best_validation
                    self.best_validation = min(self.best_validation, row["val_loss"])
                    if plan.schedule == "plateau":
                        self.plateau.update(row["val_loss"])
            if plan.online_labels:
                self.soft_labels.assign(update_soft_labels(self.soft_labels.numpy(), self.predict_training_cells(),
                                                           plan.online_lambda))
            self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
            logger.info("epoch %d/%d: %s", epoch, plan.epochs,
                        ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            validated = time.perf_counter()
            if self.chief:
                self._publish(epoch, row, improved, writer)
            # Where an epoch's time went: whether the input pipeline keeps up shows in the training rate
            # (e.g. shards read from a bucket against local ones; bench/bench_s3.py reads this line).
            crops = int(sums.examples)
            logger.info("epoch %d/%d took %.1f s: %d crops in %.1f s of training steps (%.4g crops/s), "
                        "%.1f s validating, %.1f s saving", epoch, plan.epochs, time.perf_counter() - started,
                        crops, trained - started, crops / max(trained - started, 1e-9), validated - trained,
                        time.perf_counter() - validated)
        return self.rows

    # ----------------------------------------------------------- outputs
    def _summary_writer(self):
        """TensorBoard's writer: straight to ``summaries/`` where TensorFlow can write (local, gs://),
        else to a local folder whose event files are uploaded after each epoch."""
        target = self.layout.summaries_dir
        self._summaries_staging = None if target.tensorflow_reads else tempfile.mkdtemp(prefix="dpbeam-summaries-")
        return self.tf.summary.create_file_writer(self._summaries_staging or target.url)

    def _publish(self, epoch: int, row: dict, improved: bool, writer) -> None:
        layout = self.layout
        if self.plan.saves_checkpoint(epoch, improved):
            save_weights(self.model, layout.checkpoint_dir / checkpoint_name(epoch))
        write_log(layout.logs_dir / "log.csv", self.rows)
        if self._curves_due(epoch):
            (layout.logs_dir / "training_curves.png").write_bytes(
                training_curves(self.rows, f"{self.plan.model_name}: {len(self.labels)} classes"))
            self._curves_drawn_at = time.monotonic()
        if self.plan.online_labels:
            self._write_soft_labels(epoch)
        with writer.as_default():
            for key, value in row.items():
                if key != "epoch":
                    self.tf.summary.scalar(key, value, step=epoch)
        writer.flush()
        if self._summaries_staging:  # TensorFlow cannot write there (s3://): upload the event files
            for name in os.listdir(self._summaries_staging):
                with open(os.path.join(self._summaries_staging, name), "rb") as events:
                    (self.layout.summaries_dir / name).write_bytes(events.read())
        self.save_backup(epoch)

    def _curves_due(self, epoch: int) -> bool:
        """The last epoch, and any other once CURVES_EVERY_SECONDS have passed since the run started or the
        picture was last drawn."""
        return epoch == self.plan.epochs or time.monotonic() - self._curves_drawn_at >= CURVES_EVERY_SECONDS

    def save_backup(self, epoch: int) -> None:
        backup = self.layout.checkpoint_dir / "backup"
        save_weights(self.model, backup / "weights.hdf5")
        buffer = io.BytesIO()
        np.savez(buffer, *[np.asarray(v) for v in self.optimizer.variables])
        (backup / "optimizer.npz").write_bytes(buffer.getvalue())
        if self.plan.online_labels:
            buffer = io.BytesIO()
            np.save(buffer, self.soft_labels.numpy(), allow_pickle=False)
            (backup / "soft_labels.npy").write_bytes(buffer.getvalue())
        state = {"epoch": epoch, "best_validation": self.best_validation, "plateau_rate": self.plateau.rate,
                 "plateau_best": self.plateau.best, "plateau_waited": self.plateau.waited, "rows": self.rows}
        (backup / "state.json").write_text(json.dumps(state))  # written last: the backup is complete

    def restore_backup(self) -> int | None:
        """Continue after the last finished epoch of an interrupted run; return the next epoch."""
        backup = self.layout.checkpoint_dir / "backup"
        if not (backup / "state.json").exists():
            return None
        state = json.loads((backup / "state.json").read_text())
        load_weights_by_name(self.model, backup / "weights.hdf5", skip_mismatch=False)
        with np.load(io.BytesIO((backup / "optimizer.npz").read_bytes()), allow_pickle=False) as arrays:
            values = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        if len(values) != len(self.optimizer.variables):
            raise CheckpointError(f"{backup}: optimizer state does not fit this model; remove the backup folder")
        for variable, value in zip(self.optimizer.variables, values):
            variable.assign(value)
        if self.plan.online_labels:
            soft = np.load(io.BytesIO((backup / "soft_labels.npy").read_bytes()), allow_pickle=False)
            if soft.shape != tuple(self.soft_labels.shape):
                raise CheckpointError(f"{backup}/soft_labels.npy holds {soft.shape} soft labels, the export "
                                      f"{tuple(self.soft_labels.shape)}: remove the backup folder")
            self.soft_labels.assign(soft)
        self.best_validation = state["best_validation"]
        self.plateau = PlateauController(state["plateau_rate"], best=state["plateau_best"],
                                         waited=state["plateau_waited"])
        self.rows = state["rows"]
        return int(state["epoch"]) + 1

    def start_from_checkpoint(self, epoch: int) -> None:
        """DeepProfiler's ``--epoch N``: weights of epoch N-1, log kept up to it."""
        path = self.layout.checkpoint_dir / checkpoint_name(epoch - 1)
        if not path.exists():
            raise TrainingError(f"--epoch {epoch} continues from {path}, which does not exist")
        load_weights_by_name(self.model, path, skip_mismatch=False)
        self.rows = [r for r in read_log(self.layout.logs_dir / "log.csv") if r["epoch"] < epoch]
