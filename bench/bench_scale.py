"""Does a stage's cost per site stay flat, and its memory bounded, as the screen grows?

    .venv/bin/python bench/bench_scale.py                    # 1x, 8x, 32x (about 20 minutes on 2 cores)
    .venv/bin/python bench/bench_scale.py --scales 1 4       # a quick look

The real BBBC022 plate (18 sites, 5 channels, 696x520; ``../shared/data/bbbc022``
when present, else the 12-site copy in ``tests/data``) is replicated as N plates
(images shared through hard links, locations copied). Each stage runs as a user
runs it -- the ``dpbeam`` command in its own process, on the DirectRunner with two
worker processes -- and a sampler reads the resident memory of the launcher and
of every worker process four times a second from ``/proc``.

The config is the example's (box 128, compression on: export-sc and profile read
the compressed PNGs), except that profile uses a small ``cnn`` (conv_blocks 3)
with a seeded checkpoint: this benchmark is about what grows with the screen
(index reading, shuffles, commits) and about the CPU work around the network,
not about the network's speed (``bench_profile.py`` measures that).

Printed per stage and scale: wall time, sites/s, marginal sites/s between the
two largest scales (start-up excluded), peak RSS of the launcher and of the
largest worker; then whether peak memory at the largest scale is within 1.25x of
the second largest and throughput within 20%. ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "bbbc022"
SOURCE = SHARED if (SHARED / "inputs/metadata/index.csv").exists() else REPO / "tests/data/bbbc022"
TWO_WORKERS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
STAGES = ("prepare", "export-sc", "profile")


def replicate(target: Path, copies: int) -> tuple[int, int]:
    """A project with ``copies`` plates, each the source plate; returns (sites, cells)."""
    inputs = target / "inputs"
    shutil.copytree(SOURCE / "inputs/config", inputs / "config")
    images = inputs / "images"
    for path in (SOURCE / "inputs/images").rglob("*"):
        if path.is_file():
            destination = images / path.relative_to(SOURCE / "inputs/images")
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, destination)
    index = pd.read_csv(SOURCE / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    plate = index["Metadata_Plate"].iloc[0]
    frames, cells = [], 0
    for copy in range(copies):
        name = f"{plate}r{copy:03d}"
        frame = index.copy()
        frame["Metadata_Plate"] = name
        frames.append(frame)
        shutil.copytree(SOURCE / "inputs/locations" / plate, inputs / "locations" / name)
        cells += sum(len(pd.read_csv(p)) for p in (inputs / "locations" / name).glob("*.csv"))
    (inputs / "metadata").mkdir(parents=True)
    pd.concat(frames).to_csv(inputs / "metadata/index.csv", index=False)
    config = json.loads((inputs / "config/bbbc022.json").read_text())
    config["train"]["model"].update({"name": "cnn"})
    config["train"]["model"]["params"]["conv_blocks"] = 3
    config["profile"].update({"feature_layer": "features", "checkpoint": "cnn.hdf5", "batch_size": 64})
    (inputs / "config/scale.json").write_text(json.dumps(config, indent=2))
    _write_checkpoint(target / "outputs/results/checkpoint/cnn.hdf5")
    return len(index) * copies, cells


def _write_checkpoint(path: Path) -> None:
    code = ("import keras, sys; from dpcore import models; from dpcore.checkpoints import save_weights;"
            "from dpcore.storage import StoragePath; keras.utils.set_random_seed(7);"
            "save_weights(models.classifier('cnn', (128, 128, 5), 2, conv_blocks=3), StoragePath(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True)


class MemorySampler(threading.Thread):
    """Peak RSS (MB) of a process and, separately, of each of its descendants, from /proc."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.launcher_mb = 0.0
        self.workers_mb: dict[int, float] = {}
        self.done = threading.Event()

    @staticmethod
    def _rss_mb(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _descendants(self) -> list[int]:
        children, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found = []
            try:  # a child started by any thread of the process is listed under that thread
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as handle:
                        found += [int(c) for c in handle.read().split()]
            except OSError:
                pass
            children += found
            todo += found
        return children

    def run(self) -> None:
        while not self.done.is_set():
            self.launcher_mb = max(self.launcher_mb, self._rss_mb(self.pid))
            for child in self._descendants():
                self.workers_mb[child] = max(self.workers_mb.get(child, 0.0), self._rss_mb(child))
            time.sleep(self.interval_s)


class PortableServices:
    """Beam's job server and an external worker pool as two processes, as tests/test_portable_runner.py starts
    them: the launcher is then only the dpbeam command, the job server holds the data between stages (what
    Dataflow's shuffle service does), and the SDK workers are the pool's child processes."""

    def __init__(self, folder: Path):
        import socket  # noqa: PLC0415
        ports = []
        for _ in range(2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                ports.append(probe.getsockname()[1])
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        self.job_server = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(ports[0])],
            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.pool = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(ports[1])],
            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(8)
        self.options = ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{ports[0]}",
                        "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{ports[1]}",
                        "--direct_num_workers", "2"]

    def close(self) -> None:
        for process in (self.job_server, self.pool):
            process.kill()
            process.wait()


