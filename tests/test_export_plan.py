"""How many shards an export is cut into (by size, in multiples of ``--min-shards`` so small exports run in
parallel) and how its sites are dealt to them (evenly, whatever the index's order).

References are worked by hand (the arithmetic) or counted from the example's locations files (the plan).
"""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest

from dpcore.sc_export import MIN_SHARDS, ExportPlan, shard_counts, shard_of_position
from tests.conftest import run_cli

BYTES_PER_CELL = 128 * 128 * 5 + 200  # a 128-pixel, 5-channel crop and its record's framing
MB = 2**20


def test_a_large_export_is_cut_by_size_into_a_multiple_of_the_floor():
    # 12,500 bytes in 100-byte shards: 125, rounded up to 8 x 16 = 128 shared 4:1 by bytes: 102.4 and 25.6
    # -> 102 and 25, and the one left goes to the larger fraction (.6): 102 and 26.
    assert shard_counts({"training": 400, "validation": 100}, {"training": 10_000, "validation": 2_500},
                        target_bytes=100, min_shards=16) == {"training": 102, "validation": 26}
    # With a floor of 1, size alone: 125 = 100 + 25.
    assert shard_counts({"training": 400, "validation": 100}, {"training": 10_000, "validation": 2_500},
                        target_bytes=100, min_shards=1) == {"training": 100, "validation": 25}


def test_a_small_export_gets_its_share_of_the_floor_by_bytes():
    # Both fit one shard by size; 16 shards shared 3:1 by bytes (not 1:1 by sites), so a training shard and a
    # validation shard hold about as much: 300/12 = 25 and 100/4 = 25 bytes.
    assert shard_counts({"training": 50, "validation": 50}, {"training": 300.0, "validation": 100.0},
                        target_bytes=1_000, min_shards=16) == {"training": 12, "validation": 4}
    # 16 in all, by largest remainders: 16 x 0.7 = 11.2 and 16 x 0.3 = 4.8 -> 11 + 4, the one left to .8.
    assert shard_counts({"training": 50, "validation": 50}, {"training": 70.0, "validation": 30.0},
                        target_bytes=1_000, min_shards=16) == {"training": 11, "validation": 5}


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
    # 10 MB shards by size, in all a multiple of 3, shared by cells.
    in_all = math.ceil(math.ceil(total_cells * BYTES_PER_CELL / (10 * MB)) / 3) * 3
    assert "shards {'training': 7, 'validation': 2}" in planned("--min-shards", "3", "--shard-mb", "10")
    # By hand: 808 cells x 82,120 bytes = 6.3 shards of 10 MB -> 7 -> 9, a multiple of 3; shared by cells,
    # 9 x 617/808 = 6.87 and 9 x 191/808 = 2.13 -> 6 + 2, the one left to .87: 7 and 2 (each split at
    # least what its own bytes need, 4.8 -> 5 and 1.5 -> 2, and at most its sites, 8 and 4).
    assert counted == {"training": (8, 617), "validation": (4, 191)}
    assert in_all == 9


def test_sites_are_dealt_evenly_one_a_round_to_every_shard():
    for shards in (1, 7, 16, 24):
        for sites in (shards * 10, shards * 10 + 5):
            per_shard = [0] * shards
            for position in range(sites):
                per_shard[shard_of_position(position, shards)] += 1
            assert max(per_shard) - min(per_shard) <= 1
    # Each round of 16 positions is every shard once, in an order rotated by SplitMix64 of the round number
    # (its first output from 0 is 0xE220A8397B1DCDAF, so round 0 starts at shard 15).
    assert [shard_of_position(p, 16) for p in range(16)] == [(15 + p) % 16 for p in range(16)]
    assert sorted(shard_of_position(p, 16) for p in range(16, 32)) == list(range(16))


def test_a_split_repeating_every_few_sites_is_not_aliased_onto_some_shards():
    """Cells per site repeat every 6 sites (the wells of the benchmark's replica look alike): dealt in plain
    rounds (position mod 24) shard 5 would get every heavy site; rotated rounds spread them."""
    cells = [60, 70, 80, 90, 100, 300] * 48
    dealt, plain = [0] * 24, [0] * 24
    for position, count in enumerate(cells):
        dealt[shard_of_position(position, 24)] += count
        plain[position % 24] += count
    mean = sum(cells) / 24
    assert max(plain) / mean > 2.0  # the trap the rotation avoids: 12 heavy sites on one shard
    # 12 rounds, each a fresh draw of which site a shard gets: at most 2,000 cells (mean 1,400), not 3,600.
    assert max(dealt) / mean < 1.5 and min(dealt) / mean > 0.6


def test_a_plan_written_before_the_sharding_rule_was_recorded_is_another_plan():
    """An export begun by a version that dealt sites by a hash of their key is not resumed with the new rule."""
    plan = ExportPlan(format="tfrecord", compression="", config_fingerprint="f", labels=("a",),
                      shards={"training": 2}, box_size=128, channels=("DNA",), label_field="T", split_field="S")
    older = json.loads(plan.to_json())
    del older["sharding"]
    assert ExportPlan.from_json(plan.to_json()) == plan
    assert ExportPlan.from_json(json.dumps(older)).sharding == "site-key-crc32"
    assert ExportPlan.from_json(json.dumps(older)) != plan


@pytest.mark.parametrize("option, value", [("--min-shards", "0"), ("--shard-mb", "-1"), ("--shard-mb", "nan"),
                                           ("--min-shards", "2.5")])
def test_shard_options_must_be_positive_numbers(project, capsys, option, value):
    with pytest.raises(SystemExit) as exited:
        run_cli("--root", str(project), "--config", "bbbc022.json", "export-sc", "--dry-run", option, value)
    assert exited.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_the_example_exports_one_site_to_each_shard(exported):
    """The pipeline numbers each split's sites as it reads the index and deals them one a round: 8 training
    sites into 8 shards and 4 validation sites into 4, one each (a hash of the key left some with 2 and
    some empty)."""
    out = exported[0] / "outputs/single-cells"
    records = [json.loads(p.read_text()) for p in (out / "_shards").glob("*.json")]
    assert sorted((r["split"], r["index"]) for r in records) == \
        [("training", i) for i in range(8)] + [("validation", i) for i in range(4)]
    assert all(r["sites"] == 1 for r in records)


def test_a_shard_without_cells_is_empty_by_right_and_train_reads_the_export(prepared, tmp_path):
    # A site without a locations file leaves its shard (one site each here) without cells: its record says 0
    # cells, and the export is trainable; a shard whose record counts cells but whose file is empty was truncated.
    from dpcore.storage import StoragePath
    from dpcore.training_data import ExportInfo, TrainingDataError

    root = tmp_path / "project"
    shutil.copytree(prepared[0], root)
    (root / "inputs/locations/20585/A01-1-Nuclei.csv").unlink()
    code, text = run_cli("--root", str(root), "--config", "bbbc022.json", "export-sc", "--shard-mb", "10")
    assert code == 0, text
    out = root / "outputs/single-cells"
    records = {p.stem: json.loads(p.read_text()) for p in (out / "_shards").glob("*.json")}
    empty = [name for name, record in records.items() if record["cells"] == 0]
    assert empty and all((out / records[name]["shard"]).stat().st_size == 0 for name in empty)
    info = ExportInfo.read(StoragePath(str(out)))
    assert [records[name]["sites_without_locations"] for name in empty] == [["20585/A01-1"]]
    assert sum(info.counts.values()) == sum(record["cells"] for record in records.values()) < 808
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
