"""The dpbeam command line: options, help, setup, example, validate, split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

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


def test_validate_refuses_what_the_commands_refuse(project, example_config_dict):
    """validate runs each command's own pre-start checks: it never passes a config a command refuses."""
    typo = json.loads(json.dumps(example_config_dict))
    typo["dataset"]["locations"]["box_szie"] = typo["dataset"]["locations"].pop("box_size")
    name = write_config(project, typo, "typo.json")
    code, text = run("--root", str(project), "--config", name, "validate")
    assert code == 1, text
    assert "dataset.locations.box_szie is not a config key: did you mean 'box_size'" in text
    assert ("export-sc: dataset.locations.box_size is required by the 'export-sc' command but is not set "
            "(the config has dataset.locations.box_szie: did you mean box_size?)") in text
    assert "config ready for: prepare; refused by: export-sc, train, profile" in text
    code, refused = run("--root", str(project), "--config", name, "export-sc")
    assert code == 2 and "did you mean box_size?" in refused

    layer = json.loads(json.dumps(example_config_dict))
    layer["profile"]["feature_layer"] = "block6a_activaton"
    name = write_config(project, layer, "layer.json")
    code, text = run("--root", str(project), "--config", name, "validate")
    assert code == 1, text
    assert ("profile: profile.feature_layer 'block6a_activaton' is not a layer of efficientnet"
            in text) and "close matches: block6a_activation" in text
    assert "config ready for: prepare, export-sc, train; refused by: profile" in text
    # A config meant for some commands only is checked for those.
    code, text = run("--root", str(project), "--config", name, "validate", "--commands", "prepare,export-sc")
    assert code == 0 and "config ready for: prepare, export-sc" in text and "no problems found" in text
    code, text = run("--root", str(project), "--config", name, "validate", "--commands", "prepare,trian")
    assert code == 2 and "--commands takes names from prepare, export-sc, train, profile" in text


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


def _tree(root) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*"))}


def test_dry_run_builds_the_job_graph_and_touches_nothing(project):
    before = _tree(project)
    code, text = run("--root", str(project), "--config", "bbbc022.json", "prepare", "--dry_run")
    assert code == 0, text
    code, listing = run("--root", str(project), "--config", "bbbc022.json", "export-sc", "--dry-run")  # the README's
    assert code == 0 and "dry run: built the job graph for DirectRunner" in listing and "    WriteShards" in listing
    assert "dry run: built the job graph for DirectRunner" in text and "nothing was run, written or removed" in text
    steps = text.splitlines()
    assert steps.index("    ReadSiteContributions") < steps.index("    CompressSites") < steps.index(
        "    FinalizePlates")  # the steps, in the order they run
    assert "dry run: 1 plate(s) would be processed" in text and "PNGs written" not in text
    # Beam's own spelling with a value, and another runner's graph: still nothing runs.
    code, text = run("--root", str(project), "--config", "bbbc022.json", "export-sc", "--dry_run", "True",
                     "--runner", "FlinkRunner")
    assert code == 0 and "job graph for FlinkRunner" in text and "    WriteShards" in text, text
    assert _tree(project) == before, "a dry run must not create, change or remove anything (not even a lock)"
    with pytest.raises(SystemExit) as refused:
        main(["--root", str(project), "--config", "bbbc022.json", "prepare", "--dry_run", "maybe"])
    assert refused.value.code == 2


def test_tensorflow_and_beam_start_up_lines_are_kept_out_unless_debug(project, example_config_dict):
    """validate builds profile's model (TensorFlow loads); its C++ start-up lines are not problems."""
    noise = ("oneDNN custom operations", "cudart_stub", "absl::InitializeLog", "cpu_feature_guard", "cuInit")
    small = json.loads(json.dumps(example_config_dict))  # DeepProfiler's small cnn builds in a second
    small["train"]["model"]["name"] = "cnn"
    small["train"]["model"]["params"]["conv_blocks"] = 3
    small["profile"].update({"feature_layer": "features", "checkpoint": None})
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(project), "--config",
               write_config(project, small, "cnn.json"), "validate", "--commands", "profile"]
    fresh = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as in a new shell
    quiet = subprocess.run(command, capture_output=True, text=True, env=fresh)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert not [word for word in noise if word in quiet.stdout + quiet.stderr], quiet.stderr
    loud = subprocess.run(command + ["--log-level", "DEBUG"], capture_output=True, text=True, env=fresh)
    assert "oneDNN custom operations" in loud.stderr or "cudart_stub" in loud.stderr


