"""``dpbeam export-sc``: every cell cropped into TFRecord shards, with a Parquet index.

::

    ReadIndex -> KeyByShard ((split, shard), site) --+
    ShardKeys ((split, shard), None) ----------------+-> GroupByKey -> WriteShard --(failed)--> dead letters
                                                                          | shard summary
                                                                     GatherSummaries -> WriteIndexAndManifest
                                                                     (sc-metadata.parquet/.csv, montage.png,
                                                                      manifest.json written last)

Sites, not crops, are shuffled: each shard is written by one worker that reads
its sites in a fixed order, so shard contents are deterministic and crops never
cross the network. With ``--format png`` each cell becomes DeepProfiler's PNG
(channels side by side) instead. The crop arithmetic is ``dpcore.crops``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image, ImageDraw

from dpcore import sc_records
from dpcore.config import Config
from dpcore.crops import full_image_centres, quantise
from dpcore.images import ImageReadError, encode_png
from dpcore.layout import ProjectLayout, UnsafePathError
from dpcore.locations import LocationsError, LocationsMissing, read_locations
from dpcore.locking import output_lock
from dpcore.metadata import Site, load_sites, read_sites
from dpcore.single_cells import CellSource, stable_fraction
from dpcore.storage import StoragePath

from beam_pipelines.context import CommandContext
from beam_pipelines.dead_letter import WriteDeadLetters, failure, read_failures, report_failures
from beam_pipelines.progress import counter_values, inc_counter

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.export_sc"
MANIFEST_NAME = "manifest.json"
DEFAULT_SHARD_MB = 128
MONTAGE_PER_LABEL = 8
_RECORD_OVERHEAD_BYTES = 200  # keys and proto framing beside the pixels


@dataclass(frozen=True)
class ExportSettings:
    source: CellSource
    label_field: str
    split_field: str
    training: tuple[str, ...]
    validation: tuple[str, ...]
    labels: tuple[str, ...]                  # sorted: a label's index is its position
    shards: dict = field(default_factory=dict)  # split -> number of shards
    compression: str = ""                    # "" or "GZIP"
    fmt: str = "tfrecord"
    fingerprint: str = ""

    @property
    def layout(self) -> ProjectLayout:
        return self.source.layout

    @property
    def out(self) -> StoragePath:
        return self.layout.single_cells_dir

    def split_of(self, site: Site) -> str:
        value = site.value(self.split_field)
        if value in self.training:
            return "training"
        if value in self.validation:
            return "validation"
        return "other"

    def shard_of(self, site: Site) -> tuple[str, int]:
        split = self.split_of(site)
        return split, zlib.crc32(site.key.encode("utf-8")) % self.shards[split]

    def shard_file(self, split: str, index: int) -> StoragePath:
        return self.out / sc_records.shard_name(split, index, self.shards[split], self.compression)

    @property
    def failures_file(self) -> StoragePath:
        return self.out / "_failed" / "export-failures.jsonl"


# ------------------------------------------------------------------ per site
def _site_key(site: Site) -> tuple:
    return site.plate, site.well, _natural(site.site)


def _natural(value: str) -> tuple:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


class CellCutter:
    """Turns sites into cell records; failures and skips are collected, not raised."""

    def __init__(self, settings: ExportSettings):
        self.settings = settings
        self.failures: list[dict] = []
        self.missing_locations: list[str] = []
        self.skipped = {"outside": 0, "nan": 0}
        self.samples: list[tuple[float, str, np.ndarray]] = []

    def cells(self, site: Site) -> Iterator[tuple[dict, np.ndarray]]:
        """(index row, uint8 crop) for every usable cell of ``site``."""
        s = self.settings
        try:
            centres = s.source.centres(site)
        except LocationsMissing:
            inc_counter(NAMESPACE, "sites_without_locations")
            self.missing_locations.append(site.key)
            return
        except (LocationsError, UnsafePathError) as error:
            self._fail("locations", site, error)
            return
        try:
            cut = s.source.cut(site, centres)
        except (ImageReadError, UnsafePathError, LocationsError) as error:  # images, or an outline image
            self._fail("images", site, error)
            return
        inc_counter(NAMESPACE, "sites_read")
        inc_counter(NAMESPACE, "cells_skipped_outside_image", cut.batch.outside)
        inc_counter(NAMESPACE, "cells_skipped_nan", cut.batch.invalid)
        self.skipped["outside"] += cut.batch.outside
        self.skipped["nan"] += cut.batch.invalid
        label_name = site.value(s.label_field)
        split = s.split_of(site)
        crops = quantise(cut.batch.crops)
        metadata = site.as_dict()
        for crop, cell_index in zip(crops, cut.batch.kept):
            x, y = (float(v) for v in cut.centres[cell_index])
            row = dict(metadata)
            row.update({"Nuclei_Location_Center_X": x, "Nuclei_Location_Center_Y": y,
                        "Cell_Index": int(cell_index), "Label": s.labels.index(label_name),
                        "Split_Set": split})
            self._sample(f"{site.key}/{cell_index}", label_name, crop)
            yield row, crop

    def _fail(self, stage: str, site: Site, error: Exception) -> None:
        inc_counter(NAMESPACE, "sites_failed")
        self.failures.append(failure(stage, site.key, str(error)))

    def _sample(self, key: str, label: str, crop: np.ndarray) -> None:
        # Keep the cells with the smallest stable hash per label: the same sample on every run.
        self.samples.append((stable_fraction(key), label, crop))
        if len(self.samples) > 4 * MONTAGE_PER_LABEL * max(1, len(self.settings.labels)):
            self.samples = _smallest_per_label(self.samples)


def _smallest_per_label(samples: list) -> list:
    kept: dict[str, list] = {}
    for sample in sorted(samples, key=lambda s: s[0]):
        bucket = kept.setdefault(sample[1], [])
        if len(bucket) < MONTAGE_PER_LABEL:
            bucket.append(sample)
    return [s for bucket in kept.values() for s in bucket]


class WriteShard(beam.DoFn):
    """Cut a shard's sites in order and write them as one TFRecord file."""

    def __init__(self, settings: ExportSettings):
        self.settings = settings

    def process(self, element) -> Iterator:
        (split, index), members = element
        s = self.settings
        sites = sorted((m for m in members if m is not None), key=_site_key)
        cutter = CellCutter(s)
        target = s.shard_file(split, index)
        rows: list[dict] = []

        def records() -> Iterator[bytes]:
            for site in sites:
                for row, crop in cutter.cells(site):
                    row.update({"Shard": target.name, "Record": len(rows)})
                    rows.append(row)
                    yield sc_records.encode(sc_records.CellRecord(
                        image=crop, label=row["Label"], label_name=site.value(s.label_field), split=split,
                        split_value=site.value(s.split_field), plate=site.plate, well=site.well, site=site.site,
                        cell_index=row["Cell_Index"], center_x=row["Nuclei_Location_Center_X"],
                        center_y=row["Nuclei_Location_Center_Y"]))

        written = sc_records.write_shard(target, records(), s.compression)
        inc_counter(NAMESPACE, "cells_exported", written)
        inc_counter(NAMESPACE, "shards_written")
        for record in cutter.failures:
            yield beam.pvalue.TaggedOutput("failed", record)
        yield _summary(split, target.name, rows, cutter)


