"""``dpbeam export-sc``: every cell cropped into TFRecord shards, with a Parquet index.

::

    ReadSites -> KeyByShard ((split, shard), site) --------+
    ShardCounts -> ShardKeys ((split, shard), None) -------+-> GroupByShard -> WriteShards --(failed)--> dead letters
                                                                                 | ShardRecord (the shard's commit)
                                                            CombineGlobally(ExportTotals) -> WriteExportCommit
                                                            (montage.png, sc-metadata.csv if small,
                                                             manifest.json written last)

Sites, not crops, are shuffled: each shard is written by one worker that reads
its sites in a fixed order, so shard contents are deterministic and crops never
cross the network. A shard commits itself (its file, its index part, then its
record in ``_shards/``); a re-run of an interrupted export writes only the
shards without a record. The export commits itself too: the last step builds
the manifest from the per-shard records (counts, never cell rows), so nothing
waits on the launcher and no worker holds more than one shard. With
``--format png`` each cell becomes DeepProfiler's PNG (channels side by side)
instead, grouped the same way. File names and the manifest are
``dpcore.sc_export``; the crop arithmetic is ``dpcore.crops``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterator

import apache_beam as beam
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from dpcore import sc_export, sc_records
from dpcore.config import Config
from dpcore.crops import full_image_centres
from dpcore.images import ImageReadError, decode_image, encode_png
from dpcore.layout import ProjectLayout, UnsafePathError
from dpcore.locations import LocationsError, LocationsMissing, read_locations
from dpcore.locking import output_lock
from dpcore.metadata import Site, scan_index
from dpcore.read_ahead import ReadAhead
from dpcore.sc_export import ExportPlan, ExportTotals, ShardRecord
from dpcore.single_cells import CellSource, stable_fraction, warm_up_cutting
from dpcore.storage import StoragePath, remove_stale_temporaries

from beam_pipelines.context import CommandContext
from beam_pipelines.dead_letter import WriteDeadLetters, failure, read_failures, report_failures
from beam_pipelines.index import ReadSites
from beam_pipelines.process_exit import skip_final_collection
from beam_pipelines.progress import OutputProgress, inc_counter
from beam_pipelines.running import PipelineRun, describe_graph, run_pipeline

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.export_sc"
_RECORD_OVERHEAD_BYTES = 200  # keys and proto framing beside the pixels


def split_named(value: str, training: tuple[str, ...], validation: tuple[str, ...]) -> str:
    """The split a site's ``train.partition.split_field`` value puts it in."""
    return "training" if value in training else "validation" if value in validation else "other"


@dataclass(frozen=True)
class ExportSettings:
    """The plan plus what the workers need to carry it out; small and picklable."""

    source: CellSource
    plan: ExportPlan
    training: tuple[str, ...]
    validation: tuple[str, ...]
    sites: int = 0  # in the index: sizes the local default parallelism (CommandContext.sized_for)

    @property
    def layout(self) -> ProjectLayout:
        return self.source.layout

    @property
    def out(self) -> StoragePath:
        return self.layout.single_cells_dir

    @property
    def labels(self) -> tuple[str, ...]:
        return self.plan.labels

    @property
    def montage_labels(self) -> tuple[str, ...]:
        return self.plan.labels[: sc_export.MONTAGE_LABELS]

    def split_of(self, site: Site) -> str:
        return split_named(site.value(self.plan.split_field), self.training, self.validation)

    def shard_of(self, site: Site) -> tuple[str, int]:
        split = self.split_of(site)
        return split, sc_export.shard_of_position(site.ordinal, int(self.plan.shards[split]))

    def shard_file(self, split: str, index: int) -> StoragePath:
        return self.out / sc_export.shard_file_name(split, index, int(self.plan.shards[split]), self.plan.compression)

    def index_part(self, split: str, index: int) -> StoragePath:
        return self.out / sc_export.INDEX_DIR / sc_export.index_part_name(split, index)

    def shard_record(self, split: str, index: int) -> StoragePath:
        return self.out / sc_export.SHARD_RECORDS_DIR / sc_export.shard_record_name(split, index)

    @property
    def failures_file(self) -> StoragePath:
        return self.out / sc_export.FAILURES_FILE


