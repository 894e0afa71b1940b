"""The training input pipeline: ``tf.data`` over the shards export-sc wrote.

- Shards are read with the shared record schema (:mod:`dpcore.sc_records`),
  interleaved ``sampling.workers`` at a time, shuffled with a buffer of
  ``sampling.cache_size``.
- Class balance as DeepProfiler's ``sampled_crop_generator`` (and ``online_labels_cropgen``): every pass
  over the training cells draws each class exactly ``int(median class count * sampling.factor)`` times,
  without replacement from classes at least that large and with replacement from smaller ones (so a
  small class is repeated, not under-drawn). It is done in one streaming pass: a ``scan`` keeps, per
  class, the records still to come and the draws still to make, and gives each record its number of
  copies -- Knuth's selection sampling for the first case, the multinomial's sequential binomials for
  the second -- so the counts are exact and no worker holds a list of the cells.
- Validation for those generators is also DeepProfiler's: one class-balanced resample of the
  validation cells, fixed for the run.
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


def _committed_cells(folder: StoragePath, split: str, index: int) -> int | None:
    """The cells of a shard by export-sc's commit record for it (``_shards/``); None if the record is gone."""
    record = folder / sc_export.SHARD_RECORDS_DIR / sc_export.shard_record_name(split, index)
    if not record.exists():
        return None
    return int(sc_export.ShardRecord.from_json(record.read_text()).cells)


def _check_empty_shard(folder: StoragePath, split: str, index: int, file: str, split_cells: int) -> None:
    """An empty shard file is empty by right when its commit record counts no cell: a small export has
    shards no site fell into (sites are hashed to shards). Without a record, an empty file in a split that
    has cells is taken for a truncated one."""
    cells = _committed_cells(folder, split, index)
    if cells:
        raise TrainingDataError(f"shard {file} is empty but its commit record in "
                                f"{folder / sc_export.SHARD_RECORDS_DIR} counts {cells} cells")
    if cells is None and split_cells:
        raise TrainingDataError(f"shard {file} is empty but the manifest counts cells in {split!r} "
                                f"(and the shard has no commit record in {folder / sc_export.SHARD_RECORDS_DIR})")


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
            for index, file in enumerate(files):
                path = present.get(StoragePath(file).name)
                if path is None:
                    raise TrainingDataError(f"shard {file} listed in {manifest_path} is missing")
                if path.size() == 0:
                    _check_empty_shard(folder, split, index, file, manifest["counts"].get(split, 0))
        labels = tuple(manifest["labels"])
        label_counts = {split: {labels.index(label): int(n) for label, n in per_label.items() if n}
                        for split, per_label in manifest["counts_per_split_label"].items()}
        return cls(folder=folder.url, labels=labels, box_size=int(manifest["box_size"]),
                   channels=len(manifest["channels"]), compression=manifest.get("compression", ""),
                   shards=shards, counts=manifest["counts"], label_counts=label_counts)

    def first_rows(self, split: str) -> list[int]:
        """Each shard's first row when the split's cells are numbered in manifest order (shard by shard).

        Shard sizes come from export-sc's commit records (``_shards/<split>-NNNNN.json``); a shard whose
        record is gone is counted by reading it.
        """
        tf = load_tensorflow()
        folder = StoragePath(self.folder)
        rows, first = [], 0
        for index, file in enumerate(self.shards.get(split, [])):
            rows.append(first)
            cells = _committed_cells(folder, split, index)
            if cells is None:
                dataset = sc_records.file_reader([file], self.compression)(tf.constant(file))
                cells = int(dataset.reduce(np.int64(0), lambda n, _: n + 1).numpy())
            first += cells
        return rows

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def files(self, splits: tuple[str, ...]) -> list[str]:
        return [f for split in splits for f in self.shards.get(split, [])]

    def cells(self, splits: tuple[str, ...]) -> int:
        return sum(self.counts.get(split, 0) for split in splits)


# The crop generators whose training and validation samples DeepProfiler balances to the median class.
BALANCED_GENERATORS = ("sampled_crop_generator", "online_labels_cropgen", "full_image_crop_generator")