def test_an_unreachable_bucket_is_reported_at_once_with_the_cause(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens on port 9
    started = time.monotonic()
    code, text = run("--root", "gs://no-such-bucket/project", "--config", "bbbc022.json", "validate")
    assert code == 2 and time.monotonic() - started < 10
    assert "cannot reach Cloud Storage at 127.0.0.1:9 for gs://no-such-bucket/project: Connection refused" in text


def test_reachability_goes_through_the_proxy_when_one_is_set(monkeypatch):
    from dpcore.reachability import _endpoint

    for variable in ("STORAGE_EMULATOR_HOST", "HTTPS_PROXY", "https_proxy", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    assert _endpoint("gs") == ("storage.googleapis.com", 443, "Cloud Storage")
    assert _endpoint("s3") == ("s3.amazonaws.com", 443, "S3")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert _endpoint("gs") == ("proxy.internal", 3128, "Cloud Storage through the proxy http://proxy.internal:3128")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")  # a local server is never proxied
    assert _endpoint("s3") == ("127.0.0.1", 5000, "S3")


def test_deepprofilers_cores_flag_sets_the_local_worker_threads(project):
    from beam_pipelines.context import local_parallelism

    assert local_parallelism((), 3)[-2:] == ("--direct_num_workers=3", "--direct_running_mode=multi_threading")
    assert local_parallelism((), 0)[-2] == f"--direct_num_workers={os.cpu_count() or 1}"  # 0 = all, as DeepProfiler
    assert local_parallelism(("--direct_num_workers", "2"), 3) == ("--direct_num_workers", "2")  # yours win
    # aggregate (threads=False) runs locally on one in-process worker, unless the user chose otherwise
    assert local_parallelism(("--x=1",), 2, threads=False) == (
        "--x=1", "--direct_num_workers=1", "--direct_running_mode=in_memory")
    for chosen in (("--direct_num_workers=4", "--direct_running_mode=multi_threading"), ("--runner", "FlinkRunner")):
        assert local_parallelism(chosen, 2, threads=False) == chosen
    assert [spec.name for spec in commands.COMMANDS if spec.uses_beam and not spec.local_threads] == ["aggregate"]
    code, text = run("--root", str(project), "--config", "bbbc022.json", "--cores", "1", "prepare", "--dry_run")
    assert code == 0, text
    code, text = run("--root", str(project), "--config", "bbbc022.json", "prepare", "--cores", "-2")
    assert code == 2 and "--cores must be 0 (all) or a number of cores, got -2" in text, text


def test_a_handful_of_sites_runs_on_one_in_process_worker(project, capsys):
    from beam_pipelines.context import FEW_SITES_PER_THREAD, local_parallelism

    memory = ("--direct_num_workers=1", "--direct_running_mode=in_memory")
    threads = ("--direct_num_workers=2", "--direct_running_mode=multi_threading")
    assert local_parallelism((), 2, sites=2 * FEW_SITES_PER_THREAD - 1)[-2:] == memory
    assert local_parallelism((), 2, sites=2 * FEW_SITES_PER_THREAD)[-2:] == threads
    assert local_parallelism((), 2)[-2:] == threads  # the number of sites unknown
    assert local_parallelism(("--direct_num_workers", "2"), 2, sites=1) == ("--direct_num_workers", "2")  # yours win
    assert local_parallelism(("--runner", "FlinkRunner"), 2, sites=1) == ("--runner", "FlinkRunner")
    # The commands count the sites they will process: the example's 12 on two threads, then on one.
    capsys.readouterr()
    code, text = run("--root", str(project), "--config", "bbbc022.json", "--cores", "2", "prepare", "--dry_run")
    logged = capsys.readouterr().err  # the command's log handler writes to standard error
    assert code == 0 and "12 site(s) to process: one in-process worker on the local runner" in logged, text
    code, text = run("--root", str(project), "--config", "bbbc022.json", "--cores", "1", "prepare", "--dry_run")
    logged = capsys.readouterr().err
    assert code == 0 and "one in-process worker" not in logged, text  # one thread already


def test_the_launcher_loads_the_crop_kernel_only_where_its_workers_cut(project, monkeypatch):
    """export-sc and profile start loading the crop kernel in the launcher when the work runs in it (threads,
    in memory, a portable runner's loopback workers), not for the local runner's worker processes: there
    it was ~0.6 s of numba import on the launcher's main thread, for nothing."""
    from beam_pipelines import export_sc
    from beam_pipelines.context import CommandContext

    def here(*beam_args: str) -> bool:
        return CommandContext(layout=project, beam_args=beam_args).workers_in_this_process

    assert here() and here("--direct_num_workers=2", "--direct_running_mode=multi_threading")
    assert here("--direct_running_mode=in_memory") and here("--runner", "PortableRunner", "--job_endpoint=embed")
    assert not here("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    assert not here("--runner", "DirectRunner", "--direct_running_mode=multi_processing")
    assert here("--runner", "FlinkRunner", "--direct_running_mode", "multi_processing")  # not the local runner

    loaded = []
    monkeypatch.setattr(export_sc, "warm_up_cutting", loaded.append)
    base = ("--root", str(project), "--config", "bbbc022.json", "export-sc", "--dry-run")
    assert run(*base, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing")[0] == 0
    assert loaded == []
    assert run(*base)[0] == 0
    assert loaded == [True]  # the example exports prepare's compressed 8-bit PNGs

    # On a worker, the cutting steps start it when they are set up (the launcher may not have).
    from beam_pipelines import profile
    from dpcore.config import load_config
    from dpcore.layout import ProjectLayout
    from dpcore.single_cells import CellSource

    monkeypatch.setattr(profile, "warm_up_cutting", loaded.append)
    source = CellSource.from_config(ProjectLayout.create(str(project)),
                                    load_config(project / "inputs/config/bbbc022.json"))
    for step in (export_sc.WriteShard(SimpleNamespace(source=source)), profile.CutCells(source)):
        loaded.clear()
        step.setup()
        step.teardown()
        assert loaded == [True], type(step).__name__


def test_traintf2_is_deepprofilers_name_for_train(project):
    code, text = run("--root", str(project), "--config", "bbbc022.json", "traintf2")
    assert code == 2 and "run 'dpbeam ... export-sc' first" in text  # train's own check, under the old name
