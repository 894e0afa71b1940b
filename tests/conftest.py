"""Shared fixtures: the real BBBC022 subset in tests/data, copied where a test may change it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
EXAMPLE = DATA / "bbbc022"


# --- Longest first --------------------------------------------------------------------------------------
# The suite runs on xdist workers (scripts/test.sh, --dist loadgroup): tests go out in collection order, a
# few at a time, to whichever worker is free, so a long test collected late (the demo: minutes) would run
# while the others have nothing left. The modules with the longest tests come first and the many quick unit
# tests last, where they fill the gaps. Modules whose module fixture is costly (a server, a model) are one
# xdist_group each, so that fixture is set up once. Measured durations: README "Tests".
LONGEST_FIRST = ("test_readme.py", "test_train.py", "test_profile_pipeline.py", "test_buckets.py",
                 "test_portable_runner.py", "test_gallery.py", "test_prepare_pipeline.py", "test_export_pipeline.py",
                 "test_locate.py", "test_metadata.py", "test_cli.py", "test_config_keys.py", "test_transforms.py",
                 "test_inference.py", "test_locking.py", "test_interrupt.py", "test_profiles.py", "test_runners.py")
FIRST_IN_MODULE = ("test_the_demo_script_runs_every_command_on_the_example",
                   "test_a_killed_training_run_continues_after_its_last_finished_epoch")


def pytest_collection_modifyitems(session, config, items) -> None:
    def rank(item) -> tuple[int, int]:
        module = item.path.name
        position = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
        return position, 0 if item.originalname in FIRST_IN_MODULE else 1

    items.sort(key=rank)  # stable: the order within each module (and among the quick modules) is kept


# --- Every README command line is run by some test (tests/readme_commands.py) ------------------------------

def pytest_configure(config) -> None:
    """The controller makes the command-line log folder; xdist workers and their subprocesses inherit it."""
    if not hasattr(config, "workerinput") and "DPBEAM_COMMAND_LOG" not in os.environ:
        os.environ["DPBEAM_COMMAND_LOG"] = tempfile.mkdtemp(prefix="dpbeam-command-lines-")


def _whole_suite(config) -> str | None:
    """"main" or "engines" when this session runs that whole suite as the README's scripts do, else None."""
    if config.option.keyword or getattr(config.option, "deselect", None) or getattr(config.option, "lf", False):
        return None
    args = [str(Path(arg)) for arg in config.args]
    if config.option.markexpr == "not engines" and args in (["tests"], [str(Path(config.rootpath, "tests"))]):
        return "main"
    if config.option.markexpr == "engines" and args in (["tests/engines"], [str(Path(config.rootpath, "tests/engines"))]):
        return "engines"
    return None


def pytest_sessionfinish(session, exitstatus) -> None:
    """After a green whole suite: fail it when a README command line was run by no test."""
    config = session.config
    suite = _whole_suite(config)
    if hasattr(config, "workerinput") or suite is None or exitstatus != 0:
        return
    from beam_pipelines.commands import BY_NAME
    from tests.readme_commands import coverage, read_records, readme_lines

    found = coverage(readme_lines(), read_records(Path(os.environ["DPBEAM_COMMAND_LOG"])), suite, set(BY_NAME))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if found.missing:
        reporter.write_line(found.report(), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        reporter.write_line(f"README: all {len(found.covered)} dpbeam command lines of the {suite} suite were run "
                            f"by tests (exit 0)", green=True)


@pytest.fixture(scope="session")
def example_root() -> Path:
    """The shipped example project, read-only: tests must not write into it."""
    return EXAMPLE


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A private, writable copy of the example project."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root)
    return root


@pytest.fixture(scope="session")
def example_config_dict() -> dict:
    return json.loads((EXAMPLE / "inputs/config/bbbc022.json").read_text())


def write_config(root: Path, data: dict, name: str = "test.json") -> str:
    path = root / "inputs" / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return name


class Output(list):
    """Collects what a command emits, for assertions."""

    def __call__(self, line: str) -> None:
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)


def load_npz(root: Path, plate: str = "20585") -> dict:
    """prepare's statistics of a plate, every array (no pickle)."""
    import numpy as np

    with np.load(root / f"outputs/intensities/{plate}/{plate}.npz", allow_pickle=False) as arrays:
        return {k: arrays[k] for k in arrays.files}


def output_files(root: Path) -> dict[str, bytes]:
    """Every output file except the npz (zip members carry timestamps), by relative path."""
    out = root / "outputs"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix != ".npz"}