class WriteSitePngs(beam.DoFn):
    """DeepProfiler's export layout: one PNG per cell, channels side by side."""

    def __init__(self, settings: ExportSettings):
        self.settings = settings

    def process(self, site: Site) -> Iterator:
        s = self.settings
        cutter = CellCutter(s)
        rows = []
        for row, crop in cutter.cells(site):
            name = f"{site.plate}/{site.well}-{site.site}-{row['Cell_Index']:05d}.png"
            unfolded = np.concatenate([crop[:, :, c] for c in range(crop.shape[-1])], axis=1)
            s.out.joinpath(*name.split("/")).write_bytes(encode_png(unfolded))
            row["Image_Name"] = name
            rows.append(row)
        inc_counter(NAMESPACE, "cells_exported", len(rows))
        for record in cutter.failures:
            yield beam.pvalue.TaggedOutput("failed", record)
        yield _summary(s.split_of(site), None, rows, cutter)


def _summary(split: str, shard: str | None, rows: list[dict], cutter: CellCutter) -> dict:
    return {"split": split, "shard": shard, "rows": rows, "skipped": dict(cutter.skipped),
            "missing_locations": list(cutter.missing_locations), "samples": _smallest_per_label(cutter.samples)}


# --------------------------------------------------------------- publishing
def montage(samples: list, channels: tuple[str, ...], labels: tuple[str, ...]) -> bytes:
    """One row per sampled crop, one column per channel, grouped by label, with captions."""
    if not samples:
        return b""
    box = samples[0][2].shape[0]
    caption = 14
    rows = sorted(samples, key=lambda s: (labels.index(s[1]), s[0]))
    canvas = Image.new("L", (len(channels) * box, len(rows) * (box + caption)), 0)
    draw = ImageDraw.Draw(canvas)
    for r, (_, label, crop) in enumerate(rows):
        top = r * (box + caption)
        draw.text((2, top + 1), f"{label}  ({', '.join(channels)})", fill=255)
        for c in range(len(channels)):
            canvas.paste(Image.fromarray(crop[:, :, c]), (c * box, top + caption))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


