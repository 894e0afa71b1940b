"""Benchmark ``dpbeam profile`` against the model's own limit, measured in the same run.

    .venv/bin/python bench/bench_profile.py [--source ../shared/data/bbbc022] [--small 18] [--large 54]

EfficientNet-B0 at 128x128x5 (the Cell Painting CNN's shape), ``profile.batch_size`` 32, on real
BBBC022 sites (replicated under new well names, images and locations linked; compression off).
Reports cells per second for:

- the limit: the compiled model on crops already in memory, batches of 32 (no I/O, no cropping);
- pipeline, 1 worker: ``dpbeam profile`` on the DirectRunner, start-up (interpreter, TF, model
  build) excluded by timing two project sizes and dividing the extra cells by the extra time.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_export import link_locations, make_raw_config  # noqa: E402
from bench.bench_prepare import build_project, project_arguments, rate_once_started, write_json  # noqa: E402
from dpcore import models  # noqa: E402
from dpcore.checkpoints import save_weights  # noqa: E402
from dpcore.storage import StoragePath  # noqa: E402

logger = logging.getLogger("bench_profile")
BATCH = 32


def time_limit(cells: int = 1024) -> float:
    model = models.feature_extractor(models.classifier("efficientnet", (128, 128, 5), 2), "block6a_activation")
    predict = models.predict_function(model)
    crops = np.random.default_rng(0).random((cells, 128, 128, 5), dtype=np.float32)
    predict(crops[:BATCH])  # compile
    start = time.perf_counter()
    for first in range(0, cells, BATCH):
        predict(crops[first:first + BATCH])
    return cells / (time.perf_counter() - start)


def time_pipeline(root: Path, workers: int = 1) -> float:
    command = [str(REPO / ".venv/bin/dpbeam") if (REPO / ".venv/bin/dpbeam").exists() else "dpbeam",
               "--root", str(root), "--config", "bbbc022.json", "--log-level", "WARNING", "profile",
               "--overwrite", "--direct_num_workers", str(workers)]
    if workers > 1:
        command += ["--direct_running_mode", "multi_threading"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def profiled_cells(root: Path) -> int:
    return sum(len(pd.read_parquet(p, columns=["Metadata_Cell_Index"]))
               for p in (root / "outputs/results/features").glob("*/*.parquet"))


def main() -> None:
    args = project_arguments(__doc__, small=18, large=54)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = models.classifier("efficientnet", (128, 128, 5), 2)
        roots = {}
        for name, sites in (("small", args.small), ("large", args.large)):
            root = Path(tmp) / name
            build_project(args.source, root, sites)
            data = make_raw_config(root)
            data["profile"]["batch_size"] = BATCH
            (root / "inputs/config/bbbc022.json").write_text(json.dumps(data))
            link_locations(args.source, root, sites)
            save_weights(checkpoint, StoragePath(str(root / "outputs/results/checkpoint/checkpoint_0003.hdf5")))
            roots[name] = root
        logger.info("model limit on in-memory crops ...")
        limit = time_limit()
        rates = {}
        for workers in (1, 2):
            logger.info("pipeline, %d thread(s): %d and %d sites ...", workers, args.small, args.large)
            rates[workers] = rate_once_started(lambda root: time_pipeline(root, workers), profiled_cells,
                                               roots["small"], roots["large"])

    print(f"\nprofile benchmark: EfficientNet-B0, 128x128x5, batch {BATCH}, layer block6a_activation, "
          f"{os.cpu_count()} cores (CPU)")
    print(f"{'stage':<56} {'cells/s':>9}")
    print(f"{'limit: compiled model.predict on crops in memory':<56} {limit:>9.1f}")
    print(f"{'dpbeam profile, 1 worker (read, crop, infer, write)':<56} {rates[1]:>9.1f}")
    print(f"{'dpbeam profile, 2 threads (multi_threading)':<56} {rates[2]:>9.1f}")
    print(f"\npipeline 1 worker / limit  = {rates[1] / limit:.2f}   (aim >= 0.8; DeepProfiler ~0.6 once started)")
    print(f"pipeline 2 threads / limit = {rates[2] / limit:.2f}")
    write_json(args.json, {"stage": "profile", "unit": "cells/s", "limit_name": "model.predict, crops in memory",
                           "limit": limit, "one": rates[1], "two": rates[2], "two_mode": "2 threads"})


if __name__ == "__main__":
    main()
