"""The single-cell record: one schema for the export writer and the tf.data reader.

Each exported cell is one ``tf.train.Example``:

=============  =========  ======================================================
feature        type       meaning
=============  =========  ======================================================
image          bytes      the crop, uint8, ``box x box x C`` row-major (C = config channels order)
label          int64      index of ``label_name`` in the export's sorted label list
label_name     bytes      value of ``train.partition.targets[0]``
split          bytes      ``training``, ``validation`` or ``other``
split_value    bytes      the site's value of ``train.partition.split_field``
plate, well,   bytes      the site's keys
site
cell_index     int64      row of the cell in the site's locations file
center_x,      float      nucleus centre in original image pixels
center_y
=============  =========  ======================================================

Bump :data:`FEATURE_SPEC_VERSION` whenever this changes; the export manifest
records it and the reader refuses other versions. TensorFlow is imported
lazily: only the functions that build or parse protos need it.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from dpcore.storage import StoragePath
from dpcore.tensorflow_runtime import load_tensorflow

FEATURE_SPEC_VERSION = 1
SPLITS = ("training", "validation", "other")


@dataclass(frozen=True)
class CellRecord:
    image: np.ndarray   # (box, box, C) uint8
    label: int
    label_name: str
    split: str
    split_value: str
    plate: str
    well: str
    site: str
    cell_index: int
    center_x: float
    center_y: float


def _tf():
    tf = load_tensorflow()
    return tf


def encode(record: CellRecord) -> bytes:
    tf = _tf()
    train = tf.train

    def text(value: str):
        return train.Feature(bytes_list=train.BytesList(value=[value.encode("utf-8")]))

    features = {
        "image": train.Feature(bytes_list=train.BytesList(value=[np.ascontiguousarray(record.image).tobytes()])),
        "label": train.Feature(int64_list=train.Int64List(value=[record.label])),
        "label_name": text(record.label_name),
        "split": text(record.split),
        "split_value": text(record.split_value),
        "plate": text(record.plate),
        "well": text(record.well),
        "site": text(record.site),
        "cell_index": train.Feature(int64_list=train.Int64List(value=[record.cell_index])),
        "center_x": train.Feature(float_list=train.FloatList(value=[record.center_x])),
        "center_y": train.Feature(float_list=train.FloatList(value=[record.center_y])),
    }
    # deterministic=True sorts the feature map: otherwise the byte order follows each process's
    # string-hash seed, and two workers would write different bytes for the same cell.
    return train.Example(features=train.Features(feature=features)).SerializeToString(deterministic=True)


def feature_spec() -> dict:
    tf = _tf()
    string = tf.io.FixedLenFeature([], tf.string)
    return {
        "image": string, "label": tf.io.FixedLenFeature([], tf.int64), "label_name": string, "split": string,
        "split_value": string, "plate": string, "well": string, "site": string,
        "cell_index": tf.io.FixedLenFeature([], tf.int64),
        "center_x": tf.io.FixedLenFeature([], tf.float32), "center_y": tf.io.FixedLenFeature([], tf.float32),
    }


def parse(serialized, box_size: int, channels: int) -> dict:
    """Parse one serialized example (a tensor) into tensors; ``image`` is ``(box, box, C)`` uint8."""
    tf = _tf()
    parsed = tf.io.parse_single_example(serialized, feature_spec())
    parsed["image"] = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), (box_size, box_size, channels))
    return parsed


def dataset(files: Iterable[str], box_size: int, channels: int, compression: str = "",
            parallel_reads: int = 4):
    """A ``tf.data.Dataset`` of parsed records, interleaving reads over the shard files."""
    tf = _tf()
    files = list(files)
    records = tf.data.TFRecordDataset(files, compression_type=compression or None,
                                      num_parallel_reads=min(parallel_reads, max(1, len(files))))
    return records.map(lambda s: parse(s, box_size, channels), num_parallel_calls=tf.data.AUTOTUNE)


def framed_size(serialized: bytes) -> int:
    """Bytes one record takes in an uncompressed TFRecord file (length, its CRC, data, its CRC)."""
    return 8 + 4 + len(serialized) + 4


def read_record_at(path: StoragePath, offset: int, compression: str = "") -> bytes:
    """The serialized record starting at byte ``offset`` of the *uncompressed* stream of a shard.

    Used to fetch a handful of records (the montage's samples) without reading
    a whole shard: an uncompressed shard is read from ``offset`` on; a GZIP one
    is decompressed up to it.
    """
    if compression == "GZIP":  # no random access into a GZIP stream: decompress up to the record
        with (path.open("rb") if path.is_local else io.BytesIO(path.read_bytes())) as raw:
            stream = gzip.GzipFile(fileobj=raw)
            stream.seek(offset)
            header = stream.read(12)
            data = stream.read(_record_length(header, path, offset))
    elif path.is_local:
        with open(path.url, "rb") as stream:
            stream.seek(offset)
            header = stream.read(12)
            data = stream.read(_record_length(header, path, offset))
    else:  # two ranged reads from the object store
        header = path.fs.cat_file(path.url, start=offset, end=offset + 12)
        start = offset + 12
        data = path.fs.cat_file(path.url, start=start, end=start + _record_length(header, path, offset))
    return data


def _record_length(header: bytes, path: StoragePath, offset: int) -> int:
    if len(header) < 12:
        raise ValueError(f"{path}: no record at byte {offset}")
    return struct.unpack("<Q", header[:8])[0]


def decode_image(serialized: bytes, box_size: int, channels: int) -> np.ndarray:
    """The crop of one serialized record, ``(box, box, C)`` uint8."""
    example = _tf().train.Example.FromString(serialized)
    data = example.features.feature["image"].bytes_list.value[0]
    return np.frombuffer(data, dtype=np.uint8).reshape(box_size, box_size, channels)


def write_shard(target: StoragePath, serialized: Iterable[bytes], compression: str = "",
                on_record: Callable[[int, bytes], None] | None = None) -> int:
    """Write TFRecords so the shard appears complete or not at all; return the record count.

    TF's writer writes a local temporary file (it frames records with CRCs and
    can GZIP them), which is then moved into place: renamed beside the target
    locally, uploaded for a bucket. ``on_record(offset, record)`` is told where
    each record starts in the uncompressed stream (see :func:`read_record_at`).
    """
    tf = _tf()
    options = tf.io.TFRecordOptions(compression_type=compression or "")
    directory = os.path.dirname(target.url) if target.is_local else None
    if directory:
        os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; shards are shared like any output
    count = offset = 0
    try:
        with tf.io.TFRecordWriter(temporary, options) as writer:
            for record in serialized:
                if on_record is not None:
                    on_record(offset, record)
                writer.write(record)
                count += 1
                offset += framed_size(record)
        if target.is_local:
            os.replace(temporary, target.url)
        else:
            target.fs.put_file(temporary, target.url)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return count


def shard_name(split: str, index: int, total: int, compression: str = "") -> str:
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return f"{split}-{index:05d}-of-{total:05d}{suffix}"
