"""Airflow DAG: prepare -> profile for every new batch of plates, nightly, on Dataflow.

Each run points dpbeam at the screen's index (or a batch index dropped into
``inputs/metadata/``). Both commands skip what earlier runs committed -- prepare
plates with a ``prepare.json`` marker, profile sites whose Parquet file exists --
so a re-launch processes only new or previously failed plates and sites, and a
failed night is simply retried. (export-sc builds training sets; it is not part
of routine profiling.)

Copy this file into your Airflow ``dags/`` folder and set the Airflow variables
``dpbeam_root``, ``dpbeam_project``, ``dpbeam_region``, ``dpbeam_image`` (the CPU
worker image, deploy/docker/Dockerfile) and ``dpbeam_gpu_image`` (the GPU one,
deploy/docker/Dockerfile.gpu, for profile's inference).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

DATAFLOW = (
    "--runner DataflowRunner --project {{ var.value.dpbeam_project }} --region {{ var.value.dpbeam_region }} "
    "--temp_location {{ var.value.dpbeam_root }}/tmp --experiments use_runner_v2"
)
CPU_IMAGE = "--sdk_container_image {{ var.value.dpbeam_image }}"
GPU_IMAGE = "--sdk_container_image {{ var.value.dpbeam_gpu_image }}"
COMMON = "python -m beam_pipelines --root {{ var.value.dpbeam_root }} --config screen.json --metadata index.csv"

with DAG(
    dag_id="dpbeam_screen",
    start_date=datetime(2026, 1, 1),
    schedule="0 2 * * *",
    catchup=False,
    max_active_runs=1,  # two runs on one root at once would race for the same outputs
    default_args={"retries": 2, "retry_delay": timedelta(minutes=30)},
    tags=["cell-painting", "dpbeam"],
) as dag:
    validate = BashOperator(task_id="validate", bash_command=f"{COMMON} validate")
    prepare = BashOperator(task_id="prepare", bash_command=f"{COMMON} prepare {DATAFLOW} {CPU_IMAGE}")
    profile = BashOperator(
        task_id="profile",
        bash_command=f"{COMMON} profile {DATAFLOW} {GPU_IMAGE} "
                     "--inference-accelerator 'type:nvidia-tesla-t4;count:1;install-nvidia-driver'",
    )
    validate >> prepare >> profile

