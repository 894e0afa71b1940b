"""The single-cell export on disk: one module owns its names, its manifest and its index schema.

::

    <single-cells>/
        training-00000-of-00004.tfrecord[.gz] ...    crops (schema: dpcore.sc_records)
        sc-metadata/part-training-00000.parquet ...  the cell index, one part per shard
        _shards/training-00000.json ...              a shard's commit record (counts, failures, samples)
        _plan.json                                   what this export is (written before any shard)
        sc-metadata.csv                              DeepProfiler's single index file, small exports only
        montage.png                                  sample crops per label
        manifest.json                                the export's commit, written last

A shard is committed when its commit record exists: the record is written after
the shard file and its index part, so a re-run of an interrupted export writes
only the shards without one (shards are deterministic: same sites, same order,
same bytes). The export is complete when ``manifest.json`` exists; the
manifest is built from the per-shard records, never from cell rows, so its
size and the memory that builds it do not grow with the number of cells.

The export-sc pipeline writes these files; ``train``, the tests and users read
them through the functions here. Nothing here imports Beam or TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field

from dpcore import sc_records
from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
PLAN_NAME = "_plan.json"
INDEX_DIR = "sc-metadata"
SHARD_RECORDS_DIR = "_shards"
INDEX_CSV = "sc-metadata.csv"
MONTAGE_NAME = "montage.png"
FAILURES_FILE = "_failed/export-failures.jsonl"
SPLITS = sc_records.SPLITS
# An export has at least this many shards (``--min-shards``) however small it is: each shard is written by
# one worker, so a few hundred sites in two 128 MB shards would keep all but two workers idle (and readers
# that share out whole files, as tf.data's file-based auto-sharding does, would have two to share).
MIN_SHARDS = 16
DEFAULT_SHARD_MB = 128.0  # ``--shard-mb``: TFRecord files of 100-200 MB read efficiently from buckets

# DeepProfiler wrote one sc-metadata.csv; below this many cells we write it too (about 100 MB of CSV).
CSV_MAX_CELLS = 500_000
# The montage shows this many crops for each of the first MONTAGE_LABELS labels (sorted).
MONTAGE_PER_LABEL = 8
MONTAGE_LABELS = 12
# The manifest names at most this many sites without locations (the count is always exact).
LISTED_SITES = 100


# ----------------------------------------------------------- sites to shards
# How sites are dealt to shards; recorded in the plan, so an export is resumed only under the rule it began with.
SHARDING = "split-position-rotated-rounds"
SHARDING_BEFORE_PLANS_NAMED_IT = "site-key-crc32"  # plans written before the field existed
_MASK_64 = (1 << 64) - 1


def shard_of_position(position: int, shards: int) -> int:
    """The shard (of its split's ``shards``) of the site at 0-based ``position`` among its split's index rows.

    Sites are dealt in rounds of ``shards`` consecutive positions, one to each shard, and each round is
    rotated by its own pseudo-random offset. Every shard of a split gets the same number of sites, give
    or take one, where a hash of the site key left them +-20% apart (14-35 sites in the 24-plate
    replica's 19 shards); the rotation keeps a shard from collecting the same field of every well (a
    plain round robin does when the shard count and the sites per well share a factor), so the cells
    per shard even out too: on the replica, whose wells repeat one plate's, their coefficient of
    variation was 5-17% against 14-43% by hash (14 to 32 shards a split). Sites from all over the screen still share a shard (a training reader's shuffle needs that:
    cutting the index into consecutive blocks would not). A shard is one worker's unit of work, so the
    heaviest shard is when an export ends.

    Positions are per split (numbered as the index is read, ``beam_pipelines.index.StreamIndex``): one
    split's rows are rarely consecutive (the replica's alternate 6 and 3 by well). Integer arithmetic
    only: the same shard on every machine.
    """
    round_number, slot = divmod(position, shards)
    return (slot + _mix64(round_number) % shards) % shards


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a well-mixed 64-bit integer of ``value``."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK_64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return value ^ (value >> 31)


# --------------------------------------------------------------------- names
def shard_file_name(split: str, index: int, total: int, compression: str = "") -> str:
    return sc_records.shard_name(split, index, total, compression)


def index_part_name(split: str, index: int) -> str:
    return f"part-{split}-{index:05d}.parquet"


def shard_record_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.json"


def shard_key_text(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


# ---------------------------------------------------------------- index schema
# Columns every index part has, after the index row's own columns (Metadata_*, the label, the split ...).
CELL_COLUMNS = ("Nuclei_Location_Center_X", "Nuclei_Location_Center_Y", "Cell_Index", "Label", "Split_Set")
TFRECORD_COLUMNS = ("Shard", "Record")   # where the crop is: file name and record number in it
PNG_COLUMNS = ("Image_Name",)            # DeepProfiler's layout: <plate>/<well>-<site>-<cell>.png


# -------------------------------------------------------------------- the plan
def shard_counts(sites_per_split: dict[str, int], bytes_per_split: dict[str, float], target_bytes: float,
                 min_shards: int = MIN_SHARDS) -> dict[str, int]:
    """Shards per split. In all: the smallest multiple of ``min_shards`` whose shards hold at most about
    ``target_bytes`` (by the splits' estimated bytes); shared between the splits by their bytes (by their
    sites when no cell was counted), largest remainders first, so every shard of every split holds about
    the same; a split never gets more shards than sites, nor fewer than its bytes need, and a split
    with sites at least one.

    A shard is the unit one worker writes, and shards of equal size (sites are dealt to them evenly,
    :func:`shard_of_position`) in a number divisible by the workers give every worker the same work: with
    the default 16, any of 1, 2, 4, 8 or 16 workers. The 24-plate replica was 19 shards by size alone (14
    + 5): one of two workers wrote 10 and the other 9, ~10% of the export's time on one worker alone.
    """
    splits = {split: sites for split, sites in sites_per_split.items() if sites}
    if not splits:
        return {}
    total_bytes = sum(bytes_per_split.get(split, 0.0) for split in splits)
    if total_bytes > 0:
        weights = {split: bytes_per_split.get(split, 0.0) for split in splits}
    else:
        weights = {split: float(sites) for split, sites in splits.items()}
    by_size = math.ceil(total_bytes / target_bytes)
    total = max(1, math.ceil(by_size / min_shards)) * min_shards
    counts = _largest_remainders(total, weights)
    return {split: min(sites, max(1, counts[split], math.ceil(bytes_per_split.get(split, 0.0) / target_bytes)))
            for split, sites in splits.items()}


def _largest_remainders(total: int, weights: dict[str, float]) -> dict[str, int]:
    """``total`` shared in proportion to ``weights``: whole parts first, then one each to the largest
    fractions (ties by name, so the plan is the same on every machine)."""
    weight_sum = sum(weights.values())
    exact = {key: total * weight / weight_sum for key, weight in weights.items()}
    counts = {key: math.floor(value) for key, value in exact.items()}
    left = total - sum(counts.values())
    for key in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[:left]:
        counts[key] += 1
    return counts


@dataclass(frozen=True)
class ExportPlan:
    """Everything the bytes of an export depend on. A partial export is resumed only under the same plan."""

    format: str
    compression: str
    config_fingerprint: str
    labels: tuple[str, ...]
    shards: dict                       # split -> number of shards
    box_size: int
    channels: tuple[str, ...]
    label_field: str
    split_field: str
    feature_spec_version: int = sc_records.FEATURE_SPEC_VERSION
    sharding: str = SHARDING           # the rule that deals sites to shards (shard_of_position)

    def to_json(self) -> str:
        values = asdict(self)
        values["labels"], values["channels"] = list(self.labels), list(self.channels)
        values["shards"] = {k: int(v) for k, v in sorted(self.shards.items())}
        return json.dumps(values, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ExportPlan":
        values = json.loads(text)
        values["labels"], values["channels"] = tuple(values["labels"]), tuple(values["channels"])
        values.setdefault("sharding", SHARDING_BEFORE_PLANS_NAMED_IT)
        return cls(**values)

    def shard_names(self, split: str) -> list[str]:
        if self.format != "tfrecord":
            return []
        total = int(self.shards.get(split, 0))
        return [shard_file_name(split, i, total, self.compression) for i in range(total)]

    def shard_keys(self) -> list[tuple[str, int]]:
        return [(split, i) for split, n in sorted(self.shards.items()) for i in range(int(n))]


# ------------------------------------------------------------ shard records
@dataclass
class ShardRecord:
    """What one shard holds, written beside it as its commit. Small: counts and a few samples."""

    split: str
    index: int
    shard: str | None                        # the TFRecord file name; None for PNG exports
    shard_bytes: int = 0                     # its size: a shard damaged after its commit is written again
    sites: int = 0
    cells: int = 0
    cells_per_label: dict = field(default_factory=dict)   # label name -> cells
    skipped: dict = field(default_factory=lambda: {"outside": 0, "nan": 0})
    sites_without_locations: list = field(default_factory=list)
    failures: list = field(default_factory=list)            # dead-letter records of this shard's sites
    # (stable fraction, label name, where): where = record number (tfrecord) or Image_Name (png)
    samples: list = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ShardRecord":
        values = json.loads(text)
        values["samples"] = [tuple(s) for s in values["samples"]]
        return cls(**values)


def smallest_per_label(samples: list, labels: tuple[str, ...] | None = None,
                       per_label: int = MONTAGE_PER_LABEL) -> list:
    """The ``per_label`` samples with the smallest stable fraction for each label (of ``labels``, if given).

    A sample is a tuple ``(fraction, label, ...)``; ties are broken by the rest of
    the tuple, so the choice is the same in any order and on any worker.
    """
    kept: dict[str, list] = {}
    for sample in sorted(samples, key=lambda s: (s[0],) + tuple(str(x) for x in s[2:])):
        if labels is not None and sample[1] not in labels:
            continue
        bucket = kept.setdefault(sample[1], [])
        if len(bucket) < per_label:
            bucket.append(sample)
    return [s for label in sorted(kept) for s in kept[label]]


# ------------------------------------------------------------------ totals
@dataclass
class ExportTotals:
    """Per-shard records added up: an order-independent, bounded accumulator."""

    shards: int = 0
    sites: int = 0
    counts: dict = field(default_factory=lambda: {split: 0 for split in SPLITS})
    counts_per_split_label: dict = field(default_factory=dict)   # split -> label name -> cells
    skipped: dict = field(default_factory=lambda: {"outside": 0, "nan": 0})
    sites_without_locations: list = field(default_factory=list)  # the first LISTED_SITES, sorted
    sites_without_locations_count: int = 0
    failures: int = 0
    samples: list = field(default_factory=list)  # (fraction, label, split, index, where)

    @classmethod
    def of_shard(cls, record: ShardRecord) -> "ExportTotals":
        """One shard's record as totals (its samples located by split and shard)."""
        return cls(shards=1, sites=record.sites, counts={split: 0 for split in SPLITS} | {record.split: record.cells},
                   counts_per_split_label={record.split: dict(record.cells_per_label)},
                   skipped={k: record.skipped.get(k, 0) for k in ("outside", "nan")},
                   sites_without_locations=sorted(record.sites_without_locations)[:LISTED_SITES],
                   sites_without_locations_count=len(record.sites_without_locations),
                   failures=len(record.failures),
                   samples=[(f, label, record.split, record.index, where) for f, label, where in record.samples])

    def add(self, record: ShardRecord, montage_labels: tuple[str, ...]) -> "ExportTotals":
        return self.merge(ExportTotals.of_shard(record), montage_labels)

    def merge(self, other: "ExportTotals", montage_labels: tuple[str, ...]) -> "ExportTotals":
        self.shards += other.shards
        self.sites += other.sites
        for split, n in other.counts.items():
            self.counts[split] = self.counts.get(split, 0) + n
        for split, labels in other.counts_per_split_label.items():
            mine = self.counts_per_split_label.setdefault(split, {})
            for label, n in labels.items():
                mine[label] = mine.get(label, 0) + n
        for key in ("outside", "nan"):
            self.skipped[key] += other.skipped[key]
        self.sites_without_locations = sorted(self.sites_without_locations + other.sites_without_locations
                                              )[:LISTED_SITES]
        self.sites_without_locations_count += other.sites_without_locations_count
        self.failures += other.failures
        self.samples = smallest_per_label(self.samples + other.samples, montage_labels)
        return self


