"""``dpbeam export-sc`` end to end on the DirectRunner, on the real BBBC022 subset."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dpcore import sc_records
from tests import reference
from tests.conftest import run_cli, tree_bytes, write_config

pytestmark = pytest.mark.pipeline
CHANNELS = ("DNA", "RNA", "ER", "AGP", "Mito")


def export(root: Path, *extra: str, config: str = "bbbc022.json") -> tuple[int, str]:
    return run_cli("--root", str(root), "--config", config, "export-sc", *extra)


def raw_config(project: Path, example_config_dict: dict, **locations) -> str:
    """A config reading the original TIFFs (no prepare needed)."""
    data = json.loads(json.dumps(example_config_dict))
    data["prepare"]["compression"]["implement"] = False
    data["dataset"]["locations"].update(locations)
    return write_config(project, data)


def read_shards(out: Path, box: int = 128) -> list[dict]:
    files = sorted(str(p) for p in out.glob("*.tfrecord*"))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    records = []
    for file in files:
        for parsed in sc_records.dataset([file], box, 5, compression, parallel_reads=1):
            records.append({k: (v.numpy().decode() if v.dtype.name == "string" else v.numpy())
                            for k, v in parsed.items()} | {"file": Path(file).name})
    return records


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord*"))}


def test_every_cell_inside_the_image_is_exported_exactly_once(exported):
    root, text = exported
    out = root / "outputs/single-cells"
    index = pd.read_parquet(out / "sc-metadata")
    locations = {p.stem.replace("-Nuclei", ""): pd.read_csv(p) for p in (root / "inputs/locations/20585").glob("*.csv")}
    assert len(index) == sum(len(v) for v in locations.values()) == 808  # no BBBC022 centre lies outside
    keys = list(zip(index["Metadata_Well"], index["Metadata_Site"], index["Cell_Index"]))
    assert len(set(keys)) == len(keys)
    records = read_shards(out)
    assert len(records) == len(index)
    by_key = {(r["well"], r["site"], int(r["cell_index"])): r for r in records}
    assert set(by_key) == set(keys)
    # The index points at each record: its shard file and its position in it.
    for shard, recorded in index.groupby("Shard")["Record"].apply(list).items():
        assert recorded == list(range(len(recorded))), shard
        in_file = [(r["well"], r["site"], int(r["cell_index"])) for r in records if r["file"] == shard]
        assert in_file == [k for k, s in zip(keys, index["Shard"]) if s == shard]
    training = int((index["Split_Set"] == "training").sum())
    assert f"cells exported: 808 (training {training}, validation {808 - training}, other 0)" in text


def test_shards_hold_the_pixels_and_labels_of_the_definition(exported):
    root, _ = exported
    out = root / "outputs/single-cells"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["DMSO", "NIFLUMIC ACID"]
    records = read_shards(out)
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    checked = 0
    for record in records[::97] + [r for r in records if r["center_y"] < 8][:3]:   # a spread, plus border cells
        row = index[(index["Metadata_Well"] == record["well"]) & (index["Metadata_Site"] == record["site"])].iloc[0]
        pngs = [root / "outputs/compressed/images/20585" / Path(row[c]).with_suffix(".png").name for c in CHANNELS]
        image = np.stack([np.asarray(Image.open(p), dtype=np.float64) for p in pngs], axis=-1)
        expected = reference.crop_cell(image, float(record["center_x"]), float(record["center_y"]), 128)
        assert record["image"].shape == (128, 128, 5) and record["image"].dtype == np.uint8
        assert np.abs(record["image"] / 255.0 - expected).max() <= 1 / 255 + 1e-9
        assert record["label_name"] == row["Treatment"]
        assert record["label"] == manifest["labels"].index(row["Treatment"])
        assert record["split"] == ("training" if row["Split"] == "0" else "validation")
        checked += 1
    assert checked >= 10


def test_manifest_counts_and_picture(exported):
    root, _ = exported
    out = root / "outputs/single-cells"
    manifest = json.loads((out / "manifest.json").read_text())
    index = pd.read_parquet(out / "sc-metadata")
    assert manifest["feature_spec_version"] == sc_records.FEATURE_SPEC_VERSION
    assert manifest["counts"]["training"] == int((index["Split_Set"] == "training").sum())
    assert sum(manifest["counts"].values()) == 808
    assert sum(manifest["counts_per_label"].values()) == 808
    assert len(manifest["shards"]["training"]) > 1, "the test wants several shards"
    for name in manifest["shards"]["training"] + manifest["shards"]["validation"]:
        assert (out / name).exists() and "-of-" in name
    csv = pd.read_csv(out / "sc-metadata.csv", dtype=str)
    assert len(csv) == 808 and {"Nuclei_Location_Center_X", "Label", "Shard", "Record"} <= set(csv.columns)
    montage = np.asarray(Image.open(out / "montage.png").convert("RGB"))
    samples = min(8, manifest["counts_per_label"]["DMSO"]) + min(8, manifest["counts_per_label"]["NIFLUMIC ACID"])
    assert montage.shape == (14 + samples * (128 + 14), 5 * 128, 3)  # a caption row, then crops with captions
    # A red cross marks every crop's centre (where its nucleus must be), and nothing else is red.
    for row in range(samples):
        for channel in range(5):
            y, x = 14 + row * (128 + 14) + 14 + 64, channel * 128 + 64
            assert tuple(montage[y, x]) == (255, 40, 40), (row, channel)
    red = np.all(montage == (255, 40, 40), axis=-1)
    assert red.sum() == samples * 5 * (2 * (2 * 8 + 1) - 1)  # two 17-pixel arms sharing the centre


def test_a_complete_export_is_kept_and_overwrite_replaces_it(exported, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(exported[0], root)
    out = root / "outputs/single-cells"
    before = shard_bytes(out)
    code, text = export(root, "--shard-mb", "10")
    assert code == 0 and "already at" in text and "kept" in text
    # An interrupted export (no manifest; two shards never committed, one damaged after its commit)
    # is resumed: only those three shards are written again, and the bytes are those of one clean run.
    (out / "manifest.json").unlink()
    records = sorted((out / "_shards").glob("*.json"))
    for record in records[:2]:
        record.unlink()
    damaged = out / json.loads(records[2].read_text())["shard"]
    damaged.write_bytes(b"partial")
    code, text = export(root, "--shard-mb", "10")
    assert code == 0, text
    assert f"resuming: {len(records) - 2} of {len(records)} shard(s) committed" in text
    assert f"shards written this run: 3; committed earlier and kept: {len(records) - 3}" in text
    assert shard_bytes(out) == before
    code, text = export(root, "--shard-mb", "10", "--overwrite", "--direct_num_workers", "2",
                        "--direct_running_mode", "multi_processing")
    assert code == 0, text
    assert "removing the earlier export" in text
    assert shard_bytes(out) == before, "two worker processes must write the same shards"
    # Other settings (other shards: 20 MB ones and no floor make 3 + 1) mean another export: the partial
    # one is not mixed in. (Settings that plan the same shards are the same export: --shard-mb 20 alone
    # keeps the floor's 8 + 4.)
    (out / "manifest.json").unlink()
    code, text = export(root, "--shard-mb", "20", "--min-shards", "1")
    assert code == 0 and "it was started with other settings" in text, text


def test_bad_inputs_go_to_the_dead_letter_and_the_rest_completes(project, example_config_dict):
    name = raw_config(project, example_config_dict)
    index = pd.read_csv(project / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    (project / "inputs/images" / index.loc[0, "ER"]).write_bytes(b"not an image")
    locations = project / "inputs/locations/20585"
    (locations / "A01-2-Nuclei.csv").write_text("Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1,abc\n")
    (locations / "A01-3-Nuclei.csv").write_text("Foo,Bar\n1,2\n")
    missing_cells = len(pd.read_csv(locations / "A13-1-Nuclei.csv"))
    (locations / "A13-1-Nuclei.csv").unlink()
    code, text = export(project, config=name)
    assert code == 1
    failures = [json.loads(x) for x in
                (project / "outputs/single-cells/_failed/export-failures.jsonl").read_text().splitlines()]
    reasons = {f["item"]: f["reason"] for f in failures}
    assert set(reasons) == {"20585/A01-1", "20585/A01-2", "20585/A01-3"}
    assert "not a TIFF or PNG" in reasons["20585/A01-1"]
    assert "non-numeric" in reasons["20585/A01-2"] and "line(s) 2" in reasons["20585/A01-2"]
    assert "missing column(s)" in reasons["20585/A01-3"]
    assert "1 site(s) have no locations file (no cells): 20585/A13-1" in text
    manifest = json.loads((project / "outputs/single-cells/manifest.json").read_text())
    lost = sum(len(pd.read_csv(Path(__file__).parent / f"data/bbbc022/inputs/locations/20585/{s}-Nuclei.csv"))
               for s in ("A01-1", "A01-2", "A01-3"))
    assert sum(manifest["counts"].values()) == 808 - lost - missing_cells
    assert manifest["sites_without_locations"] == ["20585/A13-1"]


def test_png_format_reproduces_deepprofilers_layout(project, example_config_dict):
    name = raw_config(project, example_config_dict, box_size=64)
    code, text = export(project, "--format", "png", "--overwrite", config=name)  # as the README shows it
    assert code == 0, text
    out = project / "outputs/single-cells"
    index = pd.read_csv(out / "sc-metadata.csv", dtype=str)
    assert len(index) == 808 and "Image_Name" in index.columns
    first = np.asarray(Image.open(out / index.loc[0, "Image_Name"]))
    assert first.shape == (64, 64 * 5) and first.dtype == np.uint8
    assert not list(out.glob("*.tfrecord"))


def test_full_image_mode_exports_deepprofilers_tiles(project, example_config_dict):
    name = raw_config(project, example_config_dict, mode="full_image", box_size=64, view_size=256)
    code, text = export(project, "--overwrite", "--gzip", "--shard-mb", "64", config=name)  # the README's line
    assert code == 0, text
    out = project / "outputs/single-cells"
    records = read_shards(out, box=64)
    tiles_per_site = 3 * 3  # ceil(696/256) x ceil(520/256)
    assert len(records) == 12 * tiles_per_site
    assert all(name.endswith(".tfrecord.gz") for name in json.loads((out / "manifest.json").read_text())
               ["shards"]["training"])


def _write_outlines(project: Path, radius: int = 20) -> dict:
    """A label image per site: a disk of ``radius`` around each nucleus, labelled 1, 2, ... in file order."""
    import tifffile

    index = pd.read_csv(project / "inputs/metadata/index.csv", dtype=str)
    rows, centres = [], {}
    yy, xx = np.mgrid[:520, :696]
    for _, row in index.iterrows():
        key = (row["Metadata_Well"], row["Metadata_Site"])
        cells = pd.read_csv(project / f"inputs/locations/20585/{key[0]}-{key[1]}-Nuclei.csv").to_numpy()
        labels = np.zeros((520, 696), np.uint16)
        for n, (x, y) in enumerate(cells, start=1):
            labels[(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = n
        relative = f"20585/{key[0]}-{key[1]}-Cells.tif"
        (project / "inputs/outlines/20585").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(project / "inputs/outlines" / relative, labels)
        rows.append({"Metadata_Plate": "20585", "Metadata_Well": key[0], "Metadata_Site": key[1],
                     "Outlines": relative})
        centres[key] = cells
    pd.DataFrame(rows).to_csv(project / "inputs/metadata/outlines.csv", index=False)
    return centres


def test_mask_objects_keeps_only_each_cells_own_object(project, example_config_dict):
    centres = _write_outlines(project, radius=20)
    name = raw_config(project, example_config_dict, box_size=64, mask_objects=True)
    code, text = export(project, config=name)
    assert code == 0, text
    records = read_shards(project / "outputs/single-cells", box=64)
    assert len(records) == 808
    yy, xx = np.mgrid[:64, :64]
    checked = 0
    for record in records[::7]:
        x, y = float(record["center_x"]), float(record["center_y"])
        site = centres[(record["well"], record["site"])]
        if (np.hypot(site[:, 0] - x, site[:, 1] - y) < 42).sum() > 1:
            continue  # a neighbour's disk may cover this centre: its object is then the neighbour's
        if y < 33 or x < 33 or y > 520 - 33 or x > 696 - 33:
            continue  # border cells: the comparison below assumes the whole box is inside the image
        far = np.hypot(yy - 31.5, xx - 31.5) > 23   # outside this cell's disk (radius 20, box 64: 1 px/px)
        assert (record["image"][far] == 0).all(), "pixels outside the object must be masked"
        near = np.hypot(yy - 31.5, xx - 31.5) < 15
        assert (record["image"][near].max(axis=0) > 0).all(), "the object itself must be kept"
        checked += 1
    assert checked >= 8


def test_mask_objects_without_outlines_fails_clearly_before_any_work(project, example_config_dict):
    name = raw_config(project, example_config_dict, mask_objects=True)
    code, text = export(project, config=name)
    assert code == 2 and "dataset.locations.mask_objects" in text and "outlines.csv" in text
    assert not list((project / "outputs/single-cells").glob("*.tfrecord"))


def test_a_corrupt_compressed_png_goes_to_the_dead_letter(prepared, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(prepared[0], root)
    png = sorted((root / "outputs/compressed/images/20585").glob("IXMtest_A13_s2_*.png"))[0]
    png.write_bytes(png.read_bytes()[:2000])  # truncated PNG
    code, text = export(root)
    assert code == 1
    assert "20585/A13-2" in text and png.name in text and "corrupt or truncated" in text
    manifest = json.loads((root / "outputs/single-cells/manifest.json").read_text())
    lost = len(pd.read_csv(root / "inputs/locations/20585/A13-2-Nuclei.csv"))
    assert sum(manifest["counts"].values()) == 808 - lost


def test_a_killed_export_is_resumed_shard_by_shard(exported, tmp_path):
    """SIGKILL after some shards committed: the re-run writes only the others, and the bytes of a clean run."""
    root = tmp_path / "project"
    shutil.copytree(exported[0], root)
    out = root / "outputs/single-cells"
    reference = tree_bytes(exported[0] / "outputs/single-cells")
    shutil.rmtree(out)
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", "bbbc022.json",
               "export-sc", "--shard-mb", "10"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    records = out / "_shards"
    deadline = time.time() + 180
    while time.time() < deadline and not (records.exists() and len(list(records.glob("*.json"))) >= 2):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    committed = len(list(records.glob("*.json")))
    total = len([name for name in reference if name.startswith("_shards/")])
    assert not (out / "manifest.json").exists() and 2 <= committed < total, "killed too late to test resume"
    code, text = export(root, "--shard-mb", "10")
    assert code == 0, text
    assert f"resuming: {committed} of {total} shard(s) committed by an earlier run" in text
    assert f"shards written this run: {total - committed}; committed earlier and kept: {committed}" in text
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp*"))
    ours = tree_bytes(out)
    assert sorted(ours) == sorted(reference)
    assert [name for name in ours if ours[name] != reference[name]] == []


def test_labels_and_splits_come_from_the_configured_columns(project, example_config_dict):
    """train.partition.targets, split_field, training and validation under other names than the example's:
    every cell's label and split follow them (and nothing is read from a column named Treatment or Split)."""
    index = pd.read_csv(project / "inputs/metadata/index.csv", dtype=str)
    index = index.rename(columns={"Treatment": "Compound", "Split": "Fold"})
    index["Fold"] = index["Fold"].map({"0": "fit", "1": "check"})
    index.to_csv(project / "inputs/metadata/index.csv", index=False)
    data = json.loads(json.dumps(example_config_dict))
    data["prepare"]["compression"]["implement"] = False
    data["dataset"]["locations"]["box_size"] = 64
    data["dataset"]["metadata"]["label_field"] = "Compound"
    data["train"]["partition"] = {"targets": ["Compound"], "split_field": "Fold", "training": ["fit"],
                                  "validation": ["check"]}
    code, text = export(project, config=write_config(project, data))
    assert code == 0, text
    out = project / "outputs/single-cells"
    manifest = json.loads((out / "manifest.json").read_text())
    cells = pd.read_parquet(out / "sc-metadata")
    assert sorted(manifest["labels"]) == ["DMSO", "NIFLUMIC ACID"] and len(cells) == 808
    assert manifest["counts"]["training"] == int((cells["Fold"] == "fit").sum()) > 0
    assert manifest["counts"]["validation"] == int((cells["Fold"] == "check").sum()) > 0
    assert (cells["Split_Set"] == cells["Fold"].map({"fit": "training", "check": "validation"})).all()
    first = read_shards(out, box=64)[0]  # dataset.locations.box_size 64, not the example's 128
    assert first["image"].shape == (64, 64, 5) and first["label_name"] in ("DMSO", "NIFLUMIC ACID")
