"""Shared fixtures: the real BBBC022 subset in tests/data, copied where a test may change it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
EXAMPLE = DATA / "bbbc022"
SHARED_EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc022"


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


def run_cli(*argv: str) -> tuple[int, str]:
    from beam_pipelines.cli import main

    out = Output()
    code = main(list(argv), emit=out)
    return code, out.text


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> tuple[Path, str]:
    """The example project after one complete ``prepare`` (read-only for tests: copy before changing)."""
    root = tmp_path_factory.mktemp("prepared") / "project"
    shutil.copytree(EXAMPLE, root)
    code, text = run_cli("--root", str(root), "--config", "bbbc022.json", "prepare")
    assert code == 0, text
    return root, text


@pytest.fixture(scope="session")
def exported(prepared, tmp_path_factory) -> tuple[Path, str]:
    """The prepared example exported from its compressed PNGs into small (multi-shard) TFRecords
    (``export-sc --shard-mb 10``; read-only for tests: copy before changing)."""
    root = tmp_path_factory.mktemp("exported") / "project"
    shutil.copytree(prepared[0], root)
    code, text = run_cli("--root", str(root), "--config", "bbbc022.json", "export-sc", "--shard-mb", "10")
    assert code == 0, text
    return root, text


def tree_bytes(folder: Path, pattern: str = "**/*") -> dict[str, bytes]:
    """Every file below ``folder`` matching ``pattern``, by relative path (for byte-for-byte comparisons)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob(pattern)) if p.is_file()}
