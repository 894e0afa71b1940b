"""``dpbeam example``: write a small real project that needs no download.

The project is the BBBC022 subset shipped with the package (two wells, twelve
sites, five channels; see ``tests/data/README.md`` for provenance and
citation). It is copied file by file through :class:`StoragePath`, so the
target may be a bucket.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from dpcore.storage import StoragePath, as_storage_path

logger = logging.getLogger(__name__)

EXAMPLE_NAME = "bbbc022"
EXAMPLE_CONFIG = "bbbc022.json"


def example_source() -> Path:
    """The packaged example project (a real folder inside the installed package)."""
    source = Path(str(resources.files("dpcore") / "example_data" / EXAMPLE_NAME))
    if not (source / "inputs" / "metadata" / "index.csv").is_file():
        raise FileNotFoundError(
            f"the example data is missing from the installation ({source}); reinstall dpbeam")
    return source


def write_example_project(root: "StoragePath | str", overwrite: bool = False) -> list[StoragePath]:
    """Copy the example's ``inputs/`` under ``root``; return the files written.

    Files already present are kept unless ``overwrite`` (never a prompt).
    """
    root = as_storage_path(root)
    source = example_source()
    written: list[StoragePath] = []
    kept = 0
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = file.relative_to(source).as_posix()
        if not relative.startswith("inputs/"):
            continue
        target = root.joinpath(*relative.split("/"))
        if target.exists() and not overwrite:
            kept += 1
            continue
        target.write_bytes(file.read_bytes())
        written.append(target)
    for folder in ("inputs/outlines", "outputs"):
        (root.joinpath(*folder.split("/"))).mkdir()
    logger.info("example project at %s: %d file(s) written, %d already there and kept", root, len(written), kept)
    return written