# ------------------------------------------------------------------ per site
def _site_key(site: Site) -> tuple:
    return site.plate, site.well, _natural(site.site)


def _natural(value: str) -> tuple:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def load_site(source: CellSource, site: Site) -> tuple[str, object]:
    """A site's reads, in any thread: ("ok", SiteData), ("missing", None) when it has no locations file,
    or ("locations" | "images", the error) naming what could not be read."""
    try:
        centres = source.centres(site)
    except LocationsMissing:
        return "missing", None
    except (LocationsError, UnsafePathError) as error:
        return "locations", error
    try:
        return "ok", source.load(site, centres)
    except (ImageReadError, UnsafePathError, LocationsError) as error:  # images, or an outline image
        return "images", error


class CellCutter:
    """Turns sites into cell records; failures and skips are collected, not raised."""

    def __init__(self, settings: ExportSettings):
        self.settings = settings
        self.failures: list[dict] = []
        self.missing_locations: list[str] = []
        self.skipped = {"outside": 0, "nan": 0}
        self.sites = 0

    def cells(self, site: Site, fetched: Future | None = None) -> Iterator[tuple[dict, np.ndarray]]:
        """(index row, uint8 crop) for every usable cell of ``site``; ``fetched`` holds what
        :func:`load_site` read for it ahead of time (else it is read now)."""
        s = self.settings
        self.sites += 1
        outcome, data = fetched.result() if fetched is not None else load_site(s.source, site)
        if outcome == "missing":
            inc_counter(NAMESPACE, "sites_without_locations")
            self.missing_locations.append(site.key)
            return
        if outcome in ("locations", "images"):
            self._fail(outcome, site, data)
            return
        cut = s.source.cut_loaded(data, as_bytes=True)  # quantised as they are cut (dpcore.crops.quantise)
        inc_counter(NAMESPACE, "sites_read")
        inc_counter(NAMESPACE, "cells_skipped_outside_image", cut.batch.outside)
        inc_counter(NAMESPACE, "cells_skipped_nan", cut.batch.invalid)
        self.skipped["outside"] += cut.batch.outside
        self.skipped["nan"] += cut.batch.invalid
        label_name = site.value(s.plan.label_field)
        split = s.split_of(site)
        crops = cut.batch.crops
        metadata = site.as_dict()
        for crop, cell_index in zip(crops, cut.batch.kept):
            x, y = (float(v) for v in cut.centres[cell_index])
            row = dict(metadata)
            row.update({"Nuclei_Location_Center_X": x, "Nuclei_Location_Center_Y": y,
                        "Cell_Index": int(cell_index), "Label": s.labels.index(label_name),
                        "Split_Set": split})
            yield row, crop

    def _fail(self, stage: str, site: Site, error: Exception) -> None:
        inc_counter(NAMESPACE, "sites_failed")
        self.failures.append(failure(stage, site.key, str(error)))


