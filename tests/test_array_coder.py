"""Numpy arrays in Beam collections: encoded as .npy, measured without encoding them."""

from __future__ import annotations

import io
import json
import shutil

import apache_beam as beam
import numpy as np
import pytest
from apache_beam import typehints

from beam_pipelines import array_coder
from beam_pipelines.array_coder import ArrayCoder
from tests.conftest import EXAMPLE, write_config


@pytest.mark.parametrize("array", [
    np.random.default_rng(0).random((3, 8, 8, 5), dtype=np.float32),
    np.arange(24, dtype=">i4").reshape(4, 6)[:, ::2],  # big-endian, not contiguous
    np.zeros((0, 672), np.float32),
    np.array(3.5),
])
def test_arrays_come_back_equal_with_their_dtype_and_shape(array):
    coder = ArrayCoder()
    back = coder.decode(coder.encode(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_the_size_estimate_does_not_encode(monkeypatch):
    """Beam samples every collection's element sizes; a site's crops are ~22 MB."""
    crops = np.zeros((67, 128, 128, 5), np.float32)

    def no_encoding(*_args, **_kwargs):
        raise AssertionError("the estimate encoded the array")

    monkeypatch.setattr(np.lib.format, "write_array", no_encoding)
    coder = ArrayCoder()
    assert coder.estimate_size(crops) == crops.nbytes + array_coder._HEADER_BYTES
    assert coder.get_impl().estimate_size(crops) == crops.nbytes + array_coder._HEADER_BYTES
    monkeypatch.undo()
    assert abs(coder.estimate_size(crops) - len(coder.encode(crops))) <= 64


def test_object_arrays_are_refused_not_pickled():
    with pytest.raises(ValueError, match="allow_pickle"):
        ArrayCoder().encode(np.array([{"a": 1}, None], dtype=object))
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickled .npy from elsewhere
    with pytest.raises(ValueError, match="allow_pickle"):
        ArrayCoder().decode(buffer.getvalue())


def test_registered_for_array_type_hints_also_inside_tuples():
    array_coder.register()
    coder = beam.coders.registry.get_coder(typehints.Tuple[str, np.ndarray])
    assert isinstance(coder, beam.coders.TupleCoder)
    assert isinstance(coder.coders()[1], ArrayCoder)


def test_profiles_crops_collection_is_measured_by_the_array_coder(tmp_path, example_config_dict):
    """The collection profile's CutCells emits (site, crops) on: its coder is a tuple coder whose array part is
    ``ArrayCoder`` (so the workers' size sampling reads ``nbytes``), and batches of it keep that coder."""
    from beam_pipelines import profile
    from dpcore.config import parse_config
    from dpcore.layout import ProjectLayout
    from dpcore.profiling import FeatureModelSpec
    from dpcore.single_cells import CellSource

    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root)
    data = json.loads(json.dumps(example_config_dict))
    write_config(root, data)
    layout = ProjectLayout.create(root)
    source = CellSource.from_config(layout, parse_config(data))
    spec = FeatureModelSpec("cnn", 3, "features", (64, 64, 5))
    pipeline = beam.Pipeline()
    profile.build(pipeline, source, spec, 16, layout.index_file, False, {})
    outputs = CollectionsOf()
    pipeline.visit(outputs)
    crops = outputs.of("CutCells/ParDo(CutCells)")
    coder = beam.coders.registry.get_coder(crops.element_type)
    assert isinstance(coder, beam.coders.TupleCoder) and isinstance(coder.coders()[1], ArrayCoder)
    batches = outputs.of("BatchElements/ParDo(_GlobalWindowsBatchingDoFn)")
    assert ArrayCoder in coder_kinds(beam.coders.registry.get_coder(batches.element_type))


class CollectionsOf(beam.pipeline.PipelineVisitor):
    """Every step's main output collection, by the step's full label."""

    def __init__(self):
        self.main: dict[str, beam.PCollection] = {}

    def visit_transform(self, node) -> None:
        if None in node.outputs:
            self.main[node.full_label] = node.outputs[None]

    def of(self, label_end: str) -> beam.PCollection:
        found = [pcoll for label, pcoll in self.main.items() if label.endswith(label_end)]
        assert len(found) == 1, sorted(self.main)
        return found[0]


def coder_kinds(coder: beam.coders.Coder) -> set[type]:
    kinds = {type(coder)}
    for component in coder._get_component_coders():
        kinds |= coder_kinds(component)
    return kinds