def run_cli(*argv: str) -> tuple[int, str]:
    from beam_pipelines.cli import main

    out = Output()
    code = main(list(argv), emit=out)
    return code, out.text


def built_once_per_run(tmp_path_factory, name: str, build) -> tuple[Path, str]:
    """``build(root) -> command output`` done once for the whole test run, xdist workers included: the first
    worker to ask builds under this run's shared temporary folder while the others wait on a file lock, then
    all read the same (read-only) project. Each worker building its own cost ~30 s of CPU per worker."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-NNN: this run only
    folder = shared / f"built-{name}"
    with open(shared / f"built-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        output = folder / "command-output.txt"
        if not output.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            text = build(folder / "project")
            output.write_text(text)  # last: marks the build complete
    return folder / "project", output.read_text()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> tuple[Path, str]:
    """The example project after one complete ``prepare`` (read-only for tests: copy before changing)."""
    def build(root: Path) -> str:
        shutil.copytree(EXAMPLE, root)
        code, text = run_cli("--root", str(root), "--config", "bbbc022.json", "prepare")
        assert code == 0, text
        return text

    return built_once_per_run(tmp_path_factory, "prepared", build)


@pytest.fixture(scope="session")
def exported(prepared, tmp_path_factory) -> tuple[Path, str]:
    """The prepared example exported from its compressed PNGs into small (multi-shard) TFRecords
    (``export-sc --shard-mb 10``; read-only for tests: copy before changing)."""
    def build(root: Path) -> str:
        shutil.copytree(prepared[0], root)
        code, text = run_cli("--root", str(root), "--config", "bbbc022.json", "export-sc", "--shard-mb", "10")
        assert code == 0, text
        return text

    return built_once_per_run(tmp_path_factory, "exported", build)


def tree_bytes(folder: Path, pattern: str = "**/*") -> dict[str, bytes]:
    """Every file below ``folder`` matching ``pattern``, by relative path (for byte-for-byte comparisons)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob(pattern)) if p.is_file()}


def cnn_profile_project(prepared_root: Path, root: Path, config_dict: dict) -> tuple[Path, str]:
    """A copy of the prepared example set up to profile with a small seeded ``cnn`` (64-pixel crops,
    ``features`` layer): seconds per run, for tests of where and how ``profile`` runs, not of a network.
    Returns the project root and its config name; the same call always writes the same weights."""
    import keras

    from dpcore import models
    from dpcore.checkpoints import save_weights
    from dpcore.storage import StoragePath

    shutil.copytree(prepared_root, root)
    data = json.loads(json.dumps(config_dict))
    data["dataset"]["locations"]["box_size"] = 64
    data["train"]["model"].update({"name": "cnn"})
    data["train"]["model"]["params"]["conv_blocks"] = 3
    data["profile"].update({"feature_layer": "features", "checkpoint": "cnn.hdf5", "batch_size": 32})
    keras.utils.set_random_seed(11)
    save_weights(models.classifier("cnn", (64, 64, 5), 2, conv_blocks=3),
                 StoragePath(str(root / "outputs/results/checkpoint/cnn.hdf5")))
    return root, write_config(root, data)


def assert_same_prepare(ours: Path, reference: Path) -> None:
    """prepare's outputs equal byte for byte: compressed PNGs, prepare.json, and every array of the npz."""
    import numpy as np

    assert tree_bytes(ours / "outputs/compressed") == tree_bytes(reference / "outputs/compressed")
    summary = "outputs/intensities/20585/prepare.json"
    assert (ours / summary).read_bytes() == (reference / summary).read_bytes()
    functions = "outputs/intensities/20585/20585.npz"
    with np.load(ours / functions, allow_pickle=False) as mine, \
            np.load(reference / functions, allow_pickle=False) as theirs:
        assert sorted(mine.files) == sorted(theirs.files)
        for key in theirs.files:
            assert np.array_equal(mine[key], theirs[key]), key


def assert_same_export(ours: Path, reference: Path) -> None:
    """Every file of the export equal by name and bytes (shards, index parts, records, montage, CSV,
    manifest): a duplicate or a partial file under any name fails this."""
    mine, theirs = tree_bytes(ours / "outputs/single-cells"), tree_bytes(reference / "outputs/single-cells")
    assert sorted(mine) == sorted(theirs)
    # Dead letters are one record per line in the order the runner's shuffle delivers them.
    dead_letters = "_failed/export-failures.jsonl"
    assert sorted(mine.pop(dead_letters).splitlines()) == sorted(theirs.pop(dead_letters).splitlines())
    assert [name for name in mine if mine[name] != theirs[name]] == []