class WriteShard(beam.DoFn):
    """Cut a shard's sites in order, write the shard, its index part, and last its commit record.

    A shard whose record exists was committed by an earlier run: its record is
    passed on and nothing is recomputed.
    """

    # Sites whose images lie in a bucket are read this many ahead of the one being cut (dpcore.read_ahead).
    READ_AHEAD = 4

    def __init__(self, settings: ExportSettings):
        self.settings = settings

    def setup(self) -> None:
        skip_final_collection()
        # A worker process loads the crop kernel while its first sites are read (the launcher may not have).
        warm_up_cutting(self.settings.source.use_compressed)
        self._reader = ReadAhead(lambda site: load_site(self.settings.source, site), self.READ_AHEAD,
                                 name="dpbeam-WriteShard")

    def teardown(self) -> None:
        self._reader.close()

    def _sites_read(self, sites: list[Site]) -> Iterator[tuple[Site, Future]]:
        self._reader.discard()  # left over only by a shard that failed
        return self._reader.iterate(sites, ahead=self.settings.source.in_a_bucket)

    def process(self, element) -> Iterator:
        (split, index), members = element
        record = self._committed(split, index)
        if record is not None:
            inc_counter(NAMESPACE, "shards_already_committed")
        else:
            sites = sorted((m for m in members if m is not None), key=_site_key)
            record = self._write(split, index, sites)
        for failed in record.failures:
            yield beam.pvalue.TaggedOutput("failed", failed)
        yield record

    def _committed(self, split: str, index: int) -> ShardRecord | None:
        """The record of a shard an earlier run committed, if its file is still whole."""
        s = self.settings
        record_file = s.shard_record(split, index)
        if not record_file.exists():
            return None
        record = ShardRecord.from_json(record_file.read_text())
        if record.shard is not None:
            target = s.shard_file(split, index)
            if not target.exists() or target.size() != record.shard_bytes:
                logger.warning("shard %s changed after it was committed; writing it again", target)
                return None
        return record

    def _write(self, split: str, index: int, sites: list[Site]) -> ShardRecord:
        s = self.settings
        cutter = CellCutter(s)
        rows: list[dict] = []
        samples: list[tuple] = []
        if s.plan.format == "tfrecord":
            target = s.shard_file(split, index)
            offsets: list[int] = []

            def records() -> Iterator[bytes]:
                for site, fetched in self._sites_read(sites):
                    for row, crop in cutter.cells(site, fetched):
                        row.update({"Shard": target.name, "Record": len(rows)})
                        rows.append(row)
                        yield sc_records.encode(sc_records.CellRecord(
                            image=crop, label=row["Label"], label_name=site.value(s.plan.label_field),
                            split=split, split_value=site.value(s.plan.split_field), plate=site.plate,
                            well=site.well, site=site.site, cell_index=row["Cell_Index"],
                            center_x=row["Nuclei_Location_Center_X"], center_y=row["Nuclei_Location_Center_Y"]))

            written = sc_records.write_shard(target, records(), s.plan.compression,
                                             on_record=lambda offset, _: offsets.append(offset))
            shard_name, shard_bytes = target.name, target.size()
            for row in rows:
                samples.append((stable_fraction(f"{row['Metadata_Plate']}/{row['Metadata_Well']}-"
                                                f"{row['Metadata_Site']}/{row['Cell_Index']}"),
                                s.labels[row["Label"]], [row["Record"], offsets[row["Record"]]]))
        else:
            for site, fetched in self._sites_read(sites):
                for row, crop in cutter.cells(site, fetched):
                    name = f"{site.plate}/{site.well}-{site.site}-{row['Cell_Index']:05d}.png"
                    unfolded = np.concatenate([crop[:, :, c] for c in range(crop.shape[-1])], axis=1)
                    s.out.joinpath(*name.split("/")).write_bytes(encode_png(unfolded))
                    row["Image_Name"] = name
                    rows.append(row)
                    samples.append((stable_fraction(f"{site.key}/{row['Cell_Index']}"),
                                    s.labels[row["Label"]], name))
            written, shard_name, shard_bytes = len(rows), None, 0
        if rows:
            buffer = io.BytesIO()
            pd.DataFrame(rows).to_parquet(buffer, index=False)
            s.index_part(split, index).write_bytes(buffer.getvalue())
        per_label: dict[str, int] = {}
        for row in rows:
            per_label[s.labels[row["Label"]]] = per_label.get(s.labels[row["Label"]], 0) + 1
        record = ShardRecord(
            split=split, index=index, shard=shard_name, shard_bytes=shard_bytes, sites=cutter.sites, cells=written,
            cells_per_label=per_label, skipped=dict(cutter.skipped),
            sites_without_locations=sorted(cutter.missing_locations), failures=cutter.failures,
            samples=sc_export.smallest_per_label(samples, labels=s.montage_labels))
        s.shard_record(split, index).write_text(record.to_json())  # the shard is committed here
        inc_counter(NAMESPACE, "cells_exported", written)
        inc_counter(NAMESPACE, "shards_written")
        return record


# --------------------------------------------------------------- publishing
class ExportTotalsFn(beam.CombineFn):
    """Shard records -> export totals; bounded (counts and a few samples), order-independent."""

    def __init__(self, montage_labels: tuple[str, ...]):
        self.montage_labels = montage_labels

    def create_accumulator(self) -> ExportTotals:
        return ExportTotals()

    def add_input(self, totals: ExportTotals, record: ShardRecord) -> ExportTotals:
        return totals.add(record, self.montage_labels)

    def merge_accumulators(self, accumulators) -> ExportTotals:
        merged = ExportTotals()
        for totals in accumulators:
            merged.merge(totals, self.montage_labels)
        return merged

    def extract_output(self, totals: ExportTotals) -> ExportTotals:
        return totals


