"""``dpbeam prepare``: illumination statistics and compression as a Beam pipeline.

::

    ReadSites -> ReadSiteContributions --(failed)------------------------------> dead letters
                                  | (plate, accumulator)
                             CombinePerKey(PlateIlluminationCombineFn)
                                  |
                             WritePlateStatistics  -> outputs/intensities/<plate>/<plate>.npz + pictures
                                  | (plate, npz path)  [side input]
    sites ------------------> CompressSite ------(failed)-----------------------> dead letters
                                  | (plate, control histogram)
                             CombinePerKey(sum) -> FinalizePlate -> npz with controls_distribution,
                                                                    <plate>/prepare.json (commit marker)

The arithmetic lives in ``dpcore.illumination`` and ``dpcore.compression``.
Commits: a plate's statistics when its ``.npz`` is renamed into place, an image
when its PNG is, a plate when ``prepare.json`` is written last: every commit is
a step of the pipeline. A re-run skips committed plates and images unless
``--overwrite``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np

from dpcore.charts import illumination_functions
from dpcore.compression import compress_channel, control_histogram
from dpcore.config import Config
from dpcore.features import index_stem
from dpcore.illumination import (PlateAccumulator, compute_statistics, few_images_warning, merge_accumulators,
                                 read_statistics, site_contribution, write_statistics)
from dpcore.images import ImageReadError, decode_image, encode_png
from dpcore.layout import ProjectLayout, UnsafePathError
from dpcore.locking import output_lock
from dpcore.loaddata import illumination_column
from dpcore.metadata import Site, iter_index_chunks, scan_index
from dpcore.sites import compressed_image_paths, in_a_bucket, raw_image_paths, read_images, read_stack
from dpcore.storage import StoragePath, remove_stale_temporaries

from beam_pipelines.context import CommandContext, UsageError
from beam_pipelines.dead_letter import WriteDeadLetters, failure, read_failures, report_failures
from beam_pipelines.index import ReadSites
from beam_pipelines.progress import OutputProgress, ZeroForMissing, inc_counter
from beam_pipelines.read_ahead import ReadAheadDoFn
from beam_pipelines.running import describe_graph, run_pipeline

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.prepare"
MANIFEST_NAME = "prepare.json"
RUNS_DIR = "_runs"


@dataclass(frozen=True)
class PrepareSettings:
    """The config fields prepare uses, small and picklable for the workers."""

    layout: ProjectLayout
    channels: tuple[str, ...]
    bits: int
    height: int
    width: int
    down_scale_factor: float
    median_filter_size: int
    compress: bool
    scaling_factor: float
    label_field: str | None
    control_value: str | None
    overwrite: bool = False
    # "deepprofiler" (computed here) or "cellprofiler": divide by the plate's CellProfiler functions,
    # ``cellprofiler_functions[plate]`` = one .npy URL per channel (the index's Illum_<channel> columns).
    functions: str = "deepprofiler"
    cellprofiler_functions: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, layout: ProjectLayout, config: Config, overwrite: bool = False) -> "PrepareSettings":
        images = config.dataset.images
        illumination = config.prepare.illumination_correction
        compression = config.prepare.compression
        return cls(layout=layout, channels=config.channels, bits=images.bits, height=images.height,
                   width=images.width, down_scale_factor=illumination.down_scale_factor,
                   median_filter_size=illumination.median_filter_size, compress=compression.implement,
                   scaling_factor=compression.scaling_factor, label_field=config.dataset.metadata.label_field,
                   control_value=config.dataset.metadata.control_value, overwrite=overwrite,
                   functions=illumination.functions)

    @property
    def fingerprint(self) -> dict:
        """The settings a plate's outputs depend on, recorded in its manifest."""
        values = asdict(self)
        for transient in ("layout", "overwrite", "cellprofiler_functions"):  # the plate's own go to its manifest
            values.pop(transient)
        values["channels"] = list(self.channels)
        return values

    def plate_dir(self, plate: str) -> StoragePath:
        return self.layout.intensities_file(plate).parent

    def manifest(self, plate: str) -> StoragePath:
        return self.plate_dir(plate) / MANIFEST_NAME

    def compressed_plate_dir(self, plate: str) -> StoragePath:
        return self.layout.compressed_images_dir / plate

    def picture(self, plate: str, channel: str) -> StoragePath:
        return self.plate_dir(plate) / f"{plate}_illumination_{channel}.png"

    def site_pngs(self, site: Site) -> list[StoragePath]:
        return compressed_image_paths(self.layout, site)

    def is_control(self, site: Site) -> bool:
        if not self.label_field or self.control_value is None:
            return False
        return site.as_dict().get(self.label_field) == self.control_value

    @property
    def failures_file(self) -> StoragePath:
        return self.layout.prepare_failures_file

    def run_record(self, index: StoragePath) -> StoragePath:
        """Written by a run's last step, after every plate's commit and the dead-letter file."""
        return self.layout.intensities_dir / RUNS_DIR / f"{index_stem(index)}.json"