def assert_same_features(ours: Path, reference: Path, sites: int) -> None:
    """The same per-site feature files with the same cells, metadata equal and features to float32 rounding.

    Not byte for byte: on some CPUs (AMD EPYC here, not the Intel machines before) the matrix kernels give a
    row's last bits by its position in the batch (up to 2e-7 apart in the small cnn's features), and
    profile batches cells across sites, so where a run was interrupted moves a cell within its batch."""
    import numpy as np
    import pandas as pd

    mine = sorted(path.relative_to(ours) for path in (ours / "outputs/results/features").glob("*/*.parquet"))
    theirs = sorted(path.relative_to(reference) for path in (reference / "outputs/results/features").glob("*/*.parquet"))
    assert len(theirs) == sites and mine == theirs
    for relative in theirs:
        found, expected = pd.read_parquet(ours / relative), pd.read_parquet(reference / relative)
        assert list(found.columns) == list(expected.columns) and len(found) == len(expected), relative
        metadata = [column for column in expected.columns if column.startswith("Metadata_")]
        pd.testing.assert_frame_equal(found[metadata], expected[metadata])
        features = [column for column in expected.columns if not column.startswith("Metadata_")]
        np.testing.assert_allclose(found[features].to_numpy(), expected[features].to_numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=str(relative))


def write_synthetic_features(root: Path, seed: int = 0) -> dict:
    """Per-cell features as ``profile`` writes them (one Parquet per site under outputs/results/features/),
    seeded: 2 plates x 8 wells x 3 sites, 30-59 cells each, 12 features. Wells A01-A04 hold the control
    (DMSO); drugA/drugA2 (MoA mA) shift every feature, drugB/drugB2 (MoA mB) do not; plate P2 is offset
    by 0.5 (what normalization per plate removes). Returns a config dict for the project."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    wells = {"A01": "DMSO", "A02": "DMSO", "A03": "DMSO", "A04": "DMSO", "B01": "drugA", "B02": "drugA2",
             "B03": "drugB", "B04": "drugB2"}
    for plate in ("P1", "P2"):
        folder = root / "outputs/results/features" / plate
        folder.mkdir(parents=True, exist_ok=True)
        for well, treatment in wells.items():
            for site in (1, 2, 3):
                cells = int(rng.integers(30, 60))
                shift = 1.5 * np.linspace(0, 1, 12) if treatment.startswith("drugA") else 0.0
                values = rng.normal(size=(cells, 12)) + shift + (0.5 if plate == "P2" else 0.0)
                values[:, 11] = rng.integers(0, 2, size=cells) * 1e-3  # a near-constant feature to select away
                frame = pd.DataFrame(values.astype(np.float32), columns=[f"cnn_{i}" for i in range(12)])
                moa = "control" if treatment == "DMSO" else ("mA" if treatment.startswith("drugA") else "mB")
                meta = pd.DataFrame({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": str(site),
                                     "Metadata_Treatment": treatment, "Metadata_moa": moa,
                                     "Metadata_Cell_Index": np.arange(cells)})
                pd.concat([meta, frame], axis=1).to_parquet(folder / f"{well}-{site}.parquet", index=False)
    return {"dataset": {"metadata": {"label_field": "Treatment", "control_value": "DMSO"},
                        "images": {"channels": ["DNA"], "width": 100, "height": 100}},
            "evaluate": {"annotation_column": "Metadata_moa", "null_size": 1000}}


def kill_after_files(command: list[str], folder: Path, pattern: str, count: int, timeout: float = 240) -> int:
    """Start ``command`` in its own process group, SIGKILL the group once ``folder`` holds ``count`` files
    matching ``pattern`` (or at ``timeout``), and return how many such files were committed by then."""
    import signal
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and not (folder.exists() and len(list(folder.glob(pattern))) >= count):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return len(list(folder.glob(pattern)))


# ------------------------------------------------------------------ the report in a real browser
def chromium(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is required (scripts/test.sh installs it)"
    return subprocess.run([executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           *args], capture_output=True, text=True, timeout=120, check=False)


def check_report(page: Path, tmp_path: Path) -> None:
    """Every figure of the page is a decodable PNG, chromium loads them all, and the page is drawn."""
    import base64
    import io
    import re

    import numpy as np
    from PIL import Image

    text = page.read_text()
    sources = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', text)
    assert sources and len(sources) == text.count("<img")
    for data in sources:
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        picture.verify()
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri()).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) == str(len(sources)), dom[-500:]
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (3000, 1200) and pixels.std() > 10  # a page was drawn, not a blank window
