"""Benchmark ``dpbeam export-sc`` against its floor, measured in the same run.

    .venv/bin/python bench/bench_export.py [--source ../shared/data/bbbc022] [--small 36] [--large 108]

Builds two projects from the real BBBC022 images (sites replicated under new
well names, images and locations linked) with compression off, so the export
reads the original TIFFs, and reports cells per second for:

- plain loop: one process reads each site's TIFFs and locations, cuts and
  normalises the crops with the same numpy code, quantises them and serialises
  them as TFRecords -- the compute floor with no Beam;
- pipeline, 1 and 2 workers: ``dpbeam export-sc`` on the DirectRunner, start-up
  excluded by timing two project sizes and dividing the extra cells by the extra time.

DeepProfiler's export, measured on this machine: ~150 cells/s once started
(one PNG per cell).
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

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_prepare import build_project, project_arguments, rate_once_started, write_json  # noqa: E402
from dpcore import sc_records  # noqa: E402
from dpcore.config import parse_config  # noqa: E402
from dpcore.crops import quantise  # noqa: E402
from dpcore.layout import ProjectLayout  # noqa: E402
from dpcore.metadata import load_sites  # noqa: E402
from dpcore.single_cells import CellSource  # noqa: E402
from dpcore.storage import StoragePath  # noqa: E402

logger = logging.getLogger("bench_export")
DEEPPROFILER_CELLS_PER_SECOND = 150.0


def make_raw_config(root: Path) -> dict:
    path = root / "inputs/config/bbbc022.json"
    data = json.loads(path.read_text())
    data["prepare"]["compression"]["implement"] = False
    path.write_text(json.dumps(data))
    return data


def link_locations(source: Path, root: Path, copies: int) -> None:
    source = Path(source).resolve()  # a relative link target would resolve against the link's own folder
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str)
    for row in index.itertuples():
        original_well = row.Metadata_Well.split("r")[0]
        target = root / "inputs/locations" / row.Metadata_Plate / f"{row.Metadata_Well}-{row.Metadata_Site}-Nuclei.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(source / "inputs/locations" / row.Metadata_Plate /
                       f"{original_well}-{row.Metadata_Site}-Nuclei.csv", target)


def time_plain_loop(root: Path, config) -> tuple[float, int]:
    layout = ProjectLayout.create(root)
    cell_source = CellSource.from_config(layout, config)
    sites = load_sites(layout.index_file, config, "export-sc")
    start = time.perf_counter()
    cells = 0

    def records():
        nonlocal cells
        for site in sites:
            cut = cell_source.cut(site)
            for crop, index in zip(quantise(cut.batch.crops), cut.batch.kept):
                cells += 1
                yield sc_records.encode(sc_records.CellRecord(
                    crop, 0, "x", "training", "0", site.plate, site.well, site.site, int(index),
                    float(cut.centres[index][0]), float(cut.centres[index][1])))

    sc_records.write_shard(StoragePath(str(root / "plain-loop.tfrecord")), records())
    return time.perf_counter() - start, cells


def time_pipeline(root: Path, workers: int) -> float:
    command = [str(REPO / ".venv/bin/dpbeam") if (REPO / ".venv/bin/dpbeam").exists() else "dpbeam",
               "--root", str(root), "--config", "bbbc022.json", "--log-level", "WARNING", "export-sc",
               "--overwrite", "--shard-mb", "64", "--direct_num_workers", str(workers)]
    if workers > 1:
        command += ["--direct_running_mode", "multi_processing"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def exported_cells(root: Path) -> int:
    return sum(json.loads((root / "outputs/single-cells/manifest.json").read_text())["counts"].values())


def main() -> None:
    args = project_arguments(__doc__, small=36, large=108)

    with tempfile.TemporaryDirectory() as tmp:
        projects = {}
        for name, sites in (("small", args.small), ("large", args.large)):
            root = Path(tmp) / name
            build_project(args.source, root, sites)
            data = make_raw_config(root)
            link_locations(args.source, root, sites)
            projects[name] = root
        config = parse_config(data)
        logger.info("plain loop on %d sites ...", args.large)
        seconds, cells = time_plain_loop(projects["large"], config)
        plain = cells / seconds
        rates = {}
        for workers in (1, 2):
            logger.info("pipeline, %d worker(s) ...", workers)
            rates[workers] = rate_once_started(lambda root: time_pipeline(root, workers), exported_cells,
                                               projects["small"], projects["large"])

    print(f"\nexport-sc benchmark: {args.large} vs {args.small} sites of real BBBC022 images "
          f"({cells} cells in the large project), box 128, 5 channels, {os.cpu_count()} cores")
    print(f"{'stage':<52} {'cells/s':>9}")
    for name, rate in (("plain numpy loop: read, crop, serialise (1 process)", plain),
                       ("dpbeam export-sc, 1 worker", rates[1]),
                       ("dpbeam export-sc, 2 workers (multi_processing)", rates[2]),
                       ("DeepProfiler export (measured earlier)", DEEPPROFILER_CELLS_PER_SECOND)):
        print(f"{name:<52} {rate:>9.1f}")
    print(f"\npipeline (1 worker) / plain loop   = {rates[1] / plain:.2f}   (aim >= 0.77, i.e. within 1.3x)")
    print(f"pipeline 2 workers / 1 worker      = {rates[2] / rates[1]:.2f}")
    print(f"pipeline (1 worker) / DeepProfiler = {rates[1] / DEEPPROFILER_CELLS_PER_SECOND:.2f}")
    write_json(args.json, {"stage": "export-sc", "unit": "cells/s", "limit_name": "plain numpy loop",
                           "limit": plain, "one": rates[1], "two": rates[2], "two_mode": "2 processes"})


if __name__ == "__main__":
    main()