# ------------------------------------------------------------ earlier outputs
class ClearPlateOutputs(beam.DoFn):
    """Remove what an earlier run published for a plate whose statistics this run computes afresh.

    Its PNGs were made with the earlier illumination function: kept, a site that fails now would keep
    them under their final names and export-sc would crop them as if current. The commit marker goes
    first, so a crash half-way leaves a plate that is not complete, never a complete one with a mix.
    Plates resumed from committed statistics are not cleared (their PNGs match those statistics).
    """

    def __init__(self, settings: PrepareSettings):
        self.settings = settings

    def process(self, plate: str) -> Iterator[str]:
        s = self.settings
        earlier = [s.manifest(plate), s.layout.intensities_file(plate)]
        earlier += [s.picture(plate, channel) for channel in s.channels]
        removed = 0
        for path in earlier:
            if path.exists():
                path.remove()
                removed += 1
        pngs = s.compressed_plate_dir(plate)
        if pngs.exists():
            removed += len(pngs.glob("*.png"))
            pngs.remove(recursive=True)
        if removed:
            inc_counter(NAMESPACE, "earlier_files_removed", removed)
            logger.info("plate %s: removed %d file(s) of an earlier run before recomputing it", plate, removed)
        yield plate


# ---------------------------------------------------------------- statistics
class ReadSiteContribution(ReadAheadDoFn):
    """Read a site's channels and reduce them at once to its statistics contribution.

    Images in an object store are read ahead (``ReadAheadDoFn``: up to 4 sites of a bundle at once, each
    site's channels concurrently too, see ``dpcore.sites``); their outputs still come in the bundle's order.
    Local images are read in turn.
    """

    def __init__(self, settings: PrepareSettings):
        self.settings = settings

    def process(self, site: Site, cleared_plates: list | None = None) -> Iterator:
        del cleared_plates  # only orders this step after the clearing of earlier outputs
        yield from self.read_ahead(site)

    def reads_ahead(self, site: Site) -> bool:
        return in_a_bucket(lambda: raw_image_paths(self.settings.layout, site))

    def emit(self, site: Site, fetched) -> Iterator:
        return self._outputs(fetched.result())

    def fetch(self, site: Site) -> tuple:
        """("ok", plate, contribution, images) or ("failed", record): no Beam call, so any thread may run it."""
        s = self.settings
        try:
            paths = raw_image_paths(s.layout, site)
            stack = read_stack(paths, (s.height, s.width))
        except (ImageReadError, UnsafePathError) as error:
            return "failed", failure("statistics", site.key, str(error))
        return "ok", site.plate, site_contribution(stack, s.bits, s.down_scale_factor, source=str(paths[0])), len(paths)

    @staticmethod
    def _outputs(result: tuple) -> Iterator:
        """The outputs and counters of one site's read, in the DoFn's own thread (Beam's metrics need it)."""
        if result[0] == "failed":
            inc_counter(NAMESPACE, "sites_failed")
            yield beam.pvalue.TaggedOutput("failed", result[1])
        else:
            _, plate, contribution, images = result
            inc_counter(NAMESPACE, "images_read", images)
            yield plate, contribution


class PlateIlluminationCombineFn(beam.CombineFn):
    """Per-plate statistics: every step is an exact, order-independent sum."""

    def create_accumulator(self) -> PlateAccumulator:
        return PlateAccumulator()

    def add_input(self, accumulator: PlateAccumulator, contribution: PlateAccumulator) -> PlateAccumulator:
        return merge_accumulators([accumulator, contribution])

    def merge_accumulators(self, accumulators: Iterable[PlateAccumulator]) -> PlateAccumulator:
        return merge_accumulators(accumulators)

    def extract_output(self, accumulator: PlateAccumulator) -> PlateAccumulator:
        return accumulator


