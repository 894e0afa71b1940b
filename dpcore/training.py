"""Training under ``tf.distribute``: one custom loop for every strategy.

Keras 3 ``model.fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so the loop is written out: ``strategy.run`` a
compiled step per global batch, reduce per-replica *sums* (loss, correct,
top-k, per-class true/false positives, online-label statistics) and derive the
epoch's metrics from them, which is exact for any number of replicas.

What DeepProfiler's config asks for: SGD with Nesterov momentum 0.9, L2 1e-5
on kernels, categorical cross-entropy with ``label_smoothing``; learning-rate
schedules (constant, step, cosine with 5 warm-up epochs, plateau); metrics
``accuracy``, ``top_k``, ``average_class_precision``; checkpoints every N
epochs or at the best validation loss, in DeepProfiler's Keras-2 HDF5 format
and ``checkpoint_{epoch:04d}.hdf5`` names; online label smoothing; resume.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from dpcore.config import ADAM_MODELS, Config, StepSchedule
from dpcore.storage import StoragePath
from dpcore.training_data import BALANCED_GENERATORS
from dpcore.tensorflow_runtime import load_tensorflow

logger = logging.getLogger(__name__)

WARMUP_EPOCHS = 5
PLATEAU_FACTOR = 0.1
PLATEAU_PATIENCE = 3
MIN_LEARNING_RATE = 1e-7


class TrainingError(ValueError):
    """Training cannot start; the message says why."""


def checkpoint_name(epoch: int) -> str:
    """DeepProfiler's checkpoint file name for the weights after ``epoch`` (1-based)."""
    return f"checkpoint_{epoch:04d}.hdf5"


# ------------------------------------------------------------- learning rate
def scheduled_learning_rate(epoch: int, base: float, schedule, epochs: int) -> float:
    """Learning rate for 1-based ``epoch``, as DeepProfiler 0.3.1 sets it (plateau: :class:`PlateauController`).

    DeepProfiler hands its schedule to Keras' ``LearningRateScheduler``, which numbers epochs from 0:
    a step schedule ``{"epoch": [e1, ...], "lr": [r1, ...]}`` sets rate ri from 0-based epoch ei on
    (so from the (ei+1)-th epoch), and cosine is ``base / (5 - t)`` for t = 0..4 (1/5, 1/4, 1/3, 1/2,
    1 of the rate: the reference calls it a linear warm-up, the code does this) and then
    ``0.5 * (1 + cos(pi * t / epochs)) * base``, t being the 0-based epoch.
    """
    index = epoch - 1  # Keras' epoch number, which DeepProfiler's schedules use
    if isinstance(schedule, StepSchedule):
        rate = base
        for start, value in zip(schedule.epochs, schedule.learning_rates):
            if index >= start:
                rate = value
        return rate
    if schedule == "cosine":
        if index < WARMUP_EPOCHS:
            return base / (WARMUP_EPOCHS - index)
        return 0.5 * (1 + math.cos(math.pi * index / epochs)) * base
    return base


@dataclass
class PlateauController:
    """Reduce the rate by 10x after ``patience`` validations without a lower validation loss."""

    rate: float
    patience: int = PLATEAU_PATIENCE
    best: float = math.inf
    waited: int = 0

    def update(self, validation_loss: float) -> float:
        if validation_loss < self.best - 1e-12:
            self.best, self.waited = validation_loss, 0
        else:
            self.waited += 1
            if self.waited >= self.patience:
                self.rate, self.waited = max(self.rate * PLATEAU_FACTOR, MIN_LEARNING_RATE), 0
        return self.rate


# ------------------------------------------------------------------ metrics
KERAS_TOP_K = 5  # Keras' top_k_categorical_accuracy default k, which DeepProfiler's config cannot change


