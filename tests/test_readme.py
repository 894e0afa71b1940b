"""The README's command lines: each parses, each is run by a test (tests/readme_commands.py), and the
lines that only a cloud can run build their job graphs here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from beam_pipelines.cli import build_parser
from beam_pipelines.commands import BY_NAME
from tests.conftest import run_cli
from tests.readme_commands import OTHER_LINES, README, ReadmeLine, coverage, option_names, readme_lines

REPOSITORY = README.parent
LINES = readme_lines()
DPBEAM_LINES = [line for line in LINES if line.is_dpbeam and not line.synopsis]


def test_every_readme_line_is_a_dpbeam_command_or_has_a_named_runner():
    others = [line.text for line in LINES if not line.is_dpbeam]
    assert sorted(set(others)) == sorted(OTHER_LINES), "README script lines and OTHER_LINES differ"
    for runner in OTHER_LINES.values():  # a named test must exist, or the table lies
        if "::" in runner:
            module, name = runner.split("::")
            assert re.search(rf"^def {name}\(", (REPOSITORY / module).read_text(), re.M), runner
    assert len(DPBEAM_LINES) >= 30, "the README's command lines were not found (was the README restructured?)"


@pytest.mark.parametrize("line", DPBEAM_LINES, ids=lambda line: f"README:{line.number}")
def test_every_readme_dpbeam_line_parses(line: ReadmeLine):
    """Every option shown is dpbeam's or Beam's: a renamed option fails here, not for a user."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args, leftovers = build_parser().parse_known_args(list(line.argv))
    assert args.command in BY_NAME
    if leftovers:
        assert BY_NAME[args.command].uses_beam, f"{args.command} runs no pipeline but is shown with {leftovers}"
        known = PipelineOptions(leftovers).get_all_options(retain_unknown_options=False)
        for name in option_names(leftovers):
            assert name[2:].replace("-", "_") in known, f"README:{line.number}: {name} is no Beam option"


def test_coverage_counts_only_successful_runs_with_the_options_shown():
    shown = [ReadmeLine(1, "Using it", "dpbeam --root r export-sc --gzip", argv=("--root", "r", "export-sc", "--gzip")),
             ReadmeLine(2, "Run on Flink / Spark", "dpbeam --root r prepare", argv=("--root", "r", "prepare"),
                        engine_options=True),
             ReadmeLine(3, "Using it", "dpbeam --root R [--gpu ID] COMMAND",
                        argv=("--root", "R", "--gpu", "ID", "COMMAND"), synopsis=True)]
    commands = set(BY_NAME)
    failed = [{"argv": ["--root", "x", "export-sc", "--gzip", "--shard-mb", "2"], "exit": 2}]
    found = coverage(shown, failed, "main", commands)
    assert [line.number for line in found.missing] == [1, 3]
    other_options = [{"argv": ["--root", "x", "export-sc", "--shard-mb", "2"], "exit": 0}]
    assert [line.number for line in coverage(shown, other_options, "main", commands).missing] == [1, 3]
    ran = [{"argv": ["--root", "x", "export-sc", "--shard-mb", "2", "--gzip"], "exit": 0},
           {"argv": ["--gpu", "0", "--root", "y", "profile"], "exit": 0}]
    found = coverage(shown, ran, "main", commands)
    assert found.missing == [] and [line.number for line in found.covered] == [1, 3]
    engines = coverage(shown, [{"argv": ["--root", "x", "prepare", "--runner", "FlinkRunner"], "exit": 0}],
                       "engines", commands)
    assert [line.number for line in engines.missing] == [2], "the engine options are part of the line"
    assert "README.md:2" in engines.report()


def test_the_dataflow_lines_build_their_job_graphs(cnn_profile, tmp_path):
    """The README's Dataflow command lines cannot run here (no GCP project); with a local root their job
    graphs are built with exactly the options shown (``--dry-run``: nothing is submitted or written)."""
    root, config = cnn_profile
    for line in (line for line in DPBEAM_LINES if "--runner" in line.argv and "DataflowRunner" in line.argv):
        argv = list(line.argv)
        argv[argv.index("--root") + 1], argv[argv.index("--config") + 1] = str(root), config
        code, text = run_cli(*argv, "--dry-run", "--overwrite")  # the plate is prepared: do it again
        assert code == 0 and "dry run: built the job graph for DataflowRunner" in text, text
    profile_line = next(line for line in DPBEAM_LINES if "--inference-accelerator" in line.argv)
    hint = profile_line.argv[profile_line.argv.index("--inference-accelerator") + 1]
    prepare_line = next(line.argv for line in DPBEAM_LINES if "DataflowRunner" in line.argv)
    dataflow = prepare_line[prepare_line.index("prepare") + 1:]  # "[same options, ...]": the Beam options
    code, text = run_cli("--root", str(root), "--config", config, "profile", "--inference-accelerator", hint,
                         *dataflow, "--dry-run")
    assert code == 0 and "dry run: built the job graph for DataflowRunner" in text, text