class WritePlateStatistics(beam.DoFn):
    """Derive the plate's statistics, publish its ``.npz`` and illumination pictures."""

    def __init__(self, settings: PrepareSettings):
        self.settings = settings

    def process(self, element: tuple[str, PlateAccumulator]) -> Iterator:
        plate, accumulator = element
        s = self.settings
        try:
            stats = compute_statistics(plate, s.channels, accumulator, s.median_filter_size)
            if s.functions == "cellprofiler":  # CellProfiler's functions; the histogram statistics stay ours
                stats = replace(stats, illum_correction_function=cellprofiler_functions(
                    s.cellprofiler_functions[plate], (s.height, s.width)))
        except (ValueError, OSError) as error:
            yield beam.pvalue.TaggedOutput("failed", failure("statistics", f"plate {plate}", str(error)))
        else:
            yield self._publish(plate, stats)

    def _publish(self, plate: str, stats) -> tuple[str, str]:
        s = self.settings
        warning = few_images_warning(plate, stats.image_count)  # the launcher printed it; drawn on the pictures
        pictures = illumination_functions(stats.illum_correction_function, plate, s.channels, stats.image_count,
                                          warning)
        for channel, picture in zip(s.channels, pictures):
            s.picture(plate, channel).write_bytes(picture)
        path = s.layout.intensities_file(plate)
        write_statistics(path, stats)  # the plate's statistics are committed here
        inc_counter(NAMESPACE, "plates_computed")
        logger.info("plate %s: statistics of %d site(s) written to %s", plate, stats.image_count, path)
        return plate, str(path)


def cellprofiler_functions(urls: Iterable[str], shape: tuple[int, int]) -> np.ndarray:
    """The plate's CellProfiler illumination functions as an (H, W, C) stack: images are divided by them
    (CellProfiler's CorrectIlluminationApply "Divide", as Distributed-DeepProfiler applies them)."""
    functions = []
    for url in urls:
        path = StoragePath(url)
        try:
            function = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
        except FileNotFoundError as error:
            raise ValueError(f"{path}: CellProfiler illumination function not found") from error
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a NumPy .npy array ({error})") from error
        if function.shape != tuple(shape):
            raise ValueError(f"{path}: CellProfiler illumination function is {'x'.join(map(str, function.shape))}"
                             f", the images are {shape[0]}x{shape[1]} (height x width)")
        if not (np.isfinite(function).all() and (function > 0).all()):
            raise ValueError(f"{path}: CellProfiler illumination function has zero, negative or non-finite values")
        functions.append(function.astype(np.float64))
    return np.stack(functions, axis=-1)


def plates_cellprofiler_functions(index: StoragePath, channels: tuple[str, ...], plates: Iterable[str]) -> dict:
    """plate -> one function URL per channel, from the index's Illum_<channel> columns (one per plate).

    Raises ValueError naming the index, the plate and the column when a function is missing, differs
    between a plate's sites, or its file does not exist.
    """
    columns = [illumination_column(channel) for channel in channels]
    found: dict[str, tuple] = {}
    for chunk in iter_index_chunks(index):
        missing = [c for c in columns if c not in chunk.columns]
        if missing:
            raise ValueError(f"{index}: no column {', '.join(missing)}; prepare --illumination cellprofiler "
                             f"reads each plate's CellProfiler functions there (import-loaddata writes them from "
                             f"a load_data_with_illum.csv)")
        for plate, group in chunk.groupby(chunk["Metadata_Plate"].astype(str)):
            values = group[columns].astype(str)
            distinct = values.drop_duplicates()
            if len(distinct) > 1 or (plate in found and found[plate] != tuple(distinct.iloc[0])):
                raise ValueError(f"{index}: plate {plate} names several CellProfiler functions for one channel "
                                 f"(a plate has one function per channel)")
            found[plate] = tuple(distinct.iloc[0])
    result = {}
    for plate in plates:
        urls = found[plate]
        for column, url in zip(columns, urls):
            if not url.strip() or url == "nan":
                raise ValueError(f"{index}: plate {plate} has no {column}")
        result[plate] = tuple(urls)
    return result