# ----------------------------------------------------------------- manifest
def manifest_from(plan: ExportPlan, totals: ExportTotals, index_csv: bool) -> dict:
    labels = plan.labels
    per_label = {label: sum(totals.counts_per_split_label.get(split, {}).get(label, 0) for split in SPLITS)
                 for label in labels}
    return {
        "format": plan.format,
        "feature_spec_version": plan.feature_spec_version,
        "config_fingerprint": plan.config_fingerprint,
        "box_size": plan.box_size,
        "channels": list(plan.channels),
        "compression": plan.compression,
        "label_field": plan.label_field,
        "labels": list(labels),
        "split_field": plan.split_field,
        "counts": {split: int(totals.counts.get(split, 0)) for split in SPLITS},
        "counts_per_label": per_label,
        "counts_per_split_label": {split: {label: int(totals.counts_per_split_label.get(split, {}).get(label, 0))
                                           for label in labels} for split in SPLITS},
        "skipped": dict(totals.skipped),
        "sites": totals.sites,
        "sites_without_locations": list(totals.sites_without_locations),
        "sites_without_locations_count": totals.sites_without_locations_count,
        "failed_records": totals.failures,
        "shards": {split: plan.shard_names(split) for split in SPLITS},
        "shard_counts": {split: int(plan.shards.get(split, 0)) for split in SPLITS},
        "index": INDEX_DIR,
        "index_csv": INDEX_CSV if index_csv else None,
    }