@pytest.fixture
def cnn_profile(prepared, tmp_path, example_config_dict):
    from tests.conftest import cnn_profile_project

    return cnn_profile_project(prepared[0], tmp_path / "project", example_config_dict)


def test_the_demo_script_runs_every_command_on_the_example(tmp_path):
    """``bash scripts/demo.sh DIR``, as the quick start shows: every command on the example, EfficientNet-B0
    trained for an epoch on the real export; the README's figures for it (808 cells, 12 site profiles,
    niflumic acid against DMSO) hold, and the report loads in a browser."""
    import pandas as pd

    from tests.conftest import check_report

    done = subprocess.run(["bash", "scripts/demo.sh", str(tmp_path / "demo")], cwd=REPOSITORY,
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"demo finished in \d+ s", done.stdout), done.stdout[-2000:]
    results = tmp_path / "demo/outputs/results"
    assert sorted(path.name for path in (results / "checkpoint").glob("*.hdf5")) == ["checkpoint_0001.hdf5"]
    export = pd.read_parquet(tmp_path / "demo/outputs/single-cells/sc-metadata")
    assert len(export) == 808
    training = int((export["Split"] == "0").sum())
    assert f"efficientnet (conv_blocks 0) on {training} training cells" in done.stdout, done.stdout[-3000:]
    sites = pd.read_parquet(results / "profiles/sites.parquet")
    assert len(sites) == 12 and sites["Metadata_Object_Count"].sum() == 808
    activity = pd.read_parquet(results / "evaluation/phenotypic_activity.parquet")
    assert list(activity["Metadata_Treatment"]) == ["NIFLUMIC ACID"]
    page = results / "report/index.html"
    html = page.read_text()
    assert "No illumination functions" not in html and "No crop montage" not in html
    check_report(page, tmp_path)
    shutil.rmtree(tmp_path / "demo", ignore_errors=True)


def test_the_synopsis_global_options_take_effect(cnn_profile):
    """``--metadata`` picks another index, ``--single-cells`` another export folder, ``--exp`` another
    results folder, and ``--gpu`` sets CUDA_VISIBLE_DEVICES (a CPU run is unaffected): the synopsis's options."""
    import pandas as pd

    root, config = cnn_profile
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str)
    index[index["Metadata_Site"] == "1"].to_csv(root / "inputs/metadata/first_sites.csv", index=False)
    code, text = run_cli("--root", str(root), "--config", config, "--metadata", "first_sites.csv",
                         "--single-cells", "first-cells", "export-sc")
    assert code == 0, text
    cells = pd.read_parquet(root / "outputs/first-cells/sc-metadata")
    assert set(cells["Metadata_Site"]) == {"1"} and set(cells["Metadata_Well"]) == {"A01", "A13"}
    assert not (root / "outputs/single-cells").exists()
    shutil.copytree(root / "outputs/results/checkpoint", root / "outputs/gpu-run/checkpoint")
    done = subprocess.run([sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", config,
                           "--metadata", "first_sites.csv", "--exp", "gpu-run", "--gpu", "0", "profile"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "CUDA_VISIBLE_DEVICES=0" in done.stderr
    features = pd.read_parquet(root / "outputs/gpu-run/features")
    assert set(features["Metadata_Site"]) == {"1"} and len(features) == len(cells)
    assert not (root / "outputs/results/features").exists()


def test_the_command_log_records_each_line_and_never_fails_a_command(tmp_path, monkeypatch):
    import json

    from beam_pipelines.cli import main

    root = tmp_path / "project"
    monkeypatch.setenv("DPBEAM_COMMAND_LOG", str(tmp_path / "log" / "new"))
    assert main(["--root", str(root), "setup"], emit=lambda text: None) == 0
    assert main(["--root", str(root), "split", "--parts", "0"],
                emit=lambda text: None) == 2
    records = [json.loads(line) for path in (tmp_path / "log/new").glob("*.jsonl") for line in path.open()]
    assert records == [{"argv": ["--root", str(root), "setup"], "exit": 0},
                       {"argv": ["--root", str(root), "split", "--parts", "0"], "exit": 2}]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DPBEAM_COMMAND_LOG", str(blocker / "log"))  # cannot be a folder: the command still succeeds
    assert main(["--root", str(root), "setup"], emit=lambda text: None) == 0