# --------------------------------------------------------------- compression
@dataclass
class SiteToCompress:
    """What compressing a site reads: its plate's statistics, the PNGs an earlier run committed (None where
    still to do) and the raw images of the channels still to do."""

    statistics: object
    targets: list[StoragePath]
    compressed: list[np.ndarray | None]
    raw: dict[int, np.ndarray]


class CompressSite(ReadAheadDoFn):
    """Correct, compress and publish a site's channel PNGs; emit its control histogram.

    Every channel still to do is read before any PNG is written, so a site with
    one unreadable channel fails whole instead of leaving half its PNGs behind.
    Images in an object store are read ahead (``ReadAheadDoFn``) while earlier sites are compressed.
    """

    # Plates' functions are tens of MB each: keep only the last few per DoFn instance.
    CACHED_PLATES = 4

    def __init__(self, settings: PrepareSettings, resumed_plates: frozenset[str]):
        self.settings = settings
        # Only a plate whose statistics were committed by an earlier run can have PNGs made with them
        # (--overwrite resumes none).
        self.resumed_plates = resumed_plates

    def setup(self) -> None:
        super().setup()
        self._statistics: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()  # fetch runs in several threads

    def _plate_statistics(self, path: str):
        with self._lock:
            if path in self._statistics:
                self._statistics.move_to_end(path)
            else:
                self._statistics[path] = read_statistics(StoragePath(path))
                while len(self._statistics) > self.CACHED_PLATES:
                    self._statistics.popitem(last=False)
            return self._statistics[path]

    def process(self, site: Site, ready_plates: dict) -> Iterator:
        yield from self.read_ahead(site, ready_plates)

    def reads_ahead(self, site: Site) -> bool:
        return in_a_bucket(lambda: raw_image_paths(self.settings.layout, site))

    def fetch(self, site: Site, ready_plates: dict) -> SiteToCompress | None:
        if site.plate not in ready_plates:  # reported once per plate, not per site
            return None
        s = self.settings
        statistics = self._plate_statistics(ready_plates[site.plate])
        targets = s.site_pngs(site)
        trusted = site.plate in self.resumed_plates
        compressed = [self._committed(target) if trusted else None for target in targets]
        todo = [c for c, done in enumerate(compressed) if done is None]
        images = read_images([s.layout.image_file(site.channel_files[c]) for c in todo], (s.height, s.width))
        return SiteToCompress(statistics, targets, compressed, dict(zip(todo, images)))

    def emit(self, site: Site, fetched, ready_plates: dict) -> Iterator:
        try:
            to_compress = fetched.result()
            if to_compress is not None:
                yield site.plate, self._compress(site, to_compress)
        except (ImageReadError, UnsafePathError) as error:
            inc_counter(NAMESPACE, "sites_failed")
            reason = str(error) + self._remove_earlier_pngs(site)
            yield beam.pvalue.TaggedOutput("failed", failure("compression", site.key, reason))

    def _remove_earlier_pngs(self, site: Site) -> str:
        """A failed site has no PNG under a final name: none from an earlier run either."""
        try:
            removed = [path for path in self.settings.site_pngs(site) if path.exists()]
        except UnsafePathError:
            return ""
        for path in removed:
            path.remove()
        if not removed:
            return ""
        inc_counter(NAMESPACE, "earlier_files_removed", len(removed))
        return f"; its {len(removed)} PNG(s) from an earlier run were removed"

    def _compress(self, site: Site, read: SiteToCompress) -> np.ndarray:
        s = self.settings
        stats, compressed = read.statistics, list(read.compressed)
        for c, image in read.raw.items():
            compressed[c] = compress_channel(image, stats.illum_correction_function[:, :, c], s.scaling_factor,
                                             float(stats.upper_percentiles[c]))
            read.targets[c].write_bytes(encode_png(compressed[c]))  # the image is committed here
        inc_counter(NAMESPACE, "pngs_written", len(read.raw))
        inc_counter(NAMESPACE, "pngs_already_committed", len(read.targets) - len(read.raw))
        histograms = np.zeros((len(s.channels), 256), dtype=np.float64)
        if s.is_control(site):
            inc_counter(NAMESPACE, "control_sites")
            histograms = np.stack([control_histogram(image) for image in compressed])
        return histograms

    @staticmethod
    def _committed(target: StoragePath) -> np.ndarray | None:
        """The PNG an earlier run published (re-read: its histogram may be needed), or None.

        A PNG only exists under its final name once complete, so one that does not
        decode was damaged later; it is recomputed rather than trusted.
        """
        try:
            return decode_image(target.read_bytes(), str(target)) if target.exists() else None
        except ImageReadError:
            return None


