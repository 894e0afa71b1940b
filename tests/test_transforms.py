"""The transform tier: pipeline steps on a few records with TestPipeline, assert_that and a fake model.

Seconds each, no real network: most pipeline logic (index reading and
de-duplication, per-plate resume, the feature join, the export's totals) is
checked here; the end-to-end tests keep the real models and images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines.index import ReadSites
from beam_pipelines.dead_letter import read_failures
from beam_pipelines.profile import FeatureModelHandler, ProfileSites, SiteModelHandler, cells_in
from dpcore import features
from dpcore.config import parse_config
from dpcore.layout import ProjectLayout
from dpcore.profiling import FeatureModelSpec
from dpcore.sc_export import ExportTotals, ShardRecord
from dpcore.single_cells import CellSource
from tests import reference
from tests.conftest import EXAMPLE

CHANNELS = ("DNA", "RNA", "ER", "AGP", "Mito")


def _index(tmp_path: Path, rows: list[list[str]]) -> str:
    path = tmp_path / "index.csv"
    header = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", *CHANNELS, "Treatment"]
    pd.DataFrame(rows, columns=header).to_csv(path, index=False)
    return str(path)


def test_read_sites_keeps_the_first_line_of_a_duplicate_and_reports_the_others(tmp_path):
    files = ["a.tif"] * 5
    path = _index(tmp_path, [["P", "A01", "1", *files, "x"], ["P", "A01", "2", *files, "y"],
                             ["P", "A01", "1", *files, "z"], ["P", "A02", "", *files, "w"]])
    with TestPipeline() as pipeline:
        read = pipeline | ReadSites(path, CHANNELS)
        assert_that(read["sites"] | beam.Map(lambda s: (s.key, s.value("Treatment"), s.row)),
                    equal_to([("P/A01-1", "x", 0), ("P/A01-2", "y", 1)]), label="Sites")
        assert_that(read["failed"] | beam.Map(lambda f: (f["item"], f["reason"])), equal_to([
            ("P/A01-1", "index line 4 duplicates line 2 (site P/A01-1); the first line is used"),
            (path, "line 5: empty value in column(s) Metadata_Site")]), label="Failures")


def test_read_sites_numbers_each_group_in_index_order(tmp_path):
    """export-sc deals sites to shards by their position within their split, counted as the index is read."""
    files = ["a.tif"] * 5
    rows = [["P", "A01", "1", *files, "t"], ["P", "A01", "2", *files, "v"], ["P", "A02", "1", *files, "t"],
            ["P", "A02", "2", *files, "t"], ["P", "A01", "1", *files, "v"], ["P", "A03", "1", *files, "v"]]
    path = _index(tmp_path, rows)
    with TestPipeline() as pipeline:
        read = pipeline | ReadSites(path, CHANNELS, number_by=lambda site: site.value("Treatment"))
        # The duplicate (line 6) takes a number, and is dropped: P/A03-1 is the third of group v.
        assert_that(read["sites"] | beam.Map(lambda s: (s.key, s.ordinal)), equal_to(
            [("P/A01-1", 0), ("P/A01-2", 0), ("P/A02-1", 1), ("P/A02-2", 2), ("P/A03-1", 2)]))


class MeanPerChannel(ModelHandler):
    """A fake model: a cell's 'features' are its crop's mean per channel; each element is a site's crops."""

    def load_model(self):
        return None

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[np.ndarray]:
        return [crops.mean(axis=(1, 2)) for crops in batch]

    def batch_elements_kwargs(self) -> dict:  # profile's: up to 7 cells a batch, so every site is alone in one
        return {"min_batch_size": 7, "max_batch_size": 7, "element_size_fn": cells_in}


@pytest.fixture()
def two_sites(tmp_path, example_config_dict):
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root)
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    index = index[index["Metadata_Site"].isin(["1"])]
    index.to_csv(root / "inputs/metadata/index.csv", index=False)
    data = json.loads(json.dumps(example_config_dict))
    data["prepare"]["compression"]["implement"] = False
    data["dataset"]["locations"]["box_size"] = 32
    config = parse_config(data)
    layout = ProjectLayout.create(root)
    return root, layout, CellSource.from_config(layout, config)