class ExportNotFound(FileNotFoundError):
    """No complete export where one was expected."""


def read_manifest(folder: StoragePath) -> dict:
    path = folder / MANIFEST_NAME
    if not path.exists():
        raise ExportNotFound(f"no complete single-cell export at {folder} (no {MANIFEST_NAME}): "
                             f"run 'dpbeam ... export-sc' first")
    return json.loads(path.read_text())


def read_plan(folder: StoragePath) -> ExportPlan | None:
    path = folder / PLAN_NAME
    if not path.exists():
        return None
    try:
        return ExportPlan.from_json(path.read_text())
    except (ValueError, TypeError, KeyError):
        logger.warning("%s cannot be read; treating the export there as unknown", path)
        return None


def committed_shards(folder: StoragePath) -> set[str]:
    """Keys (``training-00003``) of shards whose commit record exists: one listing."""
    records = folder / SHARD_RECORDS_DIR
    return {path.name[: -len(".json")] for path in records.glob("*.json")} if records.exists() else set()


def index_dataset(folder: StoragePath):
    """The cell index of a complete export as one ``pyarrow.dataset.Dataset`` (lazy: nothing is loaded).

    ``index_dataset(folder).to_table().to_pandas()`` loads it all, which only a
    small export should do; filter or select columns first for a screen.
    """
    import pyarrow.dataset as ds  # noqa: PLC0415 -- pyarrow is needed only by readers of the index
    read_manifest(folder)
    target = folder / INDEX_DIR
    if target.is_local:
        return ds.dataset(target.url, format="parquet")
    return ds.dataset(target.url.split("://", 1)[1], format="parquet", filesystem=target.fs)
