"""The dpbeam command line: options, help, setup, example, validate, split."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from beam_pipelines import commands
from beam_pipelines.cli import main
from tests.conftest import run_cli, write_config


def run(*argv: str) -> tuple[int, str]:
    return run_cli(*argv)


@pytest.mark.parametrize("command", [None] + [spec.name for spec in commands.COMMANDS])
def test_help_explains_every_command(capsys, command):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "usage: dpbeam" in text
    if command is None:
        for spec in commands.COMMANDS:
            assert spec.name in text
        assert "--runner" in text


def test_python_dash_m_entry_point_works():
    result = subprocess.run([sys.executable, "-m", "beam_pipelines", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "dpbeam" in result.stdout


def test_setup_creates_deepprofiler_layout(tmp_path):
    code, text = run("--root", str(tmp_path), "--exp", "run1", "setup")
    assert code == 0
    for folder in ("inputs/config", "inputs/images", "inputs/metadata", "inputs/locations", "inputs/outlines",
                   "outputs/intensities", "outputs/compressed/images", "outputs/single-cells",
                   "outputs/run1/checkpoint", "outputs/run1/logs", "outputs/run1/summaries",
                   "outputs/run1/features"):
        assert (tmp_path / folder).is_dir(), folder
        assert f"created  {tmp_path / folder}" in text
    code, text = run("--root", str(tmp_path), "--exp", "run1", "setup")
    assert code == 0 and "created" not in text and "exists" in text


def test_setup_honours_the_config_paths_section(tmp_path, example_config_dict):
    data = dict(example_config_dict, paths={"images": "raw-images"})
    name = write_config(tmp_path, data)
    code, _ = run("--root", str(tmp_path), "--config", name, "setup")
    assert code == 0
    assert (tmp_path / "raw-images").is_dir() and not (tmp_path / "inputs/images").exists()


def test_example_then_validate_reports_real_counts(tmp_path):
    code, text = run("--root", str(tmp_path), "example")
    assert code == 0 and "74 file(s) written" in text
    code, text = run("--root", str(tmp_path), "--config", "bbbc022.json", "validate")
    assert code == 0, text
    assert "plates: 1  wells: 2  sites: 12  images: 60" in text
    assert "channels: DNA, RNA, ER, AGP, Mito" in text
    expected_cells = sum(len(pd.read_csv(p)) for p in (tmp_path / "inputs/locations").rglob("*.csv"))
    assert f"cells found: {expected_cells} in 12 location file(s)" in text
    assert "no problems found" in text
    # A second example run keeps what is there (no prompt, nothing overwritten).
    code, text = run("--root", str(tmp_path), "example")
    assert code == 0 and "0 file(s) written" in text


def test_global_options_may_follow_the_command(tmp_path):
    code, _ = run("example", "--root", str(tmp_path))
    assert code == 0 and (tmp_path / "inputs/metadata/index.csv").exists()


def test_validate_reports_every_problem_with_its_file(project):
    index = pd.read_csv(project / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    images = project / "inputs/images"
    (images / index.loc[0, "DNA"]).unlink()                                   # missing image
    tifffile.imwrite(images / index.loc[1, "RNA"], np.zeros((100, 100), np.uint16))  # wrong size
    (images / index.loc[2, "ER"]).write_bytes(b"II*\x00garbage")              # corrupt TIFF
    (project / "inputs/locations/20585/A13-1-Nuclei.csv").write_text("X,Y\n1,2\n")   # wrong columns
    (project / "inputs/locations/20585/A13-2-Nuclei.csv").unlink()            # missing locations
    index.loc[3, "AGP"] = "../../outside.tif"                                  # escapes the images folder
    index.to_csv(project / "inputs/metadata/index.csv", index=False)

    code, text = run("--root", str(project), "--config", "bbbc022.json", "validate")
    assert code == 1
    assert "6 problem(s)" in text, text
    assert f"{index.loc[0, 'DNA'].split('/')[-1]}: file not found" in text
    assert "is 100x100 (width x height), dataset.images says 696x520" in text
    assert "corrupt or unreadable header" in text
    assert "A13-1-Nuclei.csv: missing column(s) Nuclei_Location_Center_X, Nuclei_Location_Center_Y" in text
    assert "A13-2-Nuclei.csv: locations file not found" in text
    assert "'../../outside.tif' escapes" in text
    assert "index line 5" in text


def test_validate_names_missing_columns_and_unknown_split_values(project, example_config_dict):
    index = pd.read_csv(project / "inputs/metadata/index.csv", dtype=str)
    index.drop(columns=["Treatment"]).to_csv(project / "inputs/metadata/index.csv", index=False)
    data = json.loads(json.dumps(example_config_dict))
    data["train"]["partition"]["validation"] = ["1", "7"]
    name = write_config(project, data)
    code, text = run("--root", str(project), "--config", name, "validate")
    assert code == 1
    assert "lacks required column(s) Treatment" in text
    assert "train.partition.validation value '7' matches no row of column 'Split'" in text


def test_a_bad_config_fails_before_any_work_naming_the_key(project, example_config_dict):
    data = json.loads(json.dumps(example_config_dict))
    data["dataset"]["locations"]["box_size"] = "big"
    name = write_config(project, data)
    for command in ("validate", "prepare"):
        code, text = run("--root", str(project), "--config", name, command)
        assert code == 2
        assert 'dataset.locations.box_size must be a positive integer (pixels), got "big"' in text
    assert not (project / "outputs/intensities").exists()


def test_commands_needing_a_config_say_so(tmp_path):
    code, text = run("--root", str(tmp_path), "validate")
    assert code == 2 and "needs --config" in text
    code, text = run("--root", str(tmp_path), "--config", "missing.json", "validate")
    assert code == 2 and "missing.json" in text and "does not exist" in text


def test_beam_options_are_refused_by_commands_without_a_pipeline(tmp_path):
    code, text = run("--root", str(tmp_path), "setup", "--runner", "DirectRunner")
    assert code == 2 and "unrecognised argument(s) for 'setup': --runner DirectRunner" in text


def test_split_writes_parts_without_dividing_wells(project):
    done = subprocess.run([sys.executable, "-m", "beam_pipelines", "--root", str(project), "split", "--parts", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # Each part is reported once, with what it holds (not once on stdout and again in the log).
    assert done.stdout.splitlines() == [f"wrote {project}/inputs/metadata/index-00{i}.csv (6 sites, 1 well)"
                                        for i in range(2)]
    assert "wrote" not in done.stderr, done.stderr
    parts = [pd.read_csv(project / f"inputs/metadata/index-00{i}.csv", dtype=str) for i in range(2)]
    assert [len(p) for p in parts] == [6, 6]
    assert [set(p["Metadata_Well"]) for p in parts] == [{"A01"}, {"A13"}]
    original = pd.read_csv(project / "inputs/metadata/index.csv", dtype=str)
    assert list(parts[0].columns) == list(original.columns)
    code, text = run("--root", str(project), "split", "--parts", "3")
    assert code == 2 and "exceeds the number of wells (2)" in text


def test_train_without_an_export_says_what_to_run(project):
    code, text = run("--root", str(project), "--config", "bbbc022.json", "train")
    assert code == 2 and "run 'dpbeam ... export-sc' first" in text


def test_profile_names_a_missing_checkpoint(project):
    code, text = run("--root", str(project), "--config", "bbbc022.json", "profile")
    assert code == 2 and "profile.checkpoint 'checkpoint_0003.hdf5'" in text and "does not exist" in text
