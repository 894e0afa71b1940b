"""Other runners: Dataflow job graphs built locally (no cloud), and the portable runner in-process.

A Dataflow dry run translates the whole pipeline and pickles every step, which
is where packaging mistakes (an unpicklable DoFn, a missing import on workers)
show up, without credentials or network.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines.export_sc import ExportSingleCells, plan
from beam_pipelines.prepare import PreparePlates, PrepareSettings
from beam_pipelines.profile import ProfileSites
from dpcore.config import load_config
from dpcore.layout import ProjectLayout
from dpcore.profiling import FeatureModelSpec
from dpcore.single_cells import CellSource
from tests.conftest import EXAMPLE, load_npz, output_files, run_cli

pytestmark = pytest.mark.pipeline
IMAGE = "europe-docker.pkg.dev/example/dpbeam/worker:0.1.0"
ACCELERATOR = "type:nvidia-tesla-t4;count:1;install-nvidia-driver"


def dataflow_pipeline() -> beam.Pipeline:
    return beam.Pipeline(options=PipelineOptions([
        "--runner=DataflowRunner", "--project=dpbeam-test", "--region=us-central1",
        "--temp_location=gs://dpbeam-test/tmp", f"--sdk_container_image={IMAGE}", "--dry_run=True"]))


def step_names(job) -> set[str]:
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


@pytest.fixture(scope="module")
def bucket_project():
    config = load_config(EXAMPLE / "inputs/config/bbbc022.json")
    # Graph construction reads nothing under ROOT: a bucket that does not exist is fine.
    return ProjectLayout.create("gs://dpbeam-test/project"), config


def test_prepare_graph_builds_for_dataflow(bucket_project):
    layout, config = bucket_project
    pipeline = dataflow_pipeline()
    _ = pipeline | "Prepare" >> PreparePlates(PrepareSettings.from_config(layout, config), str(layout.index_file),
                                              frozenset({"20585"}), {})
    job = pipeline.run().job
    assert {"Prepare/ReadSiteContributions", "Prepare/CombinePlateStatistics", "Prepare/WritePlateStatistics",
            "Prepare/CompressSites", "Prepare/FinalizePlates", "Prepare/DeadLetters"} <= step_names(job)
    images = [env.payload for env in job.proto_pipeline.components.environments.values()]
    assert any(IMAGE.encode() in payload for payload in images)


def _bucket_export_settings(bucket_project, shards: dict | None = None):
    layout, config = bucket_project
    # Planning scans the index and samples locations files: point it at the local copy, then build for the bucket.
    local = plan(ProjectLayout.create(EXAMPLE), config, ProjectLayout.create(EXAMPLE).index_file, "tfrecord",
                 "GZIP", 64)
    export_plan = replace(local.plan, shards=shards) if shards else local.plan
    return replace(local, source=CellSource.from_config(layout, config), plan=export_plan)


def test_export_graph_builds_for_dataflow(bucket_project):
    layout, _ = bucket_project
    pipeline = dataflow_pipeline()
    _ = pipeline | "ExportSingleCells" >> ExportSingleCells(_bucket_export_settings(bucket_project),
                                                            str(layout.index_file))
    job = pipeline.run().job
    assert {"ExportSingleCells/KeyByShard", "ExportSingleCells/GroupByShard", "ExportSingleCells/WriteShards",
            "ExportSingleCells/AddUpShards", "ExportSingleCells/WriteExportCommit"} <= step_names(job)


def test_job_graphs_do_not_grow_with_the_screen(bucket_project):
    """Dataflow refuses job graphs over ~10 MB: nothing per site or per shard may enter them."""
    layout, _ = bucket_project
    sizes = []
    for shards in ({"training": 2, "validation": 1}, {"training": 2_000_000, "validation": 500_000}):
        pipeline = dataflow_pipeline()
        _ = pipeline | "ExportSingleCells" >> ExportSingleCells(_bucket_export_settings(bucket_project, shards),
                                                                str(layout.index_file))
        sizes.append(len(pipeline.run().job.proto_pipeline.SerializeToString()))
    assert abs(sizes[1] - sizes[0]) < 100 and sizes[1] < 1_000_000, sizes


def test_profile_graph_puts_inference_on_an_accelerator(bucket_project):
    layout, config = bucket_project
    spec = FeatureModelSpec("efficientnet", 0, "block6a_activation", (128, 128, 5), num_classes=2,
                            checkpoint="gs://dpbeam-test/project/outputs/results/checkpoint/checkpoint_0003.hdf5")
    pipeline = dataflow_pipeline()
    _ = pipeline | "Profile" >> ProfileSites(CellSource.from_config(layout, config), spec, 32,
                                             str(layout.index_file), False, layout.features_dir / "_failed.jsonl",
                                             {"model": "efficientnet"}, accelerator=ACCELERATOR)
    job = pipeline.run().job
    transforms = job.proto_pipeline.components.transforms.values()
    hinted = {t.unique_name for t in transforms
              if any(ACCELERATOR.encode() in value for value in
                     job.proto_pipeline.components.environments[t.environment_id].resource_hints.values())}
    assert any(name.startswith("Profile/RunInference") for name in hinted), hinted
    assert not any(name.startswith("Profile/CutCells") for name in hinted)


def test_prepare_on_the_portable_runner_matches_the_direct_runner(tmp_path, prepared):
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root)
    code, text = run_cli("--root", str(root), "--config", "bbbc022.json", "prepare",
                         "--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK")
    assert code == 0, text
    assert output_files(root) == output_files(prepared[0])
    for key, value in load_npz(prepared[0]).items():
        assert (load_npz(root)[key] == value).all(), key
