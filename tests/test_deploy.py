"""deploy/: the files a user launches with parse, and the Flex Template maps parameters to a dpbeam command."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _flex_main():
    spec = importlib.util.spec_from_file_location("flex_main", DEPLOY / "dataflow/flex_main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flex_template_parameters_become_a_dpbeam_command_line():
    argv = _flex_main().to_dpbeam_argv([
        "--command=prepare", "--root=gs://b/p", "--config=screen.json", "--single_cells=sc", "--overwrite=true",
        "--runner=DataflowRunner", "--project=x", "--temp_location=gs://b/tmp"])
    assert argv == ["--root", "gs://b/p", "--config", "screen.json", "--single-cells", "sc", "prepare",
                    "--overwrite", "--runner=DataflowRunner", "--project=x", "--temp_location=gs://b/tmp"]


def test_flex_template_metadata_names_every_parameter_flex_main_reads():
    metadata = json.loads((DEPLOY / "dataflow/flex-template-metadata.json").read_text())
    names = {p["name"] for p in metadata["parameters"]}
    assert names == set(_flex_main().GLOBAL) | {"command", "overwrite"}


def test_training_and_schedule_files_parse():
    documents = list(yaml.safe_load_all((DEPLOY / "training/k8s-multiworker.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["Service", "StatefulSet"]
    assert documents[1]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    job = json.loads((DEPLOY / "training/vertex-custom-job.json").read_text())
    assert all("train" in pool["containerSpec"]["args"] for pool in job["jobSpec"]["workerPoolSpecs"])
    ast.parse((DEPLOY / "schedule/airflow_dag.py").read_text())


def test_containers_run_as_a_non_root_user():
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (DEPLOY / "docker" / name).read_text()
        assert "USER dpbeam" in text and "--constraint constraints.txt" in text