class WriteIndexAndManifest(beam.DoFn):
    """Publish the cell index, the montage, and last the manifest (the export's commit)."""

    def __init__(self, settings: ExportSettings):
        self.settings = settings

    def process(self, summaries: list[dict]) -> Iterator[str]:
        s = self.settings
        rows = [row for summary in summaries for row in summary["rows"]]
        order = ["Shard", "Record"] if s.fmt == "tfrecord" else ["Image_Name"]
        frame = pd.DataFrame(rows)
        if len(frame):
            frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
        parquet = io.BytesIO()
        frame.to_parquet(parquet, index=False)
        (s.out / "sc-metadata.parquet").write_bytes(parquet.getvalue())
        (s.out / "sc-metadata.csv").write_text(frame.to_csv(index=False, lineterminator="\n"))
        samples = _smallest_per_label([x for summary in summaries for x in summary["samples"]])
        picture = montage(samples, s.source.channels, s.labels)
        if picture:
            (s.out / "montage.png").write_bytes(picture)
        manifest = {
            "format": s.fmt,
            "feature_spec_version": sc_records.FEATURE_SPEC_VERSION,
            "config_fingerprint": s.fingerprint,
            "box_size": s.source.box_size,
            "channels": list(s.source.channels),
            "compression": s.compression,
            "label_field": s.label_field,
            "labels": list(s.labels),
            "split_field": s.split_field,
            "counts": {split: int((frame["Split_Set"] == split).sum()) if len(frame) else 0
                       for split in sc_records.SPLITS},
            "counts_per_label": {label: int((frame["Label"] == i).sum()) if len(frame) else 0
                                 for i, label in enumerate(s.labels)},
            "skipped": {k: sum(summary["skipped"][k] for summary in summaries) for k in ("outside", "nan")},
            "sites_without_locations": sorted(k for summary in summaries for k in summary["missing_locations"]),
            "shards": {split: sorted(summary["shard"] for summary in summaries
                                     if summary["shard"] and summary["split"] == split)
                       for split in sc_records.SPLITS},
        }
        (s.out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        yield str(s.out / MANIFEST_NAME)


@dataclass
class ExportSingleCells(beam.PTransform):
    settings: ExportSettings
    index_path: str

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        s = self.settings
        sites = (
            pbegin
            | "IndexFile" >> beam.Create([self.index_path])
            | "ReadIndex" >> beam.FlatMap(read_sites, s.source.channels)
        )
        if s.fmt == "png":
            written = sites | "SpreadSites" >> beam.Reshuffle() | "WriteSitePngs" >> beam.ParDo(
                WriteSitePngs(s)).with_outputs("failed", main="summaries")
        else:
            keyed = sites | "KeyByShard" >> beam.Map(lambda site: (s.shard_of(site), site))
            every_shard = pbegin | "ShardKeys" >> beam.Create(
                [((split, i), None) for split, n in sorted(s.shards.items()) for i in range(n)])
            written = (
                (keyed, every_shard)
                | "AllShardMembers" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(WriteShard(s)).with_outputs("failed", main="summaries")
            )
        manifest = (
            written.summaries
            | "GatherSummaries" >> beam.combiners.ToList()
            | "WriteIndexAndManifest" >> beam.ParDo(WriteIndexAndManifest(s))
        )
        written.failed | "DeadLetters" >> WriteDeadLetters(s.failures_file)
        return manifest


# ------------------------------------------------------------------ planning
def estimate_shards(source: CellSource, sites: list[Site], splits: dict[str, int], target_mb: float) -> dict:
    """Shards per split from a deterministic sample of locations files (no full scan)."""
    if source.mode == "full_image":
        cells_per_site = len(full_image_centres(source.height, source.width, source.view_size))
    else:
        ordered = sorted(sites, key=_site_key)
        step = max(1, len(ordered) // 64)
        counts = []
        for site in ordered[::step][:64]:
            try:
                counts.append(len(read_locations(source.layout.locations_file(site.plate, site.well, site.site))))
            except (LocationsError, UnsafePathError):
                continue
        cells_per_site = float(np.mean(counts)) if counts else 0.0
    bytes_per_cell = source.box_size ** 2 * len(source.channels) + _RECORD_OVERHEAD_BYTES
    target = target_mb * 2**20
    return {split: max(1, math.ceil(n * cells_per_site * bytes_per_cell / target))
            for split, n in splits.items() if n}


def plan(layout: ProjectLayout, config: Config, sites: list[Site], fmt: str, compression: str,
         shard_mb: float) -> ExportSettings:
    source = CellSource.from_config(layout, config)
    partition = config.train.partition
    labels = tuple(sorted({site.value(partition.label_field) for site in sites}))
    settings = ExportSettings(
        source=source, label_field=partition.label_field, split_field=partition.split_field,
        training=partition.training or (), validation=partition.validation or (), labels=labels,
        compression=compression, fmt=fmt, fingerprint=config.fingerprint)
    per_split = {split: 0 for split in sc_records.SPLITS}
    for site in sites:
        per_split[settings.split_of(site)] += 1
    shards = estimate_shards(source, sites, per_split, shard_mb)
    return ExportSettings(**{**settings.__dict__, "shards": shards})


def run(settings: ExportSettings, beam_args=(), test_pipeline: beam.Pipeline | None = None) -> dict:
    pipeline = test_pipeline or beam.Pipeline(options=PipelineOptions(list(beam_args)))
    _ = pipeline | "ExportSingleCells" >> ExportSingleCells(settings, str(settings.layout.index_file))
    result = pipeline.run()
    result.wait_until_finish()
    return counter_values(result, NAMESPACE)


def run_command(context: CommandContext, args: argparse.Namespace, emit) -> int:
    config = context.load_config("export-sc")
    context = context.with_config_paths(config)
    sites = load_sites(context.layout.index_file, config, "export-sc")
    compression = "GZIP" if args.gzip else ""
    settings = plan(context.layout, config, sites, args.format, compression, args.shard_mb)
    with output_lock(settings.out, "export-sc"):
        return _export(settings, context, sites, args, emit)


def _export(settings: ExportSettings, context: CommandContext, sites: list[Site], args, emit) -> int:
    out = settings.out
    manifest = out / MANIFEST_NAME
    if manifest.exists() and not args.overwrite:
        emit(f"export-sc: a complete export is already at {out} ({manifest}); kept. "
             f"Use --overwrite to replace it.")
        return 0
    if out.exists() and out.iterdir():  # an empty folder (made by setup) is no export at all
        emit(f"export-sc: removing {'the earlier' if manifest.exists() else 'an incomplete'} export at {out}")
        out.remove(recursive=True)
    emit(f"export-sc: {len(sites)} site(s), {len(settings.labels)} label(s), format {settings.fmt}, "
         f"shards {settings.shards if settings.fmt == 'tfrecord' else '-'} -> {out}")
    counters = run(settings, context.beam_args)
    written = json.loads(manifest.read_text())
    failures = read_failures(settings.failures_file)
    emit(f"cells exported: {sum(written['counts'].values())} "
         f"(training {written['counts']['training']}, validation {written['counts']['validation']}, "
         f"other {written['counts']['other']}); per label: {written['counts_per_label']}")
    emit(f"sites read: {counters.get('sites_read', '?')}; cells skipped: {written['skipped']['outside']} "
         f"outside the image, {written['skipped']['nan']} with NaN")
    if written["sites_without_locations"]:
        emit(f"{len(written['sites_without_locations'])} site(s) have no locations file (no cells): "
             + ", ".join(written["sites_without_locations"][:10]))
    emit(f"index: {out / 'sc-metadata.parquet'}; montage: {out / 'montage.png'}; manifest: {manifest}")
    return report_failures(failures, settings.failures_file, emit)
