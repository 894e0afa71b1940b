"""Rebuild ``tests/data/bbbc022`` from the full BBBC022 mini project.

Usage: python scripts/make_example_data.py ../shared/data/bbbc022

Keeps sites 1-4 (training split) and 7-8 (validation split) of both wells and
re-writes each TIFF with lossless zlib compression (same pixels, half the
bytes), so the repository stays small while tests and the demo run on real
Cell Painting images.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import pandas as pd
import tifffile

KEEP_SITES = {"1", "2", "3", "4", "7", "8"}
CHANNEL_COLUMNS = ["DNA", "ER", "RNA", "AGP", "Mito"]

logger = logging.getLogger("make_example_data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the full bbbc022 project root")
    parser.add_argument("--target", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/bbbc022")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    index = pd.read_csv(args.source / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    index = index[index["Metadata_Site"].isin(KEEP_SITES)].reset_index(drop=True)
    if args.target.exists():
        shutil.rmtree(args.target)
    for column in CHANNEL_COLUMNS:
        for relative in index[column]:
            source = args.source / "inputs/images" / relative
            target = args.target / "inputs/images" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(target, tifffile.imread(source), compression="zlib", predictor=True)
    for row in index.itertuples():
        name = f"{row.Metadata_Well}-{row.Metadata_Site}-Nuclei.csv"
        source = args.source / "inputs/locations" / row.Metadata_Plate / name
        target = args.target / "inputs/locations" / row.Metadata_Plate / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (args.target / "inputs/metadata").mkdir(parents=True, exist_ok=True)
    index.to_csv(args.target / "inputs/metadata/index.csv", index=False, lineterminator="\n")
    (args.target / "inputs/config").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.source / "inputs/config/bbbc022.json", args.target / "inputs/config/bbbc022.json")
    logger.info("wrote %d sites to %s", len(index), args.target)


if __name__ == "__main__":
    main()