MONTAGE_MARK = (255, 40, 40)  # the cross at each crop's centre: where the target nucleus must be


def montage(samples: list, channels: tuple[str, ...], labels: tuple[str, ...]) -> bytes:
    """One row per sampled crop, one column per channel, grouped by label, with captions.

    A red cross marks the centre of every crop, where its own nucleus must sit: crops hold several
    nuclei, and the mark is how a person checks centring (and a box too small or too large) by eye.
    """
    if not samples:
        return b""
    box = samples[0][2].shape[0]
    caption = 14
    rows = sorted(samples, key=lambda s: (labels.index(s[1]), s[0]))
    canvas = Image.new("RGB", (len(channels) * box, caption + len(rows) * (box + caption)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for c, channel in enumerate(channels):
        draw.text((c * box + 2, 1), channel, fill=(255, 255, 0))
    arm = max(2, box // 16)
    for r, (_, label, crop) in enumerate(rows):
        top = caption + r * (box + caption)
        draw.text((2, top + 1), label, fill=(255, 255, 255))
        for c in range(len(channels)):
            canvas.paste(Image.fromarray(crop[:, :, c]).convert("RGB"), (c * box, top + caption))
            x, y = c * box + box // 2, top + caption + box // 2
            draw.line((x - arm, y, x + arm, y), fill=MONTAGE_MARK)
            draw.line((x, y - arm, x, y + arm), fill=MONTAGE_MARK)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


class WriteExportCommit(beam.DoFn):
    """Publish the montage, DeepProfiler's CSV index (small exports), and last the manifest."""

    def __init__(self, settings: ExportSettings):
        self.settings = settings

    def process(self, totals: ExportTotals, dead_letter_files: list[str]) -> Iterator[str]:
        s = self.settings
        cells = sum(totals.counts.values())
        picture = montage(self._sample_crops(totals.samples), s.source.channels, s.labels)
        if picture:
            (s.out / sc_export.MONTAGE_NAME).write_bytes(picture)
        write_csv = cells <= sc_export.CSV_MAX_CELLS
        if write_csv:
            self._write_csv()
        else:
            logger.info("%d cells: no %s (above %d cells); read %s", cells, sc_export.INDEX_CSV,
                        sc_export.CSV_MAX_CELLS, s.out / sc_export.INDEX_DIR)
        manifest = sc_export.manifest_from(s.plan, totals, index_csv=write_csv)
        # Every shard is committed (this step follows them all): a temporary file left in the export now is
        # from an attempt the runner abandoned (a killed worker's half-written shard), so it goes.
        remove_stale_temporaries(s.out, beam_sink_folders=False)
        (s.out / sc_export.MANIFEST_NAME).write_text(_json(manifest))  # the export is committed here
        inc_counter(NAMESPACE, "exports_committed")
        yield str(s.out / sc_export.MANIFEST_NAME)

    def _sample_crops(self, samples: list) -> list[tuple[float, str, np.ndarray]]:
        s = self.settings
        box, channels = s.source.box_size, len(s.source.channels)
        crops = []
        for fraction, label, split, index, where in samples:
            if s.plan.format == "tfrecord":
                data = sc_records.read_record_at(s.shard_file(split, index), int(where[1]), s.plan.compression)
                crop = sc_records.decode_image(data, box, channels)
            else:
                unfolded = decode_image(s.out.joinpath(*where.split("/")).read_bytes(), where)
                crop = np.stack(np.split(unfolded, channels, axis=1), axis=-1)
            crops.append((fraction, label, crop))
        return crops

    def _write_csv(self) -> None:
        """Concatenate the index parts into one CSV, one part in memory at a time."""
        s = self.settings
        parts = sorted((s.out / sc_export.INDEX_DIR).glob("part-*.parquet"), key=lambda p: p.name)
        with (s.out / sc_export.INDEX_CSV).atomic_writer("w") as handle:
            header = True
            for part in parts:
                frame = pd.read_parquet(io.BytesIO(part.read_bytes()))
                handle.write(frame.to_csv(index=False, header=header, lineterminator="\n"))
                header = False


def _json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def _shard_keys(shards: dict) -> list[tuple[tuple[str, int], None]]:
    return [((split, i), None) for split, n in sorted(shards.items()) for i in range(int(n))]


@dataclass
class ExportSingleCells(beam.PTransform):
    settings: ExportSettings
    index_path: str

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        s = self.settings
        # Each site is numbered within its split as the index is read: its shard comes from that number.
        read = pbegin | "ReadSites" >> ReadSites(self.index_path, s.source.channels, number_by=s.split_of)
        keyed = read["sites"] | "KeyByShard" >> beam.Map(lambda site: (s.shard_of(site), site))
        # Every shard is written, even one no site falls into; the keys are made on a worker,
        # so a screen's million shards never enter the job graph.
        every_shard = (
            pbegin
            | "ShardCounts" >> beam.Create([dict(s.plan.shards)])
            | "ShardKeys" >> beam.FlatMap(_shard_keys)
        )
        written = (
            (keyed, every_shard)
            | "AllShardMembers" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShard(s)).with_outputs("failed", main="records")
        )
        dead_letters = ((read["failed"], written.failed) | "AllFailures" >> beam.Flatten()
                        | "DeadLetters" >> WriteDeadLetters(s.failures_file))
        # The dead-letter file is a side input of the commit only to order them: when the manifest
        # appears, the export is complete, its failure file included (a detached caller reads both).
        return (
            written.records
            | "AddUpShards" >> beam.CombineGlobally(ExportTotalsFn(s.montage_labels))
            | "WriteExportCommit" >> beam.ParDo(WriteExportCommit(s), beam.pvalue.AsList(dead_letters))
        )


# ------------------------------------------------------------------ planning
def estimate_shards(source: CellSource, sample: list[Site], sites_per_split: dict[str, int],
                    split_of: Callable[[Site], str], target_mb: float,
                    min_shards: int = sc_export.MIN_SHARDS) -> dict:
    """Shards per split (:func:`dpcore.sc_export.shard_counts`), the bytes of each split estimated from the
    cells of a deterministic sample of locations files (no full scan), per split: their treatments may
    leave the sites of one split with fewer cells than another's."""
    if source.mode == "full_image":
        cells = {split: float(len(full_image_centres(source.height, source.width, source.view_size)))
                 for split in sites_per_split}
    else:
        counted: dict[str, list[int]] = {}
        for site in sample:
            try:
                n = len(read_locations(source.layout.locations_file(site.plate, site.well, site.site)))
            except (LocationsError, UnsafePathError):
                continue
            counted.setdefault(split_of(site), []).append(n)
        everywhere = [n for counts in counted.values() for n in counts]
        overall = float(np.mean(everywhere)) if everywhere else 0.0
        cells = {split: float(np.mean(counted[split])) if counted.get(split) else overall
                 for split in sites_per_split}
    bytes_per_cell = source.box_size ** 2 * len(source.channels) + _RECORD_OVERHEAD_BYTES
    bytes_per_split = {split: n * cells[split] * bytes_per_cell for split, n in sites_per_split.items()}
    return sc_export.shard_counts(sites_per_split, bytes_per_split, target_mb * 2**20, min_shards)


def plan(layout: ProjectLayout, config: Config, index: StoragePath, fmt: str, compression: str,
         shard_mb: float, min_shards: int = sc_export.MIN_SHARDS) -> ExportSettings:
    """Plan the export from one streaming pass over the index (memory independent of its length)."""
    partition = config.train.partition
    scan = scan_index(index, config, "export-sc", count_columns=(partition.label_field, partition.split_field))
    source = CellSource.from_config(layout, config)
    training, validation = tuple(partition.training or ()), tuple(partition.validation or ())
    per_split = {split: 0 for split in sc_records.SPLITS}
    for value, n in scan.values[partition.split_field].items():
        per_split[split_named(value, training, validation)] += n
    export_plan = ExportPlan(
        format=fmt, compression=compression, config_fingerprint=config.fingerprint,
        labels=tuple(sorted(scan.values[partition.label_field])),
        shards=estimate_shards(source, scan.sampled_sites(), per_split,
                               lambda site: split_named(site.value(partition.split_field), training, validation),
                               shard_mb, min_shards),
        box_size=source.box_size, channels=tuple(source.channels), label_field=partition.label_field,
        split_field=partition.split_field)
    return ExportSettings(source=source, plan=export_plan, training=training, validation=validation,
                          sites=scan.sites)


def build(pipeline: beam.Pipeline, settings: ExportSettings) -> None:
    _ = pipeline | "ExportSingleCells" >> ExportSingleCells(settings, str(settings.layout.index_file))


def run_command(context: CommandContext, args: argparse.Namespace, emit) -> int:
    config = context.load_config("export-sc")
    if context.workers_in_this_process:  # the crop kernel loads while the index is planned
        warm_up_cutting(config.prepare.compression.implement)
    context = context.with_config_paths(config)
    settings = plan(context.layout, config, context.layout.index_file, args.format, "GZIP" if args.gzip else "",
                    args.shard_mb, args.min_shards)
    context = context.sized_for(settings.sites)
    if args.dry_run:
        for line in describe_graph(lambda pipeline: build(pipeline, settings), context.beam_args):
            emit(line)
        emit(f"dry run: {len(settings.labels)} label(s), shards {settings.plan.shards} -> {settings.out}")
        return 0
    with output_lock(settings.out, "export-sc"):
        return _export(settings, context, args, emit)


def _export(settings: ExportSettings, context: CommandContext, args, emit) -> int:
    out = settings.out
    manifest = out / sc_export.MANIFEST_NAME
    earlier = sc_export.read_plan(out)
    if manifest.exists() and not args.overwrite:
        note = "" if earlier == settings.plan else " It was made with other settings than the current ones."
        emit(f"export-sc: a complete export is already at {out} ({manifest}); kept.{note} "
             f"Use --overwrite to replace it.")
        return 0
    if args.overwrite or earlier != settings.plan:
        if out.exists() and out.iterdir():  # an empty folder (made by setup) is no export at all
            why = ("--overwrite" if args.overwrite else
                   "it was started with other settings" if earlier else "it has no plan")
            emit(f"export-sc: removing the {'earlier' if manifest.exists() else 'incomplete'} export at {out} ({why})")
            out.remove(recursive=True)
        (out / sc_export.PLAN_NAME).write_text(settings.plan.to_json())
        resumed = 0
    else:
        resumed = len(sc_export.committed_shards(out))
    total_shards = sum(int(n) for n in settings.plan.shards.values())
    emit(f"export-sc: {len(settings.labels)} label(s), format {settings.plan.format}, shards "
         f"{settings.plan.shards} -> {out}"
         + (f"; resuming: {resumed} of {total_shards} shard(s) committed by an earlier run" if resumed else ""))
    progress = OutputProgress("export-sc", [out / sc_export.SHARD_RECORDS_DIR], ".json", "shards", total_shards - resumed)
    run = run_pipeline(lambda pipeline: build(pipeline, settings), context.beam_args, NAMESPACE,
                       detach=getattr(args, "detach", False), commit=manifest, progress=progress)
    if run.detached:
        emit(run.detached_message)
        return 0
    return _summary(settings, run, emit)


def _summary(settings: ExportSettings, run: PipelineRun, emit) -> int:
    out = settings.out
    written = sc_export.read_manifest(out)
    counters = run.counters
    emit(f"cells exported: {sum(written['counts'].values())} "
         f"(training {written['counts']['training']}, validation {written['counts']['validation']}, "
         f"other {written['counts']['other']}); per label: {written['counts_per_label']}")
    emit(f"shards written this run: {counters.get('shards_written', 0)}; committed earlier and kept: "
         f"{counters.get('shards_already_committed', 0)}")
    emit(f"sites read: {counters.get('sites_read', 0)}; cells skipped: {written['skipped']['outside']} "
         f"outside the image, {written['skipped']['nan']} with NaN")
    if written["sites_without_locations_count"]:
        emit(f"{written['sites_without_locations_count']} site(s) have no locations file (no cells): "
             + ", ".join(written["sites_without_locations"][:10]))
    csv = f" and {out / written['index_csv']}" if written.get("index_csv") else ""
    emit(f"index: {out / sc_export.INDEX_DIR}/ (Parquet dataset){csv}; montage: {out / sc_export.MONTAGE_NAME}; "
         f"manifest: {out / sc_export.MANIFEST_NAME}")
    return report_failures(read_failures(settings.failures_file), settings.failures_file, emit)