def draws_per_class(label_counts: dict[int, int], num_classes: int, factor: float) -> np.ndarray:
    """Cells drawn per class and pass: ``int(median * factor)`` for every class present, as DeepProfiler.

    DeepProfiler's ``balanced_sample`` takes ``int(median)`` of each class (``sampling.factor`` scales it
    here; 1 is DeepProfiler's), without replacement where the class is at least that large.
    """
    present = [n for n in label_counts.values() if n > 0]
    draws = np.zeros(num_classes, dtype=np.int64)
    if not present:
        return draws
    per_class = max(1, int(float(np.median(present)) * factor))
    for label, n in label_counts.items():
        if n > 0:
            draws[label] = per_class
    return draws


def cells_per_epoch(label_counts: dict[int, int], num_classes: int, factor: float) -> int:
    return int(draws_per_class(label_counts, num_classes, factor).sum())


def steps_for(cells: float, batch_size: int) -> int:
    return max(1, math.ceil(cells / batch_size))


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


def numbered_records(files: list[str], first_rows: list[int], compression: str, workers: int,
                     order_seed=None):
    """``(row, serialized)`` of every record: ``row`` numbers the records of ``files`` in manifest order
    (``first_rows[i]`` + the record's position in file i). With ``order_seed`` the files come in a
    seeded random order, ``workers`` read at a time; without, in order."""
    tf = load_tensorflow()
    files_tensor, rows_tensor = tf.constant(files, tf.string), tf.constant(first_rows, tf.int64)
    if order_seed is not None:
        # A stateless permutation, not Dataset.shuffle: shuffle's seed handling compares the seed pair with
        # (0, 0) in Python, which fails on a tensor seed once the global seed is 0 (``train --seed 0``).
        keys = tf.random.stateless_uniform([len(files)], tf.stack([tf.cast(order_seed, tf.int64), 0]))
        order = tf.argsort(keys)
        files_tensor, rows_tensor = tf.gather(files_tensor, order), tf.gather(rows_tensor, order)
    shards = tf.data.Dataset.from_tensor_slices((files_tensor, rows_tensor))
    cycle = max(1, min(workers, len(files)))
    reader = sc_records.file_reader(files, compression)
    return shards.interleave(
        lambda file, first: reader(file).enumerate().map(lambda position, serialized: (first + position, serialized)),
        cycle_length=cycle, num_parallel_calls=cycle, deterministic=True)


def balanced_copies(parsed, label_counts: dict[int, int], draws: np.ndarray, seed):
    """How many copies of each record one balanced pass takes: ``(record, copies)`` for every record.

    ``parsed`` must be one pass over exactly ``label_counts`` records per class. Class c gets exactly
    ``draws[c]`` copies in all: a class with at least that many records by selection sampling (each
    record kept with probability draws left / records left), a smaller one with replacement (each
    record's copies ~ Binomial(draws left, 1 / records left), the multinomial drawn sequentially).
    ``seed`` (an int64 scalar) fixes the draw; the state is two vectors of the class count's length.
    """
    tf = load_tensorflow()
    counts = np.zeros(len(draws), dtype=np.int64)
    for label, n in label_counts.items():
        counts[label] = n
    with_replacement = tf.constant(counts < draws)  # DeepProfiler: replace=counts[cls] < sample_size

    def step(state, element):
        records_left, draws_left = state
        position, record = element
        label = record["label"]
        remaining = tf.cast(tf.maximum(records_left[label], 1), tf.float64)
        wanted = draws_left[label]
        draw_seed = tf.stack([tf.cast(seed, tf.int64), position])
        selected = tf.cast(tf.random.stateless_uniform([], draw_seed, dtype=tf.float64) * remaining
                           < tf.cast(wanted, tf.float64), tf.int64)
        repeated = tf.cast(tf.random.stateless_binomial([], draw_seed, tf.cast(wanted, tf.float64),
                                                        1.0 / remaining, output_dtype=tf.float64), tf.int64)
        copies = tf.minimum(tf.where(with_replacement[label], repeated, selected), wanted)
        index = tf.reshape(label, (1, 1))
        state = (tf.tensor_scatter_nd_sub(records_left, index, tf.ones(1, tf.int64)),
                 tf.tensor_scatter_nd_sub(draws_left, index, tf.reshape(copies, (1,))))
        return state, (record, copies)

    return parsed.enumerate().scan((tf.constant(counts), tf.constant(draws, tf.int64)), step)


def _repeat_copies(record, copies):
    tf = load_tensorflow()
    return tf.data.Dataset.from_tensors(record).repeat(copies)


def parsed_records(records, info: ExportInfo, workers: int):
    def parse(row, serialized):
        record = sc_records.parse(serialized, info.box_size, info.channels)
        return {"image": record["image"], "label": record["label"], "cell_index": record["cell_index"], "row": row}
    return records.map(parse, num_parallel_calls=max(1, workers), deterministic=True)


