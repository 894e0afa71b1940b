"""What does a real engine cost on small inputs? Each stage on a local Flink cluster (and Spark) against
the DirectRunner with two worker processes, in the same run.

    .venv/bin/python scripts/engines.py fetch            # once: the job servers and Flink
    .venv/bin/python bench/bench_engines.py              # 2 plates (36 sites), Flink and Spark
    .venv/bin/python bench/bench_engines.py --copies 4 --engines flink

The project is bench_scale's: the real BBBC022 plate replicated as N plates (images hard-linked), box
128, compression on, profile with a small seeded ``cnn``. Each stage runs as a user runs it: the
``dpbeam`` command in its own process, timed from start to exit (so an engine's start-up -- the job
server JVM, job submission, SDK worker start -- is in its time, as it is in a user's).

- direct: ``--direct_num_workers 2 --direct_running_mode multi_processing``
- flink: Flink 1.19.3 session cluster on 127.0.0.1 (JobManager + one TaskManager, 2 slots, separate
  JVMs), Beam's Flink job server, SDK workers from an external pool, parallelism 2
  (``scripts/engines.py flink options``)
- spark: Spark 3.5 ``local[2]`` inside Beam's Spark job server, SDK workers from an external pool

Printed per stage: seconds and sites/s for each engine, and each engine's throughput as a ratio of the
DirectRunner's measured in this run. ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_scale import STAGES, TWO_WORKERS, replicate  # noqa: E402
from scripts import engines  # noqa: E402




def run_stage(root: Path, stage: str, options: list[str]) -> float:
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", "scale.json", stage]
    if stage == "export-sc":
        command += ["--shard-mb", "10"]
    started = time.perf_counter()
    done = subprocess.run(command + options, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=2, help="plates (18 sites each)")
    parser.add_argument("--engines", nargs="+", default=["flink", "spark"], choices=["flink", "spark"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    engines.require_fetched()

    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    source = work / "source"
    sites, cells = replicate(source, args.copies)
    print(f"{args.copies} plate(s): {sites} sites, {cells} cells; stages {', '.join(STAGES)}", flush=True)

    cluster = pool = None
    options = {"direct": TWO_WORKERS}
    try:
        if "flink" in args.engines:
            cluster = engines.LocalFlinkCluster(work / "flink", taskmanagers=1, slots=2, parallelism=2).start()
            options["flink"] = cluster.beam_options()
        if "spark" in args.engines:
            port = engines.free_port()
            pool = engines.start_worker_pool(work / "spark-workers", port)
            options["spark"] = engines.spark_options(f"127.0.0.1:{port}")
        seconds: dict[str, dict[str, float]] = {}
        for engine, engine_options in options.items():
            root = work / engine
            shutil.copytree(source, root, copy_function=os.link, dirs_exist_ok=True)
            seconds[engine] = {}
            for stage in STAGES:
                seconds[engine][stage] = run_stage(root, stage, engine_options)
                print(f"  {engine:6s} {stage:9s} {seconds[engine][stage]:6.1f} s", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
        if pool is not None:
            os.killpg(pool.pid, signal.SIGTERM)

    print(f"\n{'stage':10s}" + "".join(f"{engine + ' s':>10s}{'sites/s':>9s}" for engine in options)
          + "".join(f"{engine + '/direct':>14s}" for engine in options if engine != "direct"))
    for stage in STAGES:
        row = f"{stage:10s}" + "".join(f"{seconds[e][stage]:10.1f}{sites / seconds[e][stage]:9.2f}" for e in options)
        row += "".join(f"{seconds['direct'][stage] / seconds[e][stage]:14.2f}" for e in options if e != "direct")
        print(row)
    print("(ratio = the engine's throughput / the DirectRunner's with 2 worker processes; < 1 is slower)")
    if args.json:
        args.json.write_text(json.dumps({"sites": sites, "cells": cells, "copies": args.copies,
                                         "seconds": seconds}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
