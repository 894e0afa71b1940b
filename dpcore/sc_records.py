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
records it and the reader refuses other versions. Writing needs no TensorFlow
(records are encoded and framed here); the readers import it lazily.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import google_crc32c
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
    """The record as a serialized ``tf.train.Example``, written without TensorFlow.

    The bytes are exactly those of ``Example.SerializeToString(deterministic=True)``
    (a test compares them): the feature map sorted by key, so two workers write the
    same bytes for the same cell. Encoding by hand spares export-sc's workers the
    import of TensorFlow (~5 s of start-up) for eleven fields of protobuf.

    The pixels are copied once, into the record: each level of protobuf nesting is a
    header computed from the lengths inside it, and the parts are joined at the end
    (nesting by concatenation copied the 82 KB of a 128-pixel crop seven times).
    """
    text = {"label_name": record.label_name, "split": record.split, "split_value": record.split_value,
            "plate": record.plate, "well": record.well, "site": record.site}
    features: dict[str, list] = {name: [_bytes_feature(value.encode("utf-8"))] for name, value in text.items()}
    pixels = memoryview(np.ascontiguousarray(record.image, dtype=np.uint8)).cast("B")
    bytes_list = _header(1, len(pixels))                                  # BytesList{value: [pixels]}
    feature = _header(1, len(bytes_list) + len(pixels))                    # Feature.bytes_list
    features["image"] = [feature, bytes_list, pixels]
    features["label"] = [_int64_feature(record.label)]
    features["cell_index"] = [_int64_feature(record.cell_index)]
    features["center_x"] = [_float_feature(record.center_x)]
    features["center_y"] = [_float_feature(record.center_y)]
    parts: list = []
    for name in sorted(features, key=functools.cmp_to_key(_map_key_order)):
        key = _field(1, name.encode("utf-8"))
        value_length = sum(len(part) for part in features[name])
        value = _header(2, value_length)
        parts += [_header(1, len(key) + len(value) + value_length), key, value, *features[name]]
    return b"".join([_header(1, sum(len(part) for part in parts)), *parts])


def _map_key_order(a: str, b: str) -> int:
    """protobuf's (upb's) deterministic order of string map keys: bytes compared over the shorter
    length; when one is a prefix of the other, the longer first ("label_name" before "label")."""
    common = min(len(a), len(b))
    if a[:common] != b[:common]:
        return -1 if a[:common] < b[:common] else 1
    return len(b) - len(a)


# Protobuf wire format, the three shapes of tf.train.Feature used above (length-delimited fields only).
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf writes it: two's complement, up to 10 bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _header(number: int, length: int) -> bytes:
    """A length-delimited field's tag and length, for a payload of ``length`` bytes written after it."""
    return _varint(number << 3 | 2) + _varint(length)


def _field(number: int, payload: bytes) -> bytes:
    return _header(number, len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))                      # Feature.bytes_list = BytesList{value: [value]}


def _float_feature(value: float) -> bytes:
    return _field(2, _field(1, struct.pack("<f", value)))   # Feature.float_list, packed float


def _int64_feature(value: int) -> bytes:
    return _field(3, _field(1, _varint(int(value))))        # Feature.int64_list, packed varint


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
    reader = file_reader(files, compression)
    cycle = min(parallel_reads, max(1, len(files)))
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        reader, cycle_length=cycle, num_parallel_calls=cycle, deterministic=True)
    return records.map(lambda s: parse(s, box_size, channels), num_parallel_calls=tf.data.AUTOTUNE)


def file_reader(files: list[str], compression: str = "") -> Callable:
    """``file tensor -> dataset of its serialized records`` for these shards (all in one store).

    TensorFlow reads local and ``gs://`` shards itself; it has no S3 file system on this stack
    (tensorflow-io cannot load under TF >= 2.20), so ``s3://`` shards are streamed through fsspec
    by :func:`iter_records` in a ``from_generator`` (sequential reads of whole records).
    """
    tf = _tf()
    if not files or StoragePath(files[0]).tensorflow_reads:
        return lambda file: tf.data.TFRecordDataset(file, compression_type=compression or None)
    signature = tf.TensorSpec((), tf.string)
    return lambda file: tf.data.Dataset.from_generator(
        lambda name: iter_records(StoragePath(name.decode()), compression), args=(file,), output_signature=signature)


def iter_records(path: StoragePath, compression: str = "") -> Iterator[bytes]:
    """The serialized records of a shard in order, read through fsspec (CRCs are not re-checked:
    object stores verify transfers themselves)."""
    with path.open("rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if compression == "GZIP" else raw
        while True:
            header = stream.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header")
            length = struct.unpack("<Q", header[:8])[0]
            data = stream.read(length + 4)
            if len(data) < length + 4:
                raise ValueError(f"{path}: truncated record")
            yield data[:length]


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
    """The crop of one serialized record, ``(box, box, C)`` uint8 (parsed here, without TensorFlow)."""
    for entry in _fields(_only_field(serialized, 1), 1):                 # Example.features -> map entries
        key, value = _only_field(entry, 1), _only_field(entry, 2)
        if key == b"image":
            data = _only_field(_only_field(value, 1), 1)                   # Feature.bytes_list.value[0]
            return np.frombuffer(data, dtype=np.uint8).reshape(box_size, box_size, channels)
    raise ValueError("not a single-cell record: it has no image feature")


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position


def _fields(message: bytes, number: int) -> Iterator[bytes]:
    """The payloads of the length-delimited fields ``number`` of a message (other fields skipped)."""
    position = 0
    while position < len(message):
        tag, position = _read_varint(message, position)
        wire = tag & 7
        if wire == 2:
            length, position = _read_varint(message, position)
            if tag >> 3 == number:
                yield message[position:position + length]
            position += length
        elif wire == 0:
            _, position = _read_varint(message, position)
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def _only_field(message: bytes, number: int) -> bytes:
    return next(iter(_fields(message, number)), b"")


def write_shard(target: StoragePath, serialized: Iterable[bytes], compression: str = "",
                on_record: Callable[[int, bytes], None] | None = None) -> int:
    """Write TFRecords so the shard appears complete or not at all; return the record count.

    Records are framed as TensorFlow frames them (length, masked CRC-32C of the
    length, data, masked CRC-32C of the data), optionally in one GZIP stream
    (``compression="GZIP"``, what ``TFRecordDataset`` reads with that option),
    into a local temporary file that is then moved into place: renamed beside the
    target locally, uploaded for a bucket. ``on_record(offset, record)`` is told
    where each record starts in the uncompressed stream (see :func:`read_record_at`).
    """
    if compression not in ("", "GZIP"):
        raise ValueError(f"TFRecord compression must be '' or 'GZIP', got {compression!r}")
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
        with open(temporary, "wb") as raw:
            # mtime 0: the same records give the same bytes on every run and worker.
            stream = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compression else raw
            with stream:
                for record in serialized:
                    if on_record is not None:
                        on_record(offset, record)
                    head, tail = frame_ends(record)
                    stream.write(head)  # three writes: the record is not copied to be framed
                    stream.write(record)
                    stream.write(tail)
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


def frame_ends(record: bytes) -> tuple[bytes, bytes]:
    """What a TFRecord frame puts before ``record`` (length, its masked CRC) and after it (the data's)."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)), struct.pack("<I", _masked_crc(record))


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def shard_name(split: str, index: int, total: int, compression: str = "") -> str:
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return f"{split}-{index:05d}-of-{total:05d}{suffix}"