def _decoded(record, num_classes: int):
    """(image in [0, 1], one-hot label, label, row) of a parsed record."""
    tf = load_tensorflow()
    image = tf.cast(record["image"], tf.float32) / 255.0
    return image, tf.one_hot(record["label"], num_classes), record["label"], record["row"]


def training_dataset(info: ExportInfo, batch_size: int, cache_size: int, workers: int, factor: float,
                     augmentations: bool, seed: int, epoch: int = 0, first_rows: list[int] | None = None):
    """An endless stream of balanced, shuffled, (augmented) batches of (images, one-hot labels, labels, rows).

    Endless on purpose: the trainer keeps one iterator for the whole run and
    takes an epoch's worth of steps from it, so the shuffle buffer never
    drains and refills at epoch boundaries (a stall when ``cache_size`` is
    large). Each pass over the shards (files in a new order) draws a fresh
    balanced sample (see :func:`balanced_copies`). ``rows`` number the training
    cells when ``first_rows`` (each shard's first row) is given, else are -1.
    """
    tf = load_tensorflow()
    files = info.files(("training",))
    counts = info.label_counts.get("training", {})
    draws = draws_per_class(counts, info.num_classes, factor)
    numbered = first_rows is not None
    first_rows = list(first_rows) if numbered else [0] * len(files)

    def one_pass(number):
        pass_seed = tf.constant(seed, tf.int64) * 1_000_003 + number
        records = numbered_records(files, first_rows, info.compression, workers, order_seed=pass_seed)
        copies = balanced_copies(parsed_records(records, info, workers), counts, draws, pass_seed)
        return copies.flat_map(_repeat_copies)

    samples = tf.data.Dataset.range(epoch, 1 << 62).flat_map(one_pass)
    if not numbered:
        samples = samples.map(lambda record: record | {"row": tf.constant(-1, tf.int64)})
    # Shuffled as stored (uint8) and decoded after: the buffer of ``cache_size`` crops takes a quarter of the
    # memory float32 crops would (5,000 crops of 128 x 128 x 5: 0.4 GB, not 1.6 GB); the order is the same.
    samples = samples.shuffle(cache_size, seed=seed + epoch).map(
        lambda record: _decoded(record, info.num_classes), num_parallel_calls=max(1, workers), deterministic=True)
    if augmentations:
        seeded = tf.data.Dataset.zip((samples, tf.data.Dataset.counter()))
        samples = seeded.map(lambda s, i: (augment(s[0], tf.stack([tf.cast(seed + epoch, tf.int64), i])),) + s[1:],
                             num_parallel_calls=max(1, workers), deterministic=True)
    return samples.batch(batch_size).prefetch(tf.data.AUTOTUNE)


VALIDATION_SPLITS = {"val": ("validation",), "train": ("training",), "all": ("training", "validation")}


def validation_dataset(info: ExportInfo, frame: str, batch_size: int, sample_first_crops: bool,
                       workers: int, balanced: bool = False, seed: int = 0):
    """Validation batches of (images, one-hot labels, labels), no augmentation; None when the frame has no cells.

    ``balanced`` (DeepProfiler's sampled and online-label generators): one class-balanced resample of the
    frame's cells to their median class count (:func:`balanced_copies`), the same for the whole run.
    Otherwise every cell of the frame, or with ``sample_first_crops`` the first ``batch_size`` of each site.
    """
    tf = load_tensorflow()
    splits = VALIDATION_SPLITS[frame]
    files = info.files(splits)
    if not files or not info.cells(splits):
        return None
    records = parsed_records(numbered_records(files, [0] * len(files), info.compression, workers), info, workers)
    if sample_first_crops:
        # DeepProfiler validated on the first N cells of each image, N = validation batch size.
        records = records.filter(lambda record: record["cell_index"] < batch_size)
    elif balanced:
        counts: dict[int, int] = {}
        for split in splits:
            for label, n in info.label_counts.get(split, {}).items():
                counts[label] = counts.get(label, 0) + n
        draws = draws_per_class(counts, info.num_classes, 1.0)
        records = balanced_copies(records, counts, draws, tf.constant(seed, tf.int64)).flat_map(_repeat_copies)
    return records.map(lambda record: _decoded(record, info.num_classes)[:3],
                       num_parallel_calls=max(1, workers), deterministic=True).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)