class FinalizePlate(beam.DoFn):
    """Store the controls distribution, then write the plate's commit marker."""

    def __init__(self, settings: PrepareSettings):
        self.settings = settings

    def process(self, element: tuple[str, np.ndarray | None], ready_plates: dict) -> Iterator:
        plate, controls = element
        s = self.settings
        path = ready_plates[plate]
        stats = read_statistics(StoragePath(path))
        if s.compress:
            stats = replace(stats, controls_distribution=np.asarray(controls, dtype=np.float64))
            write_statistics(StoragePath(path), stats)
        manifest = {"plate": plate, "images_per_channel": stats.image_count, "compressed": s.compress,
                    "settings": s.fingerprint}
        if s.functions == "cellprofiler":
            manifest["cellprofiler_functions"] = dict(zip(s.channels, s.cellprofiler_functions[plate]))
        # Every PNG of the plate is written (this step follows them all): a temporary file left in the
        # plate's folders now is from an attempt the runner abandoned (a lost worker), so it goes.
        remove_stale_temporaries(s.compressed_plate_dir(plate), beam_sink_folders=False)
        remove_stale_temporaries(s.plate_dir(plate), beam_sink_folders=False)
        s.manifest(plate).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        inc_counter(NAMESPACE, "plates_committed")
        yield plate


class WriteRunRecord(beam.DoFn):
    """The run's last step: what it committed and how many records failed, once both are final.

    Plates commit one by one (``prepare.json``); a detached caller needs one file that appears when the
    whole run, dead letters included, is done. It is removed by the launcher before the job starts, so
    one left by an earlier run never passes for this run's.
    """

    def __init__(self, settings: PrepareSettings, index: str, plates: list[str]):
        self.settings, self.index, self.plates = settings, index, plates

    def process(self, _, committed: list[str], failure_files: list[str]) -> Iterator[str]:
        del failure_files  # only orders this step after the dead-letter file
        s = self.settings
        # Names, not paths: the record of the same work is the same file under any root.
        record = {"index": StoragePath(self.index).name, "plates": self.plates,
                  "plates_committed": sorted(committed), "failures": len(read_failures(s.failures_file)),
                  "failures_file": s.failures_file.relative_to(s.layout.intensities_dir), "settings": s.fingerprint}
        target = s.run_record(StoragePath(self.index))
        target.write_text(json.dumps(record, indent=2, sort_keys=True))
        yield str(target)


def _plates_without_statistics(plate: str, ready_plates: dict) -> Iterator[dict]:
    if plate not in ready_plates:
        yield failure("statistics", f"plate {plate}", "no readable image in this plate: no statistics")


