"""export-sc's records are written without TensorFlow; TensorFlow itself is the reference that reads them."""

from __future__ import annotations

import numpy as np
import pytest

from dpcore import sc_records
from dpcore.storage import StoragePath


def _records() -> list[sc_records.CellRecord]:
    rng = np.random.default_rng(0)
    rows = ((0, 0, 1.5, 2.25), (7, 300, 695.123456, 0.0), (-1, 2**40, -3.3, 1e-30), (1, 5, 12.0, 519.99))
    return [sc_records.CellRecord(rng.integers(0, 256, (16, 16, 5), dtype=np.uint8), label, "niflumic acid",
                                  "training", "A", "20585", "A01", "3", cell, x, y) for label, cell, x, y in rows]


def _tensorflow_example(record: sc_records.CellRecord) -> bytes:
    import tensorflow as tf  # a required dependency: missing means a broken install, so fail

    train = tf.train

    def text(value: str):
        return train.Feature(bytes_list=train.BytesList(value=[value.encode()]))

    feature = {
        "image": train.Feature(bytes_list=train.BytesList(value=[record.image.tobytes()])),
        "label": train.Feature(int64_list=train.Int64List(value=[record.label])),
        "cell_index": train.Feature(int64_list=train.Int64List(value=[record.cell_index])),
        "center_x": train.Feature(float_list=train.FloatList(value=[record.center_x])),
        "center_y": train.Feature(float_list=train.FloatList(value=[record.center_y])),
        **{name: text(getattr(record, name)) for name in ("label_name", "split", "split_value", "plate", "well",
                                                          "site")},
    }
    return train.Example(features=train.Features(feature=feature)).SerializeToString(deterministic=True)


def test_records_are_byte_for_byte_tensorflows_examples():
    for record in _records():
        assert sc_records.encode(record) == _tensorflow_example(record)


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_shards_are_read_back_by_tensorflow(tmp_path, compression):
    import tensorflow as tf

    serialized = [sc_records.encode(record) for record in _records()]
    target = tmp_path / "training-00000-of-00001.tfrecord"
    offsets = []
    assert sc_records.write_shard(StoragePath(str(target)), serialized, compression,
                                  on_record=lambda offset, _: offsets.append(offset)) == 4
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(target), compression_type=compression or None)] \
        == serialized
    if not compression:  # the framing is TensorFlow's own writer's, byte for byte
        reference = tmp_path / "reference.tfrecord"
        with tf.io.TFRecordWriter(str(reference)) as writer:
            for record in serialized:
                writer.write(record)
        assert target.read_bytes() == reference.read_bytes()
        assert [sc_records.read_record_at(StoragePath(str(target)), offset) for offset in offsets] == serialized
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_writing_records_does_not_import_tensorflow(tmp_path):
    import subprocess
    import sys

    code = ("import sys, numpy as np; from dpcore import sc_records; from dpcore.storage import StoragePath;"
            "r = sc_records.CellRecord(np.zeros((4, 4, 5), np.uint8), 0, 'a', 'training', 'x', 'p', 'w', '1', 0, 1.0,"
            " 2.0); sc_records.write_shard(StoragePath(sys.argv[1]), [sc_records.encode(r)]);"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.tfrecord")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_the_crop_is_read_back_from_a_record():
    for record in _records():
        assert np.array_equal(sc_records.decode_image(sc_records.encode(record), 16, 5), record.image)
    with pytest.raises(ValueError, match="no image"):
        sc_records.decode_image(b"", 16, 5)
