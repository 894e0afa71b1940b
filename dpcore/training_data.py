"""The training input pipeline: ``tf.data`` over the shards export-sc wrote.

- Shards are read with the shared record schema (:mod:`dpcore.sc_records`),
  interleaved ``sampling.workers`` at a time, shuffled with a buffer of
  ``sampling.cache_size``.
- Class balance as DeepProfiler: each epoch draws every class up to the median
  class count (classes smaller than the median are drawn whole), times
  ``sampling.factor``. It is done in one pass over the data with a per-label
  keep probability ``min(1, median / n_label) * factor``.
- Augmentations (training only): DeepProfiler's -- with probability 1/2 a random
  80-100% crop resized back, a random horizontal flip, a random multiple of 90
  degrees, per-channel brightness +-0.1 and contrast 0.8-1.2.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from dpcore import sc_export, sc_records
from dpcore.storage import StoragePath
from dpcore.tensorflow_runtime import load_tensorflow

logger = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """The export cannot be trained on; the message says why and what to do."""


@dataclass(frozen=True)
class ExportInfo:
    folder: str
    labels: tuple[str, ...]
    box_size: int
    channels: int
    compression: str
    shards: dict            # split -> list of file URLs
    counts: dict            # split -> cells
    label_counts: dict      # split -> {label index: cells}

    @classmethod
    def read(cls, folder: StoragePath) -> "ExportInfo":
        """The export's description from its manifest alone (no cell index is read)."""
        try:
            manifest = sc_export.read_manifest(folder)
        except sc_export.ExportNotFound as error:
            raise TrainingDataError(str(error)) from error
        manifest_path = folder / sc_export.MANIFEST_NAME
        if manifest.get("format") != "tfrecord":
            raise TrainingDataError(f"{folder} holds a {manifest.get('format')!r} export; train needs TFRecord "
                                    f"shards (export-sc without --format png)")
        if manifest.get("feature_spec_version") != sc_records.FEATURE_SPEC_VERSION:
            raise TrainingDataError(f"{folder} was written with record version {manifest.get('feature_spec_version')}"
                                    f"; this dpbeam reads version {sc_records.FEATURE_SPEC_VERSION}: re-export")
        shards = {split: [(folder / name).url for name in names] for split, names in manifest["shards"].items()}
        present = {path.name: path for path in folder.glob("*.tfrecord*")}  # one listing, not one call per shard
        for split, files in shards.items():
            for file in files:
                path = present.get(StoragePath(file).name)
                if path is None:
                    raise TrainingDataError(f"shard {file} listed in {manifest_path} is missing")
                if path.size() == 0 and manifest["counts"].get(split, 0):
                    raise TrainingDataError(f"shard {file} is empty but the manifest counts cells in {split!r}")
        labels = tuple(manifest["labels"])
        label_counts = {split: {labels.index(label): int(n) for label, n in per_label.items() if n}
                        for split, per_label in manifest["counts_per_split_label"].items()}
        return cls(folder=folder.url, labels=labels, box_size=int(manifest["box_size"]),
                   channels=len(manifest["channels"]), compression=manifest.get("compression", ""),
                   shards=shards, counts=manifest["counts"], label_counts=label_counts)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def files(self, splits: tuple[str, ...]) -> list[str]:
        return [f for split in splits for f in self.shards.get(split, [])]

    def cells(self, splits: tuple[str, ...]) -> int:
        return sum(self.counts.get(split, 0) for split in splits)


def keep_probabilities(label_counts: dict[int, int], num_classes: int, factor: float) -> np.ndarray:
    """DeepProfiler's balance: each class drawn up to the median class count, times ``factor``."""
    present = [n for n in label_counts.values() if n > 0]
    median = float(np.median(present)) if present else 0.0
    keep = np.zeros(num_classes, dtype=np.float32)
    for label, n in label_counts.items():
        if n > 0:
            keep[label] = min(1.0, median / n) * factor
    return keep


def cells_per_epoch(label_counts: dict[int, int], num_classes: int, factor: float) -> float:
    keep = keep_probabilities(label_counts, num_classes, factor)
    return float(sum(keep[label] * n for label, n in label_counts.items()))


def steps_for(cells: float, batch_size: int) -> int:
    return max(1, math.ceil(cells / batch_size))


def _decode(parsed, num_classes: int):
    tf = load_tensorflow()
    image = tf.cast(parsed["image"], tf.float32) / 255.0
    return image, tf.one_hot(parsed["label"], num_classes), parsed["label"], parsed["cell_index"]