# ------------------------------------------------------------------ transform
@dataclass
class PreparePlates(beam.PTransform):
    """The whole prepare dataflow for the plates in ``plates``.

    ``resume_plates`` maps plates whose statistics an earlier run committed to
    their ``.npz``: their statistics are loaded, not recomputed.
    """

    settings: PrepareSettings
    index_path: str
    plates: frozenset[str]
    resume_plates: dict

    def __post_init__(self):
        super().__init__()
        if not self.plates:
            raise ValueError("PreparePlates needs at least one plate to process")

    def expand(self, pbegin):
        s = self.settings
        read = pbegin | "ReadSites" >> ReadSites(self.index_path, s.channels)
        sites = read["sites"] | "PlatesToProcess" >> beam.Filter(lambda site, plates: site.plate in plates,
                                                                 self.plates)
        fresh_plates = sorted(self.plates - frozenset(self.resume_plates))
        cleared = (
            pbegin
            | "PlatesComputedAfresh" >> beam.Create(fresh_plates)
            | "ClearEarlierOutputs" >> beam.ParDo(ClearPlateOutputs(s))
        )
        contributions = (
            sites
            | "SitesNeedingStatistics" >> beam.Filter(lambda site, done: site.plate not in done,
                                                      frozenset(self.resume_plates))
            | "ReadSiteContributions" >> beam.ParDo(ReadSiteContribution(s), beam.pvalue.AsList(cleared))
            .with_outputs("failed", main="ok")
        )
        computed = (
            contributions.ok
            | "CombinePlateStatistics" >> beam.CombinePerKey(PlateIlluminationCombineFn())
            | "WritePlateStatistics" >> beam.ParDo(WritePlateStatistics(s)).with_outputs("failed", main="ok")
        )
        resumed = pbegin | "ResumedPlates" >> beam.Create(sorted(self.resume_plates.items()))
        ready = (computed.ok, resumed) | "ReadyPlates" >> beam.Flatten()
        ready_dict = beam.pvalue.AsDict(ready)

        missing = (
            pbegin
            | "AllPlates" >> beam.Create(sorted(self.plates))
            | "PlatesWithoutStatistics" >> beam.FlatMap(_plates_without_statistics, ready_dict)
        )
        failures = [read["failed"], contributions.failed, computed.failed, missing]
        if s.compress:
            compressed = sites | "CompressSites" >> beam.ParDo(
                CompressSite(s, frozenset(self.resume_plates)), ready_dict).with_outputs(
                "failed", main="ok")
            failures.append(compressed.failed)
            controls = compressed.ok | "SumControlHistograms" >> beam.CombinePerKey(sum)
        else:
            controls = ready | "NoCompression" >> beam.Map(lambda kv: (kv[0], None))
        committed = controls | "FinalizePlates" >> beam.ParDo(FinalizePlate(s), ready_dict)
        written = tuple(failures) | "AllFailures" >> beam.Flatten() | "DeadLetters" >> WriteDeadLetters(
            s.failures_file)
        record = (
            pbegin
            | "RunEnd" >> beam.Create([None])
            | "WriteRunRecord" >> beam.ParDo(WriteRunRecord(s, self.index_path, sorted(self.plates)),
                                             beam.pvalue.AsList(committed), beam.pvalue.AsList(written))
        )
        return {"committed": committed, "failures_written": written, "run_record": record}


# -------------------------------------------------------------------- command
def plan_plates(settings: PrepareSettings, plates: list[str]) -> tuple[list[str], dict, list[str]]:
    """Split plates into (to process, statistics to reuse, already complete)."""
    todo, resume, complete, changed = [], {}, [], []
    for plate in plates:
        if settings.overwrite:
            todo.append(plate)  # its earlier outputs are removed by the pipeline first
            continue
        manifest = settings.manifest(plate)
        if manifest.exists():
            recorded = json.loads(manifest.read_text()).get("settings") or {}
            if recorded != settings.fingerprint:
                changed.append(f"plate {plate} ({manifest}): {_differences(recorded, settings.fingerprint)}")
            complete.append(plate)
            continue
        todo.append(plate)
        stats_file = settings.layout.intensities_file(plate)
        if stats_file.exists():
            resume[plate] = str(stats_file)
    if changed:
        # Its outputs were made otherwise: keeping them would mix two kinds of images in one screen.
        raise UsageError("prepared with other settings than the config's now; --overwrite recomputes them:\n  "
                         + "\n  ".join(changed[:10]) + (f"\n  ... and {len(changed) - 10} more plate(s)"
                                                         if len(changed) > 10 else ""))
    return todo, resume, complete


def _differences(recorded: dict, current: dict) -> str:
    keys = sorted(set(recorded) | set(current))
    return ", ".join(f"{key} {recorded.get(key)!r} -> {current.get(key)!r}" for key in keys
                     if recorded.get(key) != current.get(key))


