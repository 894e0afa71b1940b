"""Benchmark ``dpbeam prepare`` against its floors, measured in the same run.

    .venv/bin/python bench/bench_prepare.py [--source ../shared/data/bbbc022] [--small 36] [--large 108]

Builds two projects from the real BBBC022 images (sites replicated under new
well names, images linked, not copied) and reports, in sites per second:

- decode: reading every TIFF once (tifffile), single process;
- plain loop: a single-process loop doing prepare's arithmetic with no Beam --
  pass 1 reads each site and accumulates statistics, pass 2 reads it again,
  corrects, compresses and writes the PNGs (DeepProfiler's two passes);
- pipeline, 1 and 2 workers: ``dpbeam prepare`` on the DirectRunner. Start-up
  (interpreter, Beam) is excluded by timing two project sizes and dividing the
  extra sites by the extra time.

DeepProfiler's own prepare, measured on this machine: ~0.45 s per five-channel
696x520 site on one core, i.e. ~2.2 sites/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpcore.compression import compress_channel  # noqa: E402
from dpcore.config import load_config  # noqa: E402
from dpcore.illumination import compute_statistics, merge_accumulators, site_contribution  # noqa: E402
from dpcore.images import encode_png, read_image  # noqa: E402
from dpcore.storage import StoragePath  # noqa: E402

logger = logging.getLogger("bench_prepare")
DEEPPROFILER_SITES_PER_SECOND = 1 / 0.45


def build_project(source: Path, target: Path, sites: int) -> None:
    """A project of ``sites`` sites: the source's sites repeated under new wells, images symlinked."""
    source = Path(source).resolve()  # a relative link target would resolve against the link's own folder
    index = pd.read_csv(source / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    channels = load_config(source / "inputs/config/bbbc022.json").channels
    rows = []
    for copy in range((sites + len(index) - 1) // len(index)):
        block = index.copy()
        block["Metadata_Well"] = block["Metadata_Well"] + f"r{copy}"
        for channel in channels:
            block[channel] = f"r{copy}/" + block[channel]
        rows.append(block)
        link = target / "inputs/images" / f"r{copy}"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source / "inputs/images", link)
    (target / "inputs/metadata").mkdir(parents=True)
    pd.concat(rows).iloc[:sites].to_csv(target / "inputs/metadata/index.csv", index=False)
    shutil.copytree(source / "inputs/config", target / "inputs/config")


def project_arguments(description: str, small: int, large: int) -> argparse.Namespace:
    """The benchmarks' common options: the real project to replicate and the two sizes timed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared/data/bbbc022")
    parser.add_argument("--small", type=int, default=small)
    parser.add_argument("--large", type=int, default=large)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here (bench_all.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.source / "inputs/metadata/index.csv").exists():
        args.source = REPO / "tests/data/bbbc022"  # the bundled subset, when ../shared is absent
    return args


def rate_once_started(run, count, small: Path, large: Path) -> float:
    """Work per second with start-up excluded: run both projects, divide the extra work by the extra time."""
    t_small, t_large = run(small), run(large)
    return (count(large) - count(small)) / max(t_large - t_small, 1e-9)


def peak_memory_mb() -> float:
    """Largest resident set of this process or any child it waited for (Linux: ru_maxrss in kB)."""
    import resource  # noqa: PLC0415 -- Unix only, like the benchmarks

    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def write_json(path: Path | None, result: dict) -> None:
    if path is not None:
        path.write_text(json.dumps({**result, "peak_memory_mb": peak_memory_mb()}, indent=1))


def site_paths(root: Path, channels) -> list[list[StoragePath]]:
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    return [[StoragePath(str(root / "inputs/images" / row[c])) for c in channels] for _, row in index.iterrows()]


def time_decode(sites: list[list[StoragePath]]) -> float:
    start = time.perf_counter()
    for paths in sites:
        for path in paths:
            read_image(path)
    return time.perf_counter() - start


def time_plain_loop(root: Path, sites: list[list[StoragePath]], config) -> float:
    images, ill = config.dataset.images, config.prepare.illumination_correction
    shape = (images.height, images.width)
    out = root / "plain-loop"
    start = time.perf_counter()
    contributions = []
    for paths in sites:
        stack = np.stack([read_image(p, shape) for p in paths], axis=-1)
        contributions.append(site_contribution(stack, images.bits, ill.down_scale_factor))
    stats = compute_statistics("p", config.channels, merge_accumulators(contributions), ill.median_filter_size)
    for s, paths in enumerate(sites):
        for c, path in enumerate(paths):
            compressed = compress_channel(read_image(path, shape), stats.illum_correction_function[:, :, c],
                                          config.prepare.compression.scaling_factor,
                                          float(stats.upper_percentiles[c]))
            StoragePath(str(out / f"{s}-{c}.png")).write_bytes(encode_png(compressed))
    return time.perf_counter() - start


def time_command(root: Path, command: str, *options: str) -> float:
    """Wall seconds of ``dpbeam --root ROOT --config bbbc022.json COMMAND OPTIONS`` (output discarded)."""
    program = str(REPO / ".venv/bin/dpbeam") if (REPO / ".venv/bin/dpbeam").exists() else "dpbeam"
    start = time.perf_counter()
    subprocess.run([program, "--root", str(root), "--config", "bbbc022.json", "--log-level", "WARNING", command,
                    *options], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_pipeline(root: Path, workers: int) -> float:
    mode = ["--direct_running_mode", "multi_processing"] if workers > 1 else []
    return time_command(root, "prepare", "--overwrite", "--direct_num_workers", str(workers), *mode)


def main() -> None:
    args = project_arguments(__doc__, small=36, large=108)
    config = load_config(args.source / "inputs/config/bbbc022.json")

    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        build_project(args.source, small, args.small)
        build_project(args.source, large, args.large)
        sites = site_paths(large, config.channels)
        logger.info("decode-only and plain loop on %d sites ...", len(sites))
        decode = len(sites) / time_decode(sites)
        plain = len(sites) / time_plain_loop(large, sites, config)
        rates = {}
        for workers in (1, 2):
            logger.info("pipeline, %d worker(s): %d and %d sites ...", workers, args.small, args.large)
            sites = {small: args.small, large: args.large}
            rates[workers] = rate_once_started(lambda root: time_pipeline(root, workers), sites.get, small, large)

    rows = [
        ("decode TIFFs only (1 process)", decode),
        ("plain numpy loop, same arithmetic (1 process)", plain),
        ("dpbeam prepare, 1 worker", rates[1]),
        ("dpbeam prepare, 2 workers (multi_processing)", rates[2]),
        ("DeepProfiler prepare (measured earlier, 1 core)", DEEPPROFILER_SITES_PER_SECOND),
    ]
    print(f"\nprepare benchmark: {args.large} vs {args.small} five-channel {config.dataset.images.width}x"
          f"{config.dataset.images.height} sites, {os.cpu_count()} cores")
    print(f"{'stage':<50} {'sites/s':>9}")
    for name, rate in rows:
        print(f"{name:<50} {rate:>9.2f}")
    print(f"\npipeline (1 worker) / plain loop     = {rates[1] / plain:.2f}   (aim >= 0.77, i.e. within 1.3x)")
    print(f"pipeline 2 workers / 1 worker        = {rates[2] / rates[1]:.2f}   (aim near 2)")
    print(f"pipeline (1 worker) / DeepProfiler   = {rates[1] / DEEPPROFILER_SITES_PER_SECOND:.2f}")
    print(f"plain loop / decode only             = {plain / decode:.2f}   (share of time that is not decoding)")
    write_json(args.json, {"stage": "prepare", "unit": "sites/s", "limit_name": "plain numpy loop",
                           "limit": plain, "one": rates[1], "two": rates[2], "two_mode": "2 processes",
                           "decode": decode})


if __name__ == "__main__":
    main()
