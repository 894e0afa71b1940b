"""No pickle in what we read or write, and no credentials in what we log or publish."""

from __future__ import annotations

import json
import re
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("dpcore", "beam_pipelines") for p in (REPO / folder).rglob("*.py"))


def test_no_pickle_in_library_code():
    offenders = [str(p.relative_to(REPO)) for p in SOURCES
                 if re.search(r"^\s*import pickle|pickle\.(load|dump)|allow_pickle\s*=\s*True|joblib",
                              p.read_text(), re.MULTILINE)]
    assert offenders == []


def test_every_npz_we_read_refuses_pickles():
    for path in SOURCES:
        for line in path.read_text().splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{path.name}: {line.strip()}"


def test_manifests_hold_no_credentials(exported):
    root, _ = exported
    manifest = json.loads((root / "outputs/single-cells/manifest.json").read_text())
    text = json.dumps(manifest).lower()
    assert not any(word in text for word in ("token", "credential", "password", "secret", "private_key"))
