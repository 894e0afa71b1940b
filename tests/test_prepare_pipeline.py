"""``dpbeam prepare`` end to end on the DirectRunner, on the real BBBC022 subset."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from tests import reference
from tests.conftest import load_npz, output_files, run_cli, write_config

pytestmark = pytest.mark.pipeline
CHANNELS = ("DNA", "RNA", "ER", "AGP", "Mito")
PLATE = "20585"


def prepare(root: Path, *extra: str, config: str = "bbbc022.json") -> tuple[int, str]:
    return run_cli("--root", str(root), "--config", config, "prepare", *extra)


def png(root: Path, relative: str, plate: str = PLATE) -> np.ndarray:
    name = Path(relative).with_suffix(".png").name
    return np.asarray(Image.open(root / "outputs/compressed/images" / plate / name))


def index_of(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="session")
def independent(prepared) -> dict:
    root, _ = prepared
    index = index_of(root)
    stacks = [reference.read_stack([root / "inputs/images" / row[c] for c in CHANNELS]) for _, row in index.iterrows()]
    stats = reference.plate_statistics(stacks, bits=16, down_scale_factor=4, median_filter_size=24)
    return {"index": index, "stacks": stacks, "stats": stats}


def test_statistics_match_the_independent_computation(prepared, independent):
    root, text = prepared
    ours, theirs = load_npz(root), independent["stats"]
    np.testing.assert_array_equal(ours["histogram"], theirs["histogram"])
    np.testing.assert_array_equal(ours["lower_percentiles"], theirs["lower_percentiles"])
    np.testing.assert_array_equal(ours["upper_percentiles"], theirs["upper_percentiles"])
    np.testing.assert_allclose(ours["mean_values"], theirs["mean_values"], rtol=1e-12)
    np.testing.assert_allclose(ours["mean_image"], theirs["mean_image"], rtol=1e-6)
    np.testing.assert_allclose(ours["illum_correction_function"], theirs["illum_correction_function"], rtol=1e-6)
    assert list(ours["channels"]) == list(CHANNELS)
    assert tuple(ours["original_size"]) == (520, 696, 5)
    assert "images read for statistics: 60" in text and "PNGs written: 60" in text


def test_every_png_within_one_grey_level(prepared, independent):
    root, _ = prepared
    stats = independent["stats"]
    for site, (_, row) in enumerate(independent["index"].iterrows()):
        for c, channel in enumerate(CHANNELS):
            expected = reference.compress(independent["stacks"][site][:, :, c], stats["illum_correction_function"][:, :, c],
                                          1.0, stats["upper_percentiles"][c])
            ours = png(root, row[channel])
            assert ours.dtype == np.uint8 and ours.shape == (520, 696)
            assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1, (row[channel])


def test_controls_distribution_is_the_histogram_of_control_pngs(prepared, independent):
    root, text = prepared
    index = independent["index"]
    controls = index[index["Treatment"] == "DMSO"]
    expected = np.zeros((5, 256))
    for _, row in controls.iterrows():
        for c, channel in enumerate(CHANNELS):
            expected[c] += np.bincount(png(root, row[channel]).ravel(), minlength=256)
    np.testing.assert_array_equal(load_npz(root)["controls_distribution"], expected)
    assert "control sites: 6" in text


def test_pictures_and_commit_marker_are_written(prepared):
    root, _ = prepared
    plate_dir = root / "outputs/intensities" / PLATE
    for channel in CHANNELS:
        picture = np.asarray(Image.open(plate_dir / f"{PLATE}_illumination_{channel}.png").convert("RGB"))
        assert picture.shape[1] == 700 and picture.shape[0] > 520  # the function, its axes and colour bar
        # 12 images are too few for a smooth function: the warning is drawn on every picture (a red box).
        assert np.all(np.abs(picture.astype(int) - (176, 0, 32)) <= 25, axis=-1).sum() > 500, channel
    manifest = json.loads((plate_dir / "prepare.json").read_text())
    assert manifest["images_per_channel"] == 12 and manifest["settings"]["median_filter_size"] == 24
    record = json.loads((root / "outputs/intensities/_runs/index.json").read_text())  # the run's last step
    assert (record["plates"], record["plates_committed"], record["failures"]) == (["20585"], ["20585"], 0)
    assert not list(root.rglob("*.tmp")), "temporary files left behind"
    assert (root / "outputs/intensities/_failed/prepare-failures.jsonl").read_text() == ""  # nothing failed


def test_rerun_skips_a_complete_plate(prepared):
    root, _ = prepared
    before = output_files(root)
    code, text = prepare(root)
    assert code == 0 and "already complete" in text
    assert output_files(root) == before


def test_bad_images_go_to_the_dead_letter_and_the_rest_completes(project, independent):
    index = index_of(project)
    images = project / "inputs/images"
    corrupt, missing, small = index.loc[0, "DNA"], index.loc[7, "RNA"], index.loc[9, "Mito"]
    (images / corrupt).write_bytes((images / corrupt).read_bytes()[:4000])   # truncated TIFF
    (images / missing).unlink()
    tifffile.imwrite(images / small, np.zeros((520, 600), np.uint16))

    code, text = prepare(project)
    assert code == 1
    records = [json.loads(line) for line in
               (project / "outputs/intensities/_failed/prepare-failures.jsonl").read_text().splitlines()]
    reasons = {r["item"]: r["reason"] for r in records}
    assert len(records) == 3, records
    assert "corrupt or truncated" in reasons[f"{PLATE}/A01-1"] and Path(corrupt).name in reasons[f"{PLATE}/A01-1"]
    assert "file not found" in reasons[f"{PLATE}/A13-2"] and Path(missing).name in reasons[f"{PLATE}/A13-2"]
    assert "is 600x520" in reasons[f"{PLATE}/A13-4"]
    assert "3 failure(s)" in text and "prepare-failures.jsonl" in text
    assert json.loads((project / "outputs/intensities/_runs/index.json").read_text())["failures"] == 3

    # Statistics come from the 9 good sites and equal the independent computation on them.
    good = [i for i in range(12) if i not in (0, 7, 9)]
    expected = reference.plate_statistics([independent["stacks"][i] for i in good], 16, 4, 24)
    ours = load_npz(project)
    np.testing.assert_array_equal(ours["upper_percentiles"], expected["upper_percentiles"])
    np.testing.assert_allclose(ours["illum_correction_function"], expected["illum_correction_function"], rtol=1e-6)
    assert int(ours["image_count"]) == 9
    written = list((project / "outputs/compressed/images" / PLATE).glob("*.png"))
    assert len(written) == 9 * 5


def test_a_plate_without_readable_images_is_reported(project):
    index = index_of(project)
    ghost = index.iloc[:2].copy()
    ghost["Metadata_Plate"] = "GHOST"
    for channel in CHANNELS:
        ghost[channel] = "nowhere/" + ghost[channel].str.split("/").str[-1]
    pd.concat([index, ghost]).to_csv(project / "inputs/metadata/index.csv", index=False)
    code, text = prepare(project)
    assert code == 1
    assert "plate GHOST: no readable image in this plate" in text
    assert (project / f"outputs/intensities/{PLATE}/prepare.json").exists()
    assert not (project / "outputs/intensities/GHOST").exists()


def test_resume_after_a_crash_recomputes_nothing_committed(project, prepared):
    reference_root, _ = prepared
    assert prepare(project)[0] == 0
    # Simulate a crash after the statistics and some PNGs: drop the marker and a third of the PNGs.
    (project / f"outputs/intensities/{PLATE}/prepare.json").unlink()
    pngs = sorted((project / "outputs/compressed/images" / PLATE).glob("*.png"))
    for path in pngs[::3]:
        path.unlink()
    code, text = prepare(project)
    assert code == 0, text
    assert "images read for statistics: 0" in text            # statistics were reused, not recomputed
    assert f"PNGs written: {len(pngs[::3])}; already committed and kept: {60 - len(pngs[::3])}" in text
    assert output_files(project) == output_files(reference_root)
    np.testing.assert_array_equal(load_npz(project)["controls_distribution"],
                                  load_npz(reference_root)["controls_distribution"])


def test_overwrite_leaves_no_output_of_the_earlier_run(project, prepared, independent, monkeypatch, capsys):
    """The user's scenario: one raw image deleted, ``prepare --overwrite``; the failed site's old PNGs
    (made with the earlier illumination function) must not stay, and export-sc must not crop it."""
    monkeypatch.setenv("DPBEAM_PROGRESS_SECONDS", "0.2")  # progress lines while it runs
    reference_root, _ = prepared
    shutil.copytree(reference_root / "outputs", project / "outputs", dirs_exist_ok=True)  # a complete run
    index = index_of(project)
    failed = index.index[(index["Metadata_Well"] == "A01") & (index["Metadata_Site"] == "3")][0]
    (project / "inputs/images" / index.loc[failed, "ER"]).unlink()

    code, text = prepare(project, "--overwrite")
    assert code == 1
    assert Path(index.loc[failed, "ER"]).name in text and "1 failure(s)" in text
    assert "images read for statistics: 55" in text and "PNGs written: 55" in text
    assert "earlier outputs removed: " in text
    assert "warning: only 12 image(s) per channel in plate 20585" in text  # the demo's plate is too small
    log = capsys.readouterr().err  # the command's log handler writes to standard error
    assert re.search(r" INFO dpcore\.progress: prepare: \d+ of 60 PNGs \(\d+%\), ", log), log[-3000:]
    for channel in CHANNELS:
        assert not (project / "outputs/compressed/images" / PLATE / Path(index.loc[failed, channel]).with_suffix(
            ".png").name).exists(), channel
    # Everything left is from this run: statistics of the 11 readable sites, PNGs made with them.
    good = [i for i in range(12) if i != failed]
    expected = reference.plate_statistics([independent["stacks"][i] for i in good], 16, 4, 24)
    np.testing.assert_allclose(load_npz(project)["illum_correction_function"],
                               expected["illum_correction_function"], rtol=1e-6)
    row = good[0]
    ours = png(project, index.loc[row, "DNA"]).astype(int)
    theirs = reference.compress(independent["stacks"][row][..., 0], expected["illum_correction_function"][..., 0],
                                1.0, float(expected["upper_percentiles"][0])).astype(int)
    assert np.abs(ours - theirs).max() <= 1

    code, text = run_cli("--root", str(project), "--config", "bbbc022.json", "export-sc")
    assert code == 1, text
    records = [json.loads(line) for line in
               (project / "outputs/single-cells/_failed/export-failures.jsonl").read_text().splitlines()]
    assert [r["item"] for r in records] == [f"{PLATE}/A01-3"], records
    assert "prepare-failures.jsonl" in records[0]["reason"]
    cells = pd.read_parquet(project / "outputs/single-cells/sc-metadata")
    assert not ((cells["Metadata_Well"] == "A01") & (cells["Metadata_Site"] == "3")).any()


def test_killed_run_then_rerun_gives_identical_outputs(project, prepared):
    reference_root, _ = prepared
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(project), "--config", "bbbc022.json", "prepare"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pngs = project / "outputs/compressed/images" / PLATE
    deadline = time.time() + 120
    while time.time() < deadline and not (pngs.exists() and any(pngs.glob("*.png"))):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (project / f"outputs/intensities/{PLATE}/prepare.json").exists(), "killed too late to test resume"
    code, text = prepare(project)
    assert code == 0, text
    assert not list(project.rglob("*.tmp")), "temporary files of the killed run must be cleaned up"
    assert not (project / "outputs/.intensities.dpbeam-lock").exists()
    assert output_files(project) == output_files(reference_root)
    for key, value in load_npz(reference_root).items():
        np.testing.assert_array_equal(load_npz(project)[key], value, err_msg=key)


def test_compression_off_writes_statistics_only(project, example_config_dict):
    data = json.loads(json.dumps(example_config_dict))
    data["prepare"]["compression"]["implement"] = False
    name = write_config(project, data)
    code, text = prepare(project, config=name)
    assert code == 0, text
    assert not list((project / "outputs").rglob("compressed/images/*/*.png"))
    assert load_npz(project)["controls_distribution"].sum() == 0
    assert json.loads((project / f"outputs/intensities/{PLATE}/prepare.json").read_text())["compressed"] is False


def test_two_local_worker_processes_give_the_same_outputs(project, prepared):
    reference_root, _ = prepared
    code, text = prepare(project, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    assert code == 0, text
    assert output_files(project) == output_files(reference_root)
    for key, value in load_npz(reference_root).items():
        np.testing.assert_array_equal(load_npz(project)[key], value, err_msg=key)


def test_every_prepare_setting_reaches_the_outputs(project, example_config_dict):
    """An 8-bit copy of four sites prepared with bits 8, down_scale_factor 2, median_filter_size 10 and
    scaling_factor 0.5 (none of them the default): statistics and PNGs equal the independent computation
    with the same settings, so a setting read but not passed on would fail here."""
    index = index_of(project)
    index = index[index["Metadata_Site"].isin(["1", "2"])]
    # Other names for the label column and the control: the controls' histogram must find them.
    index = index.rename(columns={"Treatment": "Compound"}).replace({"Compound": {"DMSO": "vehicle"}})
    index.to_csv(project / "inputs/metadata/index.csv", index=False)
    for _, row in index.iterrows():
        for channel in CHANNELS:
            path = project / "inputs/images" / row[channel]
            tifffile.imwrite(path, (tifffile.imread(path) >> 4).astype(np.uint8))  # 12-bit data as 8-bit
    data = json.loads(json.dumps(example_config_dict))
    data["dataset"]["images"]["bits"] = 8
    data["dataset"]["metadata"] = {"label_field": "Compound", "control_value": "vehicle"}
    data["train"]["partition"]["targets"] = ["Compound"]
    data["prepare"] = {"illumination_correction": {"down_scale_factor": 2, "median_filter_size": 10},
                       "compression": {"implement": True, "scaling_factor": 0.5}}
    code, text = prepare(project, config=write_config(project, data))
    assert code == 0, text
    assert "control sites: 2" in text, text  # A13-1 and A13-2
    stacks = [reference.read_stack([project / "inputs/images" / row[c] for c in CHANNELS]) for _, row in index.iterrows()]
    expected = reference.plate_statistics(stacks, bits=8, down_scale_factor=2, median_filter_size=10)
    ours = load_npz(project)
    assert ours["histogram"].shape == (5, 256) and ours["mean_image"].shape == (260, 348, 5)
    for name in ("histogram", "lower_percentiles", "upper_percentiles"):
        np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)
    np.testing.assert_allclose(ours["illum_correction_function"], expected["illum_correction_function"], rtol=1e-6)
    for site, (_, row) in enumerate(index.iterrows()):
        for c, channel in enumerate(CHANNELS):
            theirs = reference.compress(stacks[site][:, :, c], expected["illum_correction_function"][:, :, c], 0.5,
                                        expected["upper_percentiles"][c])
            mine = png(project, row[channel])
            assert mine.shape == (260, 348) and np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1, row[channel]
    controls = np.zeros((5, 256))
    for _, row in index[index["Compound"] == "vehicle"].iterrows():
        for c, channel in enumerate(CHANNELS):
            controls[c] += np.bincount(png(project, row[channel]).ravel(), minlength=256)
    np.testing.assert_array_equal(ours["controls_distribution"], controls)


def test_cellprofiler_functions_chosen_in_the_config_need_their_index_columns(project, example_config_dict):
    """prepare.illumination_correction.functions "cellprofiler" (no command-line flag): the index must name
    each plate's .npy functions; the example's does not, and prepare says so before any work."""
    data = json.loads(json.dumps(example_config_dict))
    data["prepare"]["illumination_correction"]["functions"] = "cellprofiler"
    code, text = prepare(project, config=write_config(project, data))
    assert code == 2 and "Illum_DNA" in text, text
    assert not (project / "outputs/intensities").exists() or not list((project / "outputs/intensities").rglob("*.npz"))