def run_stage(root: Path, stage: str, services: PortableServices | None = None) -> dict:
    options = services.options if services else TWO_WORKERS
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", "scale.json", stage,
               *options]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = MemorySampler(process.pid)
    extra = [MemorySampler(services.job_server.pid), MemorySampler(services.pool.pid)] if services else []
    for each in [sampler, *extra]:
        each.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - started
    for each in [sampler, *extra]:
        each.done.set()
        each.join()
    if process.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{output[-3000:]}")
    result = {"wall_s": wall, "launcher_mb": sampler.launcher_mb,
              "worker_mb": max(sampler.workers_mb.values(), default=0.0)}
    if services:  # the launcher has no worker children there; the pool's children are the SDK workers
        result.update({"runner_mb": extra[0].launcher_mb, "worker_mb": max(extra[1].workers_mb.values(), default=0.0)})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="stages to time (each needs the ones before it: they are run untimed)")
    parser.add_argument("--portable", action="store_true",
                        help="run on Beam's portable runner (job server + external worker pool) instead of the "
                             "DirectRunner, to tell the launcher from the runner's in-memory shuffle")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    services_dir = Path(tempfile.mkdtemp())
    services = PortableServices(services_dir) if args.portable else None
    try:
        _run_scales(args, rows, services)
    finally:
        if services:
            services.close()
        shutil.rmtree(services_dir, ignore_errors=True)
    _report(rows, sorted(args.scales), [s for s in STAGES if s in args.stages])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _run_scales(args, rows: list, services) -> None:
    for scale in sorted(args.scales):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "project"
            sites, cells = replicate(root, scale)
            print(f"{scale}x: {sites} sites, {cells} cells", flush=True)
            for stage in STAGES[: max(STAGES.index(s) for s in args.stages) + 1]:
                result = run_stage(root, stage, services)
                if stage not in args.stages:
                    continue
                rows.append({"scale": scale, "sites": sites, "cells": cells, "stage": stage, **result})
                runner = f"  job server {result['runner_mb']:5.0f} MB" if "runner_mb" in result else ""
                print(f"  {stage:<10} {result['wall_s']:7.1f} s  {sites / result['wall_s']:6.2f} sites/s  "
                      f"launcher {result['launcher_mb']:5.0f} MB{runner}  largest worker {result['worker_mb']:5.0f} MB",
                      flush=True)


def _report(rows: list[dict], scales: list[int], stages: list[str]) -> None:
    print(f"\nsource: {SOURCE} ({'shared data' if SOURCE == SHARED else 'test data'}); "
          f"2 local worker processes; {os.cpu_count()} cores")
    print(f"{'stage':<10} {'scale':>5} {'sites':>6} {'cells':>7} {'wall s':>7} {'sites/s':>8} {'launcher MB':>12} "
          f"{'worker MB':>10}")
    for row in rows:
        print(f"{row['stage']:<10} {row['scale']:>5} {row['sites']:>6} {row['cells']:>7} {row['wall_s']:>7.1f} "
              f"{row['sites'] / row['wall_s']:>8.2f} {row['launcher_mb']:>12.0f} {row['worker_mb']:>10.0f}")
    if len(scales) < 3:
        return
    middle, large = scales[-2], scales[-1]
    print(f"\n{'stage':<10} {'marginal sites/s':>17} {f'sites/s {large}x / {middle}x':>20} "
          f"{f'peak MB {large}x / {middle}x (launcher, worker)':>40}")
    for stage in stages:
        by_scale = {r["scale"]: r for r in rows if r["stage"] == stage}
        a, b = by_scale[middle], by_scale[large]
        marginal = (b["sites"] - a["sites"]) / max(1e-9, b["wall_s"] - a["wall_s"])
        ratio = (b["sites"] / b["wall_s"]) / (a["sites"] / a["wall_s"])
        memory = (b["launcher_mb"] / a["launcher_mb"], b["worker_mb"] / max(1e-9, a["worker_mb"]))
        verdict = "ok" if max(memory) <= 1.25 and ratio >= 0.8 else "CHECK"
        print(f"{stage:<10} {marginal:>17.2f} {ratio:>20.2f} {memory[0]:>19.2f}, {memory[1]:.2f}   {verdict}")


if __name__ == "__main__":
    main()
