"""Every stage's benchmark in one table, and what it means for a JUMP-sized screen.

    .venv/bin/python bench/bench_all.py        (about 6 minutes on 2 cores)

Runs bench_prepare, bench_export, bench_profile and bench_train (each in its own
process, on the real BBBC022 images) and prints, per stage: throughput on one
worker, the stage's limit measured in the same run and the ratio, throughput
with two local workers and the speed-up, and peak memory. Then it sizes JUMP
(2,500 plates, 8 M sites, ~1.5 B cells) from the measured rates.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JUMP_SITES = 8_000_000
JUMP_CELLS = 1_500_000_000
STAGES = ("bench_prepare", "bench_export", "bench_profile", "bench_train")


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in STAGES:
            out = Path(tmp) / f"{stage}.json"
            print(f"running {stage} ...", flush=True)
            subprocess.run([sys.executable, str(REPO / "bench" / f"{stage}.py"), "--json", str(out)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results.append(json.loads(out.read_text()))

    print(f"\n{'stage':<10} {'unit':<8} {'1 worker':>9} {'limit':>9} {'ratio':>6} {'2 workers':>10} {'speed-up':>9} "
          f"{'peak MB':>8}  limit measured as")
    for r in results:
        two = f"{r['two']:.1f}" if r["two"] else "-"
        speedup = f"{r['two'] / r['one']:.2f}" if r["two"] else "-"
        print(f"{r['stage']:<10} {r['unit']:<8} {r['one']:>9.1f} {r['limit']:>9.1f} {r['one'] / r['limit']:>6.2f} "
              f"{two:>10} {speedup:>9} {r['peak_memory_mb']:>8.0f}  {r['limit_name']} ({r['two_mode']})")

    by_stage = {r["stage"]: r for r in results}
    prepare_hours = JUMP_SITES / by_stage["prepare"]["two"] / 3600
    profile_hours = JUMP_CELLS / by_stage["profile"]["two"] / 3600
    print("\nJUMP (8 M five-channel sites, ~1.5 B cells), in machine-hours of a 2-core machine like this one:")
    print(f"  prepare: {prepare_hours:,.0f} h  -> {prepare_hours / 500:,.1f} h on 500 such workers")
    print(f"  profile on CPU: {profile_hours:,.0f} h -> {profile_hours / 500:,.1f} h on 500 such workers "
          f"(an accelerator per worker moves the limit to cropping, see README)")


if __name__ == "__main__":
    main()
