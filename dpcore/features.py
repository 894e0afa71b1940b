"""The per-cell features on disk: one module owns their layout, their manifest and their reader.

::

    <exp>/features/
        <plate>/<well>-<site>.parquet     one file per site: Metadata_* columns + <model>_<i> features
        _manifest.json                    which model made them (written by every profile run)
        _runs/<index name>.json           what the last run over that index (or index part) did
        _failed/profile[-<part>]-failures.jsonl   dead letters of the last run over that index

Everything that is not a feature file starts with ``_``, which Arrow (and so
pandas) skips: ``pd.read_parquet(features_dir)`` and :func:`dataset` read the
screen's features as one table. A site is committed when its Parquet file is
renamed into place; :func:`committed_in_plate` lists one plate folder, so the
resume check runs per plate on workers and never holds a screen's site list.
Each ``profile --part K`` run writes its own run record, so parts add up and
never erase each other's. Nothing here imports Beam or TensorFlow.
"""

from __future__ import annotations

import json
import logging
import posixpath

from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"
RUNS_DIR = "_runs"
FAILED_DIR = "_failed"
SUFFIX = ".parquet"
# What a manifest must agree on for new sites to be added beside existing ones.
MODEL_KEYS = ("model", "conv_blocks", "feature_layer", "features_per_cell", "checkpoint_sha256",
              "pretrained_weights", "config_fingerprint", "precision")
# What a manifest written before a key existed meant by leaving it out.
MODEL_KEY_DEFAULTS = {"precision": "float32"}


def site_key(plate: str, well: str, site: str) -> str:
    """DeepProfiler's site key, ``plate/well-site`` (as ``dpcore.metadata.Site.key``)."""
    return f"{plate}/{well}-{site}"


def split_site_key(key: str) -> tuple[str, str, str]:
    plate, rest = key.split("/", 1)
    well, site = rest.rsplit("-", 1)
    return plate, well, site


def site_file(features_dir: StoragePath, plate: str, well: str, site: str) -> StoragePath:
    return features_dir / plate / f"{well}-{site}{SUFFIX}"


def committed_in_plate(features_dir: StoragePath, plate: str) -> set[str]:
    """Keys of the plate's sites whose feature file exists (written atomically, so complete). One listing."""
    folder = features_dir / plate
    done = set()
    for path in folder.glob(f"*{SUFFIX}"):
        well, site = path.name[: -len(SUFFIX)].rsplit("-", 1)
        done.add(site_key(plate, well, site))
    return done


def index_stem(index: StoragePath) -> str:
    """``index``, ``index-001``: names a run record and a dead-letter file after the index it profiled."""
    return posixpath.splitext(index.name)[0]


def run_record_file(features_dir: StoragePath, index: StoragePath) -> StoragePath:
    return features_dir / RUNS_DIR / f"{index_stem(index)}.json"


def failures_file(features_dir: StoragePath, index: StoragePath) -> StoragePath:
    stem = index_stem(index)
    name = "profile-failures.jsonl" if stem == "index" else f"profile-{stem}-failures.jsonl"
    return features_dir / FAILED_DIR / name


def read_manifest(features_dir: StoragePath) -> dict | None:
    path = features_dir / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else None


def model_differences(existing: dict, wanted: dict) -> list[str]:
    """The model keys on which two manifests disagree (empty: new sites may join the old ones)."""
    def value(manifest: dict, key: str):
        return manifest.get(key, MODEL_KEY_DEFAULTS.get(key))

    return [key for key in MODEL_KEYS if value(existing, key) != value(wanted, key)]


def read_run_records(features_dir: StoragePath) -> dict[str, dict]:
    """Every index part's last run record, by index name."""
    folder = features_dir / RUNS_DIR
    return {path.name[: -len(".json")]: json.loads(path.read_text()) for path in folder.glob("*.json")}


def dataset(features_dir: StoragePath):
    """The screen's features as one ``pyarrow.dataset.Dataset`` (lazy; ``.to_table()`` loads it)."""
    import pyarrow.dataset as ds  # noqa: PLC0415 -- only readers need pyarrow's dataset layer
    if features_dir.is_local:
        return ds.dataset(features_dir.url, format="parquet", partitioning=None,
                          ignore_prefixes=[".", "_"])
    return ds.dataset(features_dir.url.split("://", 1)[1], format="parquet", filesystem=features_dir.fs,
                      partitioning=None, ignore_prefixes=[".", "_"])