def augment(image, seed):
    """DeepProfiler's augmentations on one crop in [0, 1], driven by a stateless seed pair."""
    tf = load_tensorflow()
    seeds = tf.random.experimental.stateless_split(seed, num=7)
    height, width, channels = image.shape
    # With probability 1/2: a random crop of 80-100% of the side, resized back.
    def crop_and_resize_back():
        fraction = tf.random.stateless_uniform([], seeds[0], 0.8, 1.0)
        side = tf.cast(tf.round(fraction * height), tf.int32)
        cropped = tf.image.stateless_random_crop(image, tf.stack([side, side, channels]), seeds[1])
        return tf.image.resize(cropped, (height, width))

    # Inside the branch, so the crop is only computed for the half of the samples that use it.
    image = tf.cond(tf.random.stateless_uniform([], seeds[2]) < 0.5, crop_and_resize_back, lambda: image)
    image = tf.image.stateless_random_flip_left_right(image, seeds[3])
    image = tf.image.rot90(image, tf.random.stateless_uniform([], seeds[4], 0, 4, dtype=tf.int32))
    brightness = tf.random.stateless_uniform([1, 1, channels], seeds[5], -0.1, 0.1)
    contrast = tf.random.stateless_uniform([1, 1, channels], seeds[6], 0.8, 1.2)
    mean = tf.reduce_mean(image, axis=(0, 1), keepdims=True)
    image = (image - mean) * contrast + mean + brightness
    return tf.clip_by_value(image, 0.0, 1.0)


def training_dataset(info: ExportInfo, batch_size: int, cache_size: int, workers: int, factor: float,
                     augmentations: bool, seed: int, epoch: int = 0):
    """An endless stream of balanced, shuffled, (augmented) batches of (images, one-hot labels, labels).

    Endless on purpose: the trainer keeps one iterator for the whole run and
    takes an epoch's worth of steps from it, so the shuffle buffer never
    drains and refills at epoch boundaries (a stall when ``cache_size`` is
    large). Each pass over the shards draws a fresh balanced sample.
    """
    tf = load_tensorflow()
    files = info.files(("training",))
    counts = info.label_counts.get("training", {})
    keep = tf.constant(keep_probabilities(counts, info.num_classes, factor))
    order = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed + epoch,
                                                              reshuffle_each_iteration=True).repeat()
    cycle = max(1, min(workers, len(files)))
    records = order.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=info.compression or None),
        cycle_length=cycle, num_parallel_calls=cycle, deterministic=True)
    parsed = records.map(lambda s: _decode(sc_records.parse(s, info.box_size, info.channels), info.num_classes),
                         num_parallel_calls=max(1, workers), deterministic=True)
    numbered = tf.data.Dataset.zip((parsed, tf.data.Dataset.random(seed=seed * 1000 + epoch)))
    kept = numbered.filter(lambda sample, r: tf.cast(r % 1_000_003, tf.float32) / 1_000_003.0
                           < tf.gather(keep, sample[2]))
    samples = kept.map(lambda sample, r: sample).shuffle(cache_size, seed=seed + epoch)
    if augmentations:
        seeded = tf.data.Dataset.zip((samples, tf.data.Dataset.counter()))
        samples = seeded.map(lambda s, i: (augment(s[0], tf.stack([tf.cast(seed + epoch, tf.int64), i])),) + s[1:],
                             num_parallel_calls=max(1, workers), deterministic=True)
    return samples.map(lambda image, onehot, label, cell: (image, onehot, label)).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)


def validation_dataset(info: ExportInfo, frame: str, batch_size: int, sample_first_crops: bool,
                       workers: int):
    """Validation batches (no augmentation, no sampling); None when the frame has no cells."""
    tf = load_tensorflow()
    splits = {"val": ("validation",), "train": ("training",), "all": ("training", "validation")}[frame]
    files = info.files(splits)
    if not files or not info.cells(splits):
        return None
    records = tf.data.TFRecordDataset(files, compression_type=info.compression or None,
                                      num_parallel_reads=max(1, min(workers, len(files))))
    parsed = records.map(lambda s: _decode(sc_records.parse(s, info.box_size, info.channels), info.num_classes),
                         num_parallel_calls=max(1, workers), deterministic=True)
    if sample_first_crops:
        # DeepProfiler validated on the first N cells of each image, N = validation batch size.
        parsed = parsed.filter(lambda image, onehot, label, cell: cell < batch_size)
    return parsed.map(lambda image, onehot, label, cell: (image, onehot, label)).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)
