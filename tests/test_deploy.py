"""deploy/: the files a user launches, checked against the schemas and rules of what runs them.

What cannot run here (Docker, Dataflow, Kubernetes, Vertex, Airflow) is checked
the way those systems read the files: Kubernetes manifests against the
Kubernetes JSON schema (kubernetes-validate, strict: unknown fields fail), the
Vertex spec against the shape ``gcloud ai custom-jobs create --config`` takes,
the worker images against Beam's container boot rules, simulated with this
interpreter.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBERNETES_VERSION = "1.30"


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


def test_flex_template_passes_the_inference_accelerator_to_profile_only():
    hint = "type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    argv = _flex_main().to_dpbeam_argv(["--command=profile", "--root=gs://b/p", "--config=c.json",
                                        f"--inference_accelerator={hint}"])
    assert argv == ["--root", "gs://b/p", "--config", "c.json", "profile", "--inference-accelerator", hint]
    from beam_pipelines.cli import build_parser
    args, leftovers = build_parser().parse_known_args(argv)
    assert args.inference_accelerator == hint and leftovers == []


def test_flex_template_metadata_names_every_parameter_flex_main_reads():
    metadata = json.loads((DEPLOY / "dataflow/flex-template-metadata.json").read_text())
    names = {p["name"] for p in metadata["parameters"]}
    assert names == set(_flex_main().GLOBAL) | {"command", "overwrite", "inference_accelerator"}


def test_kubernetes_training_manifest_is_valid_and_finishes():
    documents = list(yaml.safe_load_all((DEPLOY / "training/k8s-multiworker.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    service, job = documents
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never"), "finished workers must not be restarted"
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert pod["securityContext"]["runAsNonRoot"] is True
    script = pod["containers"][0]["args"][0]
    workers = re.findall(r"dpbeam-train-(\d+)\.dpbeam-train:12345", script)
    assert [int(w) for w in workers] == list(range(job["spec"]["completions"])) == list(
        range(job["spec"]["parallelism"]))
    assert "$JOB_COMPLETION_INDEX" in script


# The CustomJobSpec that `gcloud ai custom-jobs create --display-name NAME --config FILE` reads
# (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/CustomJobSpec): the spec itself, not a REST body.
VERTEX_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["workerPoolSpecs"],
    "properties": {
        "workerPoolSpecs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["machineSpec", "replicaCount"],
            "properties": {
                "machineSpec": {"type": "object", "additionalProperties": False, "required": ["machineType"],
                                "properties": {"machineType": {"type": "string"},
                                               "acceleratorType": {"type": "string"},
                                               "acceleratorCount": {"type": "integer"}}},
                "replicaCount": {"type": ["string", "integer"]},
                "containerSpec": {"type": "object", "additionalProperties": False, "required": ["imageUri"],
                                  "properties": {"imageUri": {"type": "string"},
                                                 "command": {"type": "array", "items": {"type": "string"}},
                                                 "args": {"type": "array", "items": {"type": "string"}}}},
                "diskSpec": {"type": "object"}}}},
        "scheduling": {"type": "object"}, "serviceAccount": {"type": "string"},
        "baseOutputDirectory": {"type": "object"}, "enableWebAccess": {"type": "boolean"}}}


def test_vertex_spec_has_the_shape_gcloud_reads_and_the_readme_names_it():
    spec = json.loads((DEPLOY / "training/vertex-custom-job.json").read_text())
    jsonschema.validate(spec, VERTEX_SPEC)
    for pool in spec["workerPoolSpecs"]:
        assert "train" in pool["containerSpec"]["args"]
    readme = (DEPLOY / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "gcloud ai custom-jobs create" in line)
    assert "--display-name" in command and "--config deploy/training/vertex-custom-job.json" in command


def test_airflow_dag_uses_the_gpu_image_for_profile_only():
    text = (DEPLOY / "schedule/airflow_dag.py").read_text()
    ast.parse(text)
    tree = ast.parse(text)
    commands = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "BashOperator":
            keywords = {k.arg: k.value for k in node.keywords}
            commands[keywords["task_id"].value] = ast.unparse(keywords["bash_command"])
    assert "GPU_IMAGE" in commands["profile"] and "--inference-accelerator" in commands["profile"]
    assert "CPU_IMAGE" in commands["prepare"] and "GPU_IMAGE" not in commands["prepare"]


def test_flink_options_are_all_known_to_the_python_sdk():
    from apache_beam.options.pipeline_options import PipelineOptions
    lines = [line for line in (DEPLOY / "flink/flink-options.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    options = PipelineOptions(lines)
    known = options.get_all_options(retain_unknown_options=False)
    for line in lines:
        name = line.split("=", 1)[0].lstrip("-")
        assert name in known, f"{name} is not a Beam Python pipeline option: the SDK would discard it"


def test_flink_options_name_what_the_engine_tests_run():
    """deploy/flink/flink-options.txt and scripts/engines.py (which the engine tests use) agree on the job
    server jar, the Flink version and the SDK worker environment."""
    from scripts import engines
    options = dict(line.lstrip("-").split("=", 1) for line in (DEPLOY / "flink/flink-options.txt").read_text()
                   .splitlines() if line.startswith("--"))
    tested = engines.flink_options("host:8081", "localhost:50000", 2, Path("/artifacts"))
    tested = dict(zip((name.lstrip("-") for name in tested[::2]), tested[1::2], strict=True))
    assert set(options) == set(tested)
    assert options["flink_job_server_jar"] == f".engines/{engines.FLINK_JOB_SERVER.name}/{engines.FLINK_JOB_SERVER.jar.name}"
    for name in ("runner", "flink_version", "environment_type", "environment_config"):
        assert options[name] == tested[name], name
    assert f"{engines.FLINK_MINOR}" in (DEPLOY / "flink/job-server.sh").read_text()
    assert engines.FLINK_JOB_SERVER.jar.name in (DEPLOY / "flink/job-server.sh").read_text()


def _dockerfile(name: str) -> str:
    return (DEPLOY / "docker" / name).read_text()


def test_worker_images_run_the_harness_in_the_images_own_python():
    """Beam's boot makes a venv under /opt/apache/beam-venv unless RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1:
    a non-root user cannot, and such a venv would not see a venv-installed dpbeam (GPU image)."""
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = _dockerfile(name)
        env = text.index("ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1")
        assert env < text.index("USER dpbeam"), name
        assert "--constraint constraints.txt" in text and 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text


def test_what_boot_would_do_with_a_venv_interpreter(tmp_path):
    """Simulate boot in an image whose python is a venv (the GPU image's /opt/venv; here our .venv).

    Without the variable, boot runs `python -m venv --system-site-packages` from it: that venv sees the
    *base* interpreter's packages, not dpbeam. With it, the harness runs the interpreter itself, which
    imports dpbeam and Beam's SDK worker.
    """
    probe = "import apache_beam.runners.worker.sdk_worker_main, dpcore, beam_pipelines.cli"
    if sys.prefix != sys.base_prefix:  # tests run from .venv (scripts/test.sh): the GPU image's situation
        boot_venv = tmp_path / "beam-venv"
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(boot_venv)],
                       check=True)
        isolated = subprocess.run([str(boot_venv / "bin/python"), "-c", probe], capture_output=True, text=True,
                                  env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert isolated.returncode != 0 and "ModuleNotFoundError" in isolated.stderr
    direct = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert direct.returncode == 0, direct.stderr