def _cellprofiler_functions(context: CommandContext, config: Config, plates: list[str]) -> dict:
    """Each plate's CellProfiler functions from the index, resolved as images are and checked to exist."""
    named = plates_cellprofiler_functions(context.layout.index_file, config.channels, plates)
    resolved = {plate: tuple(str(context.layout.image_file(url)) for url in urls) for plate, urls in named.items()}
    missing = [url for urls in resolved.values() for url in urls if not StoragePath(url).exists()]
    if missing:
        raise UsageError(f"CellProfiler illumination function not found: {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return resolved


def run_command(context: CommandContext, args: argparse.Namespace, emit) -> int:
    config = context.load_config("prepare")
    context = context.with_config_paths(config)
    scan = scan_index(context.layout.index_file, config, "prepare",  # fail fast on a bad index
                      count_columns=("Metadata_Plate",))
    plates = sorted(scan.plates)
    settings = PrepareSettings.from_config(context.layout, config, overwrite=args.overwrite)
    if getattr(args, "illumination", None):
        settings = replace(settings, functions=args.illumination)
    if settings.functions == "cellprofiler":
        settings = replace(settings, cellprofiler_functions=_cellprofiler_functions(context, config, plates))
    emit(f"prepare: {len(plates)} plate(s), {scan.sites} site(s), {len(config.channels)} channel(s); "
         f"compression {'on' if settings.compress else 'off'}; illumination functions: "
         f"{'CellProfiler (from the index)' if settings.functions == 'cellprofiler' else 'computed'}")
    if args.dry_run:
        todo, resume, _ = plan_plates(settings, plates)
        context = context.sized_for(scan.sites_on(todo))
        if todo:
            for line in describe_graph(lambda pipeline: pipeline | "Prepare" >> PreparePlates(
                    settings, str(settings.layout.index_file), frozenset(todo), resume), context.beam_args):
                emit(line)
        emit(f"dry run: {len(todo)} plate(s) would be processed, {len(plates) - len(todo)} are complete")
        return 0
    with output_lock(context.layout.intensities_dir, "prepare"):
        remove_stale_temporaries(context.layout.compressed_images_dir)  # prepare writes there too
        todo, resume, complete = plan_plates(settings, plates)
        for plate in complete:
            emit(f"plate {plate}: already complete ({settings.manifest(plate)}); --overwrite recomputes it")
        for plate in todo:
            warning = None if plate in resume else few_images_warning(plate, scan.values["Metadata_Plate"][plate])
            if warning:
                emit(f"warning: {warning} (the pictures in {settings.plate_dir(plate)} show it)")
        if not todo:
            return 0
        logger.info("prepare: %d plate(s) to process (%d resuming from committed statistics), %d already "
                    "complete", len(todo), len(resume), len(complete))
        context = context.sized_for(scan.sites_on(todo))
        record = settings.run_record(settings.layout.index_file)
        record.remove()  # the job writes it last: one from an earlier run must not pass for this one's
        run = run_pipeline(
            lambda pipeline: pipeline | "Prepare" >> PreparePlates(settings, str(settings.layout.index_file),
                                                                   frozenset(todo), resume),
            context.beam_args, NAMESPACE, detach=getattr(args, "detach", False),
            commit=record, progress=_progress(settings, todo, scan))
    if run.detached:
        emit(run.detached_message)
        return 0
    counters = run.counters
    emit("images read for statistics: {images_read}; plates computed: {plates_computed}; "
         "plates committed: {plates_committed}".format_map(ZeroForMissing(counters)))
    if settings.compress:
        emit("PNGs written: {pngs_written}; already committed and kept: {pngs_already_committed}; "
             "control sites: {control_sites}".format_map(ZeroForMissing(counters)))
    if counters.get("earlier_files_removed"):
        emit(f"earlier outputs removed: {counters['earlier_files_removed']} file(s) of plates recomputed "
             f"and of sites that failed (no file under a final name is from an earlier run)")
    emit(f"outputs: {context.layout.intensities_dir} and "
         f"{context.layout.compressed_images_dir if settings.compress else '(compression off)'}")
    return report_failures(read_failures(settings.failures_file), settings.failures_file, emit)


def _progress(settings: PrepareSettings, todo: list[str], scan) -> OutputProgress:
    """PNGs written (or, without compression, plates' statistics), counted while the job runs."""
    if settings.compress:
        return OutputProgress("prepare", [settings.compressed_plate_dir(plate) for plate in todo], ".png",
                              "PNGs", scan.sites_on(todo) * len(settings.channels))
    return OutputProgress("prepare", [settings.plate_dir(plate) for plate in todo], ".npz", "plates", len(todo))

