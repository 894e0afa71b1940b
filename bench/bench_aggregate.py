"""Benchmark ``dpbeam aggregate``'s reduction (cells -> wells) against pandas on one core.

    .venv/bin/python bench/bench_aggregate.py [--cells 1000000] [--features 64]

Writes synthetic per-cell features as ``profile`` does (one Parquet file per site, 500 cells each, 9
sites per well, 384 wells per plate) and reports cells per second of:

- pandas: read every file, concatenate, ``groupby([plate, well]).median()`` -- one process, the whole
  screen in memory (what a pycytominer user does);
- dpbeam aggregate (DirectRunner, default options), end to end: the Beam reduction plus normalize,
  feature_select and consensus on the reduced table; start-up excluded by also timing a 1-plate run.

Peak memory (resident set) of each is reported: pandas grows with the screen, the pipeline with one well.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CELLS_PER_SITE, SITES_PER_WELL, WELLS_PER_PLATE = 500, 9, 384


def write_features(root: Path, cells: int, features: int, seed: int = 0) -> int:
    """Synthetic features of ``cells`` cells; returns the number written (whole sites)."""
    rng = np.random.default_rng(seed)
    sites = max(1, cells // CELLS_PER_SITE)
    columns = [f"cnn_{i}" for i in range(features)]
    for number in range(sites):
        plate, rest = divmod(number, WELLS_PER_PLATE * SITES_PER_WELL)
        well, site = divmod(rest, SITES_PER_WELL)
        folder = root / "outputs/results/features" / f"P{plate}"
        folder.mkdir(parents=True, exist_ok=True)
        well_name = f"{chr(65 + well // 24)}{well % 24 + 1:02d}"
        frame = pd.DataFrame(rng.normal(size=(CELLS_PER_SITE, features)).astype(np.float32), columns=columns)
        frame.insert(0, "Metadata_Treatment", "DMSO" if well % 24 < 2 else f"compound_{well}")
        frame.insert(0, "Metadata_Site", str(site + 1))
        frame.insert(0, "Metadata_Well", well_name)
        frame.insert(0, "Metadata_Plate", f"P{plate}")
        frame.to_parquet(folder / f"{well_name}-{site + 1}.parquet", index=False)
    config = {"dataset": {"metadata": {"label_field": "Treatment", "control_value": "DMSO"},
                          "images": {"channels": ["DNA"], "width": 10, "height": 10}}}
    (root / "inputs/config").mkdir(parents=True, exist_ok=True)
    (root / "inputs/config/bench.json").write_text(json.dumps(config))
    return sites * CELLS_PER_SITE


def time_pandas(root: Path) -> tuple[float, float]:
    code = (f"import glob,time,resource,pandas as pd;s=time.perf_counter();"
            f"f=pd.concat([pd.read_parquet(p) for p in sorted(glob.glob('{root}/outputs/results/features/*/*.parquet'))]);"
            f"f.drop(columns=['Metadata_Site','Metadata_Treatment']).groupby(['Metadata_Plate','Metadata_Well']).median();"
            f"print(time.perf_counter()-s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    return float(out[0]), float(out[1])


def time_pipeline(root: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([str(REPO / ".venv/bin/dpbeam"), "--root", str(root), "--config", "bench.json", "--log-level",
                    "WARNING", "aggregate"], check=True, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - start, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        small_cells = write_features(small, WELLS_PER_PLATE * SITES_PER_WELL * CELLS_PER_SITE // 8, args.features)
        large_cells = write_features(large, args.cells, args.features)
        # The pipelines first: RUSAGE_CHILDREN's peak is then theirs (pandas reports its own from inside).
        small_seconds, _ = time_pipeline(small)
        large_seconds, pipeline_mb = time_pipeline(large)
        pandas_seconds, pandas_mb = time_pandas(large)
    marginal = (large_cells - small_cells) / max(large_seconds - small_seconds, 1e-9)
    result = {"cells": large_cells, "features": args.features, "pandas_cells_per_s": large_cells / pandas_seconds,
              "pandas_peak_mb": pandas_mb, "pipeline_cells_per_s_whole_run": large_cells / large_seconds,
              "pipeline_cells_per_s_marginal": marginal, "pipeline_peak_mb_largest_process": pipeline_mb,
              "cpu_count": os.cpu_count()}
    print(f"\naggregate benchmark: {large_cells:,} cells x {args.features} features, {os.cpu_count()} cores")
    print(f"pandas groupby().median(), 1 process      {result['pandas_cells_per_s']:>12,.0f} cells/s   "
          f"peak {pandas_mb:,.0f} MB")
    print(f"dpbeam aggregate, whole run              {result['pipeline_cells_per_s_whole_run']:>12,.0f} cells/s   "
          f"peak {pipeline_mb:,.0f} MB (largest process)")
    print(f"dpbeam aggregate, start-up excluded      {marginal:>12,.0f} cells/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
