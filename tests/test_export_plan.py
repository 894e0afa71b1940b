"""How many shards an export is cut into: by size, and at least ``--min-shards`` so small exports run in parallel.

References are worked by hand (the arithmetic) or counted from the example's locations files (the plan).
"""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest

from dpcore.sc_export import MIN_SHARDS, shard_counts
from tests.conftest import run_cli

BYTES_PER_CELL = 128 * 128 * 5 + 200  # a 128-pixel, 5-channel crop and its record's framing
MB = 2**20


def test_a_large_export_is_cut_by_size_alone():
    # 10,000 and 2,500 bytes in 100-byte shards: 100 and 25, more than the floor's 13 and 4.
    assert shard_counts({"training": 400, "validation": 100}, {"training": 10_000, "validation": 2_500},
                        target_bytes=100, min_shards=16) == {"training": 100, "validation": 25}


def test_a_small_export_gets_its_share_of_the_floor_by_bytes():
    # Both fit one shard by size; 16 shards shared 3:1 by bytes (not 1:1 by sites), so a training shard and a
    # validation shard hold about as much: 300/12 = 25 and 100/4 = 25 bytes.
    assert shard_counts({"training": 50, "validation": 50}, {"training": 300.0, "validation": 100.0},
                        target_bytes=1_000, min_shards=16) == {"training": 12, "validation": 4}
    # Shares round up: 16 x 0.7 = 11.2 -> 12 and 16 x 0.3 = 4.8 -> 5.
    assert shard_counts({"training": 50, "validation": 50}, {"training": 70.0, "validation": 30.0},
                        target_bytes=1_000, min_shards=16) == {"training": 12, "validation": 5}


def test_the_floor_never_gives_a_split_more_shards_than_sites_nor_a_split_without_sites_any():
    assert shard_counts({"training": 5, "validation": 100, "other": 0}, {"training": 50.0, "validation": 50.0},
                        target_bytes=1_000, min_shards=16) == {"training": 5, "validation": 8}
    assert shard_counts({"training": 3}, {"training": 1.0}, target_bytes=1_000, min_shards=1) == {"training": 1}


def test_without_any_cell_counted_the_floor_is_shared_by_sites():
    # No locations file could be read in the sample: no bytes, so the sites decide (30:10 -> 12 and 4).
    assert shard_counts({"training": 30, "validation": 10}, {"training": 0.0, "validation": 0.0},
                        target_bytes=1_000, min_shards=16) == {"training": 12, "validation": 4}


def _example_split_cells(project) -> dict[str, tuple[int, int]]:
    """(sites, cells) per split of the example, counted from its index and locations files."""
    index = pd.read_csv(project / "inputs/metadata/index.csv", dtype=str)
    counted: dict[str, tuple[int, int]] = {}
    for row in index.itertuples():
        split = "training" if row.Split == "0" else "validation"
        cells = len(pd.read_csv(project / f"inputs/locations/{row.Metadata_Plate}/"
                                          f"{row.Metadata_Well}-{row.Metadata_Site}-Nuclei.csv"))
        sites, total = counted.get(split, (0, 0))
        counted[split] = (sites + 1, total + cells)
    return counted


def test_export_plans_its_shards_from_the_locations_and_the_options(project):
    counted = _example_split_cells(project)
    assert {split: sites for split, (sites, _) in counted.items()} == {"training": 8, "validation": 4}
    total_cells = sum(cells for _, cells in counted.values())

    def planned(*options: str) -> str:
        code, text = run_cli("--root", str(project), "--config", "bbbc022.json", "export-sc", "--dry-run", *options)
        assert code == 0, text
        return text.strip().splitlines()[-1]

    # By default the 12 sites (66 MB) get the floor of 16 (13 and 4 by cells), capped at one shard per site.
    assert MIN_SHARDS == 16
    assert "shards {'training': 8, 'validation': 4}" in planned()
    # 10 MB shards by size, and a floor of 3 shared by cells.
    expected = {split: max(math.ceil(cells * BYTES_PER_CELL / (10 * MB)), min(sites, math.ceil(3 * cells / total_cells)))
                for split, (sites, cells) in counted.items()}
    assert f"shards {{'training': {expected['training']}, 'validation': {expected['validation']}}}" in \
        planned("--min-shards", "3", "--shard-mb", "10")
    # By hand: 617 training cells x 82,120 bytes = 4.8 shards of 10 MB -> 5 (floor 3 x 617/808 -> 3);
    # 191 validation cells = 1.5 shards -> 2 (floor 3 x 191/808 -> 1).
    assert counted == {"training": (8, 617), "validation": (4, 191)}
    assert expected == {"training": 5, "validation": 2}


@pytest.mark.parametrize("option, value", [("--min-shards", "0"), ("--shard-mb", "-1"), ("--shard-mb", "nan"),
                                           ("--min-shards", "2.5")])
def test_shard_options_must_be_positive_numbers(project, capsys, option, value):
    with pytest.raises(SystemExit) as exited:
        run_cli("--root", str(project), "--config", "bbbc022.json", "export-sc", "--dry-run", option, value)
    assert exited.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_a_shard_no_site_fell_into_is_empty_by_right_and_train_reads_the_export(exported, tmp_path):
    # The example's 8 training sites hashed into 8 shards leave some empty: their records say 0 cells, and
    # the export is trainable; a shard whose record counts cells but whose file is empty was truncated.
    from dpcore.storage import StoragePath
    from dpcore.training_data import ExportInfo, TrainingDataError

    root = tmp_path / "project"
    shutil.copytree(exported[0], root)
    out = root / "outputs/single-cells"
    records = {p.stem: json.loads(p.read_text()) for p in (out / "_shards").glob("*.json")}
    empty = [name for name, record in records.items() if record["cells"] == 0]
    assert empty and all((out / records[name]["shard"]).stat().st_size == 0 for name in empty)
    info = ExportInfo.read(StoragePath(str(out)))
    assert info.counts["training"] == 617
    full = next(record for record in records.values() if record["cells"] and record["split"] == "training")
    (out / full["shard"]).write_bytes(b"")
    with pytest.raises(TrainingDataError, match="is empty but its commit record .* counts [0-9]+ cells"):
        ExportInfo.read(StoragePath(str(out)))
    (out / full["shard"]).write_bytes(b"x")
    ExportInfo.read(StoragePath(str(out)))
    # Without its record, an empty shard in a split that has cells cannot be told from a truncated one.
    (out / "_shards" / f"{empty[0]}.json").unlink()
    with pytest.raises(TrainingDataError, match="has no commit record"):
        ExportInfo.read(StoragePath(str(out)))
