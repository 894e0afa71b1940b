"""Other runners: Dataflow job graphs built locally (no cloud), and the portable runner.

A Dataflow dry run translates the whole pipeline and pickles every step, which
is where packaging mistakes (an unpicklable DoFn, a missing import on workers)
show up, without credentials or network.
"""

from __future__ import annotations

import shutil

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines.export_sc import ExportSingleCells, plan
from beam_pipelines.prepare import PreparePlates, PrepareSettings
from beam_pipelines.profile import ProfileSites
from dpcore.config import load_config
from dpcore.layout import ProjectLayout
from dpcore.metadata import load_sites
from dpcore.profiling import FeatureModelSpec
from dpcore.single_cells import CellSource
from tests.conftest import EXAMPLE, run_cli
from tests.test_prepare_pipeline import load_npz, output_files

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
    sites = load_sites(EXAMPLE / "inputs/metadata/index.csv", config, "export-sc")
    # Graph construction reads nothing under ROOT: a bucket that does not exist is fine.
    return ProjectLayout.create("gs://dpbeam-test/project"), config, sites


def test_prepare_graph_builds_for_dataflow(bucket_project):
    layout, config, _ = bucket_project
    pipeline = dataflow_pipeline()
    _ = pipeline | "Prepare" >> PreparePlates(PrepareSettings.from_config(layout, config), str(layout.index_file),
                                              frozenset({"20585"}), {})
    job = pipeline.run().job
    assert {"Prepare/ReadSiteContributions", "Prepare/CombinePlateStatistics", "Prepare/WritePlateStatistics",
            "Prepare/CompressSites", "Prepare/FinalizePlates", "Prepare/DeadLetters"} <= step_names(job)
    images = [env.payload for env in job.proto_pipeline.components.environments.values()]
    assert any(IMAGE.encode() in payload for payload in images)


def test_export_graph_builds_for_dataflow(bucket_project):
    layout, config, sites = bucket_project
    # Planning samples locations files; point it at the local copy, then build for the bucket.
    local = plan(ProjectLayout.create(EXAMPLE), config, sites, "tfrecord", "GZIP", 64)
    settings = type(local)(**{**local.__dict__, "source": CellSource.from_config(layout, config)})
    pipeline = dataflow_pipeline()
    _ = pipeline | "ExportSingleCells" >> ExportSingleCells(settings, str(layout.index_file))
    job = pipeline.run().job
    assert {"ExportSingleCells/KeyByShard", "ExportSingleCells/GroupByShard", "ExportSingleCells/WriteShards",
            "ExportSingleCells/WriteIndexAndManifest"} <= step_names(job)


def test_profile_graph_puts_inference_on_an_accelerator(bucket_project):
    layout, config, _ = bucket_project
    spec = FeatureModelSpec("efficientnet", 0, "block6a_activation", (128, 128, 5), num_classes=2,
                            checkpoint="gs://dpbeam-test/project/outputs/results/checkpoint/checkpoint_0003.hdf5")
    pipeline = dataflow_pipeline()
    _ = pipeline | "Profile" >> ProfileSites(CellSource.from_config(layout, config), spec, 32,
                                             str(layout.index_file), frozenset(), layout.features_dir / "_failed.jsonl",
                                             accelerator=ACCELERATOR)
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
