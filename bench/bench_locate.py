"""Benchmark ``dpbeam locate`` (segmenting) against a plain loop of the same scikit-image calls.

    .venv/bin/python bench/bench_locate.py [--source ../shared/data/bbbc022] [--small 36] [--large 108]

Builds two projects from the real BBBC022 images (sites replicated under new well names, images
linked) without locations, and reports sites per second:

- plain loop: one process reads each site's DNA TIFF, runs ``dpcore.segmentation.find_nuclei`` with
  the config's settings and writes the CSV, no Beam;
- pipeline, 1 worker: ``dpbeam locate --overwrite`` on the DirectRunner; start-up excluded by timing
  two project sizes and dividing the extra sites by the extra time.

The issue's aim: the pipeline within 1.3x of the loop's time per site (pipeline/loop >= 0.77).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_prepare import (build_project, project_arguments, rate_once_started, time_command,  # noqa: E402
                                 write_json)
from dpcore.config import load_config  # noqa: E402
from dpcore.images import read_image  # noqa: E402
from dpcore.locate import locations_csv, nucleus_channel, nucleus_finder, segment  # noqa: E402
from dpcore.storage import StoragePath  # noqa: E402

logger = logging.getLogger("bench_locate")


def without_locations(root: Path) -> Path:
    shutil.rmtree(root / "inputs/locations", ignore_errors=True)
    return root


def time_plain_loop(root: Path, config) -> float:
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    channel, finder = nucleus_channel(config), nucleus_finder(config.locate)
    shape = (config.dataset.images.height, config.dataset.images.width)
    out = root / "plain-loop"
    out.mkdir()
    start = time.perf_counter()
    for number, relative in enumerate(index[channel]):
        image = read_image(StoragePath(str(root / "inputs/images" / relative)), shape)
        (out / f"{number}.csv").write_text(locations_csv(segment(image, None, finder).centres))
    return time.perf_counter() - start


def time_pipeline(root: Path) -> float:
    return time_command(root, "locate", "--overwrite", "--direct_num_workers", "1")


def main() -> None:
    args = project_arguments(__doc__, small=36, large=108)
    config = load_config(args.source / "inputs/config/bbbc022.json")
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        build_project(args.source, small, args.small)
        build_project(args.source, large, args.large)
        without_locations(small)
        without_locations(large)
        logger.info("plain loop on %d sites ...", args.large)
        plain = args.large / time_plain_loop(large, config)
        logger.info("pipeline, 1 worker: %d and %d sites ...", args.small, args.large)
        sizes = {small: args.small, large: args.large}
        pipeline = rate_once_started(time_pipeline, sizes.get, small, large)
    print(f"\nlocate benchmark: {args.large} vs {args.small} sites ({config.dataset.images.width}x"
          f"{config.dataset.images.height}, DNA channel), {os.cpu_count()} cores")
    print(f"{'plain loop of the same calls (1 process)':<45} {plain:>7.2f} sites/s")
    print(f"{'dpbeam locate, 1 worker (start-up excluded)':<45} {pipeline:>7.2f} sites/s")
    print(f"\npipeline / plain loop = {pipeline / plain:.2f}   (aim >= 0.77, i.e. within 1.3x of the loop's time)")
    write_json(args.json, {"stage": "locate", "unit": "sites/s", "limit_name": "plain loop", "limit": plain,
                           "one": pipeline})


if __name__ == "__main__":
    main()