@dataclass
class EpochSums:
    """Replica-reduced sums from which an epoch's metrics follow exactly."""

    num_classes: int
    examples: float = 0.0
    loss: float = 0.0
    correct: float = 0.0
    top_k: float = 0.0               # validation.top_k
    top_5: float = 0.0               # Keras' top_k_categorical_accuracy
    binary_correct: float = 0.0      # per sample: the fraction of the K outputs on the right side of 0.5
    true_positives: np.ndarray = None   # (K,): probability > 0.5 for the true class
    predicted: np.ndarray = None        # (K,): probability > 0.5

    def __post_init__(self):
        k = self.num_classes
        self.true_positives = np.zeros(k) if self.true_positives is None else self.true_positives
        self.predicted = np.zeros(k) if self.predicted is None else self.predicted

    def add(self, reduced: dict) -> None:
        for name in ("examples", "loss", "correct", "top_k", "top_5", "binary_correct"):
            setattr(self, name, getattr(self, name) + float(reduced[name]))
        self.true_positives += np.asarray(reduced["true_positives"])
        self.predicted += np.asarray(reduced["predicted"])

    def metrics(self, names: tuple[str, ...], top_k: int, prefix: str = "") -> dict[str, float]:
        """The log's columns, named as DeepProfiler's Keras logs them (``top_<k>`` for its top_k plugin).

        The ``sparse_*`` Keras metrics are the categorical ones here: labels are class numbers, so they are
        well defined (DeepProfiler fed them one-hot targets, which they do not accept).
        """
        n = max(self.examples, 1.0)
        values = {f"{prefix}loss": self.loss / n}
        for name in names:
            if name in ("accuracy", "categorical_accuracy", "sparse_categorical_accuracy"):
                values[f"{prefix}{name}"] = self.correct / n
            elif name == "top_k":
                values[f"{prefix}top_{top_k}"] = self.top_k / n
            elif name in ("top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy"):
                values[f"{prefix}{name}"] = self.top_5 / n
            elif name == "binary_accuracy":
                values[f"{prefix}{name}"] = self.binary_correct / n
            elif name == "average_class_precision":
                values[f"{prefix}{name}"] = self.average_class_precision()
        return values

    def average_class_precision(self) -> float:
        """DeepProfiler's plugin: the mean over *all* classes of Keras' ``Precision(class_id=c)`` -- a
        sample counts as predicted c when its probability of c exceeds 0.5 -- a class never predicted
        counting 0 (Keras' division by zero). Summed over the epoch (DeepProfiler's plugin objects are
        never reset, so its figure accumulates over the whole run: a bug not copied)."""
        precision = np.divide(self.true_positives, self.predicted, out=np.zeros_like(self.predicted),
                              where=self.predicted > 0)
        return float(precision.mean()) if len(precision) else 0.0


# ------------------------------------------------------ online label smoothing
def initial_soft_labels(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """DeepProfiler's start: every cell ``smoothing / K`` on each class plus ``1 - smoothing`` on its own."""
    soft = np.full((len(labels), num_classes), smoothing / num_classes, dtype=np.float32)
    soft[np.arange(len(labels)), labels] += 1.0 - smoothing
    return soft


def update_soft_labels(current: np.ndarray, predictions: np.ndarray, blend: float) -> np.ndarray:
    """DeepProfiler's update after each epoch: ``(1 - online_lambda) * soft + online_lambda * prediction``,
    per cell, the model predicting every training cell without augmentation."""
    return ((1.0 - blend) * current + blend * predictions).astype(np.float32)


# ------------------------------------------------------------------- outputs
def write_log(path: StoragePath, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def read_log(path: StoragePath) -> list[dict]:
    if not path.exists():
        return []
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v != ""} for row in rows]


# ----------------------------------------------------------------- strategy
def choose_strategy(gpus: str | None = None):
    """MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored on GPUs, else the CPU."""
    tf = load_tensorflow()

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = tf.config.list_logical_devices("GPU")
    if devices:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def is_chief() -> bool:
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    if not task or len(cluster.get("worker", [])) + len(cluster.get("chief", [])) <= 1:
        return True
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


@dataclass
class TrainingPlan:
    """Everything the loop needs, derived from the config and the export."""

    model_name: str
    conv_blocks: int
    feature_dim: int
    optimizer: str            # "sgd" or "adam" (config.ADAM_MODELS)
    input_shape: tuple[int, int, int]
    num_classes: int
    epochs: int
    batch_size: int
    learning_rate: float
    schedule: object
    label_smoothing: float
    metrics: tuple[str, ...]
    top_k: int
    checkpoint_policy: object
    validation_frequency: int
    online_labels: bool
    balanced: bool
    online_smoothing: float
    online_lambda: float
    initialization: str
    pretrained_weights: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, num_classes: int, input_shape: tuple[int, int, int],
                    pretrained_weights: str | None) -> "TrainingPlan":
        model = config.train.model
        online = model.crop_generator == "online_labels_cropgen"
        return cls(
            model_name=model.name, conv_blocks=model.params.conv_blocks, feature_dim=model.params.feature_dim,
            optimizer="adam" if model.name in ADAM_MODELS else "sgd", input_shape=input_shape,
            num_classes=num_classes, epochs=model.epochs, batch_size=model.params.batch_size,
            learning_rate=model.params.learning_rate, schedule=model.lr_schedule,
            # DeepProfiler sets label_smoothing to 0 with online labels: the soft labels smooth instead.
            label_smoothing=0.0 if online else model.params.label_smoothing, metrics=model.metrics,
            top_k=min(config.train.validation.top_k, num_classes), checkpoint_policy=model.checkpoint_policy,
            validation_frequency=config.train.validation.frequency,
            online_labels=online, balanced=model.crop_generator in BALANCED_GENERATORS,
            online_smoothing=model.params.online_label_smoothing, online_lambda=model.params.online_lambda,
            initialization=model.initialization, pretrained_weights=pretrained_weights)

    def learning_rate_for(self, epoch: int) -> float:
        return scheduled_learning_rate(epoch, self.learning_rate, self.schedule, self.epochs)

    def saves_checkpoint(self, epoch: int, improved: bool) -> bool:
        if self.checkpoint_policy == "best":
            return improved
        return epoch % int(self.checkpoint_policy) == 0