class FailsOnSitesOf(MeanPerChannel):
    """The fake model, failing on a batch holding a site of exactly ``cells`` cells."""

    def __init__(self, cells: int):
        super().__init__()
        self.cells = cells

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[np.ndarray]:
        if any(len(crops) == self.cells for crops in batch):
            raise RuntimeError("the accelerator ran out of memory")
        return super().run_inference(batch, model, inference_args)


def _profile(layout: ProjectLayout, source: CellSource, overwrite: bool = False,
             handler: ModelHandler | None = None) -> list:
    spec = FeatureModelSpec("fake", 0, "none", (32, 32, 5))
    with TestPipeline() as pipeline:
        out = pipeline | ProfileSites(source, spec, 7, str(layout.index_file), overwrite,
                                      layout.features_dir / "_failed/test.jsonl", {"model": "fake"},
                                      model_handler=handler or MeanPerChannel())
        assert_that(out | beam.Map(lambda record: record["index"]), equal_to([str(layout.index_file)]))
    return [json.loads((layout.features_dir / "_runs/index.json").read_text())]


def test_profile_writes_each_cells_vector_in_its_site_and_commits_a_run_record(two_sites):
    root, layout, source = two_sites
    (record,) = _profile(layout, source)
    assert record["sites_written"] == 2 and record["sites_committed_earlier"] == 0
    for well in ("A01", "A13"):
        frame = pd.read_parquet(root / f"outputs/results/features/20585/{well}-1.parquet")
        centres = pd.read_csv(root / f"inputs/locations/20585/{well}-1-Nuclei.csv").to_numpy()
        assert list(frame["Metadata_Cell_Index"]) == list(range(len(centres)))
        row = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str).set_index("Metadata_Well").loc[well]
        import tifffile  # noqa: PLC0415
        image = np.stack([tifffile.imread(root / "inputs/images" / row[c]) for c in CHANNELS], axis=-1)
        for cell in (0, len(centres) // 2, len(centres) - 1):
            expected = reference.crop_cell(image.astype(np.float64), *centres[cell], 32).mean(axis=(0, 1))
            got = frame.loc[frame["Metadata_Cell_Index"] == cell, [f"fake_{i}" for i in range(5)]].to_numpy()[0]
            np.testing.assert_allclose(got, expected, atol=2e-6)
    manifest = json.loads((root / "outputs/results/features/_manifest.json").read_text())
    assert manifest == {"model": "fake"}
    assert json.loads((root / "outputs/results/features/_runs/index.json").read_text()) == record


def test_profile_resume_is_decided_per_plate_on_the_workers(two_sites):
    root, layout, source = two_sites
    _profile(layout, source)
    kept = root / "outputs/results/features/20585/A01-1.parquet"
    before = kept.read_bytes()
    (root / "outputs/results/features/20585/A13-1.parquet").unlink()
    (record,) = _profile(layout, source)
    assert (record["sites_written"], record["sites_committed_earlier"], record["sites_committed"]) == (1, 1, 2)
    assert kept.read_bytes() == before
    assert features.committed_in_plate(layout.features_dir, "20585") == {"20585/A01-1", "20585/A13-1"}
    (record,) = _profile(layout, source, overwrite=True)
    assert (record["sites_written"], record["sites_committed_earlier"]) == (2, 0)


def test_a_site_the_model_fails_on_goes_to_the_dead_letters_and_loses_its_earlier_file(two_sites):
    root, layout, source = two_sites
    _profile(layout, source)
    failing = root / "outputs/results/features/20585/A13-1.parquet"
    written = root / "outputs/results/features/20585/A01-1.parquet"
    cells = len(pd.read_csv(root / "inputs/locations/20585/A13-1-Nuclei.csv"))
    assert cells != len(pd.read_csv(root / "inputs/locations/20585/A01-1-Nuclei.csv"))
    (record,) = _profile(layout, source, overwrite=True, handler=FailsOnSitesOf(cells))
    assert (record["sites_written"], record["failure_records"], record["sites_committed"]) == (1, 1, 1)
    assert written.exists() and not failing.exists()  # the earlier run's file would pass as this run's
    (failure,) = read_failures(layout.features_dir / "_failed/test.jsonl")
    assert failure["stage"] == "inference" and failure["item"] == "20585/A13-1"
    assert failure["reason"] == ("RuntimeError: the accelerator ran out of memory "
                                 "(its features from an earlier run were removed)")


def test_a_site_larger_than_a_batch_is_inferred_without_a_failed_batch():
    """Beam's BatchElements emits an empty batch before a first site of more cells than the batch size;
    Beam's KeyedModelHandler would fail on it and RunInference report a failed batch."""
    sites = [(f"P/A01-{i}", np.full((8 + i, 4, 4, 2), float(i), np.float32)) for i in range(1, 4)]
    with TestPipeline() as pipeline:
        inferred, dead = (pipeline | beam.Create(sites)
                          | RunInference(SiteModelHandler(MeanPerChannel())).with_exception_handling())
        assert_that(inferred | beam.Map(lambda kv: (kv[0], kv[1].shape, float(kv[1].max()))),
                    equal_to([(f"P/A01-{i}", (8 + i, 2), float(i)) for i in range(1, 4)]), label="Vectors")
        assert_that(dead.failed_inferences, equal_to([]), label="NoFailedBatch")


def test_profiles_handler_gives_each_site_of_a_batch_its_own_vectors():
    handler = FeatureModelHandler(FeatureModelSpec("fake", 0, "none", (4, 4, 2)), batch_size=8)
    sites = [np.full((count, 4, 4, 2), value, np.float32) for count, value in ((3, 1.0), (1, 2.0), (9, 3.0))]
    calls = []

    def model(crops: np.ndarray) -> np.ndarray:  # a cell's vector: its crop's mean per channel
        calls.append(len(crops))
        return crops.mean(axis=(1, 2))

    vectors = list(handler.run_inference(sites, model))
    assert calls == [13]  # the batch's sites in one call: the engine splits it in its own parts
    assert [v.shape for v in vectors] == [(3, 2), (1, 2), (9, 2)]
    for site, value in zip(vectors, (1.0, 2.0, 3.0)):
        np.testing.assert_array_equal(site, value)
    assert list(handler.run_inference([], model)) == [] and calls == [13]
    assert handler.batch_elements_kwargs()["element_size_fn"] is cells_in
    assert cells_in(sites[2]) == cells_in(("site info", sites[2])) == 9


def _record(split: str, index: int, cells: dict, missing: list[str], samples: list) -> ShardRecord:
    return ShardRecord(split=split, index=index, shard=f"{split}-{index}", sites=2, cells=sum(cells.values()),
                       cells_per_label=cells, skipped={"outside": 1, "nan": 0}, sites_without_locations=missing,
                       failures=[{"stage": "images", "item": "x", "reason": "y"}], samples=samples)


def test_export_totals_are_the_same_in_any_order_and_stay_bounded():
    labels = ("a", "b")
    records = [_record("training", i, {"a": i, "b": 2 * i}, [f"P/A0{i}-1"],
                       [(0.1 * i, "a", [i, 10 * i]), (0.05 * i + 0.01, "b", [i, 0])]) for i in range(1, 12)]
    records.append(_record("validation", 0, {"a": 5}, [], []))
    forward = ExportTotals()
    for record in records:
        forward.add(record, labels)
    halves = [ExportTotals(), ExportTotals()]
    for n, record in enumerate(reversed(records)):
        halves[n % 2].add(record, labels)
    merged = ExportTotals().merge(halves[1], labels).merge(halves[0], labels)
    assert forward == merged
    assert forward.counts == {"training": sum(3 * i for i in range(1, 12)), "validation": 5, "other": 0}
    assert forward.sites_without_locations_count == 11 and forward.failures == 12
    assert len([s for s in forward.samples if s[1] == "a"]) == 8, "8 montage samples per label, no more"
    assert forward.samples[0] == (0.1, "a", "training", 1, [1, 10])
