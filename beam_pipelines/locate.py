"""``dpbeam locate``: nuclei locations for every site of the index, as a Beam pipeline.

Segmenting (the default)::

    ReadSites -> PlatesToLocate -> LocateSites --(failed)--------------------------> dead letters
                                      | (plate, site result)      [side input: StartPlates]
                                  GroupSitesPerPlate -> FinalizePlates -> counts, QC picture, _locate.json

Importing CellProfiler's objects (``--from-cellprofiler``)::

    ObjectTables -> ReadObjects ------------------------------(image ref, objects)--+
    ImageTables  -> ReadImageRows -(match key, image ref)-+                          |
    ReadSites    -> SiteMatchKeys -(match key, site key)--+ MatchImagesToSites       |
                                                          -> (image ref, site key) --+ JoinObjectsToImages
                                                                   (site key, objects) -> GroupObjectsPerSite
                                                                   -> WriteImportedSites -> FinalizePlates

Each join is a shuffle keyed by one image or one site, so no worker holds more than one site's
objects, and neither the index nor CellProfiler's tables ever sit on the launcher. Commits: a site's
CSV is renamed into place whole; a plate's ``_locate.json`` says ``complete`` once every site is
written (see :mod:`dpcore.locate` for what a re-run keeps, resumes or refuses).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam
import numpy as np

from dpcore import cellprofiler_tables as cp
from dpcore.charts import nuclei_found
from dpcore.config import Config
from dpcore.features import index_stem
from dpcore.illumination import read_statistics
from dpcore.images import ImageReadError, read_image
from dpcore.layout import LOCATIONS_SUFFIX, ProjectLayout, UnsafePathError
from dpcore.locate import (LocateRefused, counts_csv, locations_csv, marker_file, marker_text, nucleus_channel,
                           nucleus_finder, plan_plates, qc_choice, qc_dir, segment, segmentation_settings)
from dpcore.locations import LocationsError, read_locations
from dpcore.locking import output_lock
from dpcore.metadata import Site, scan_index
from dpcore.segmentation import NucleusFinder
from dpcore.sites import in_a_bucket
from dpcore.storage import StoragePath, remove_stale_temporaries

from beam_pipelines.context import CommandContext, UsageError
from beam_pipelines.dead_letter import WriteDeadLetters, failure, read_failures, report_failures
from beam_pipelines.index import ReadSites
from beam_pipelines.prepare import MANIFEST_NAME as PREPARE_MANIFEST
from beam_pipelines.progress import OutputProgress, ZeroForMissing, inc_counter
from beam_pipelines.read_ahead import ReadAheadDoFn
from beam_pipelines.running import describe_graph, run_pipeline

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.locate"
FAILED = -1  # a site result's count when the site failed


@dataclass(frozen=True)
class TablePair:
    """One CellProfiler source: its object table and image table, with the columns to read."""

    number: int
    objects: cp.TableSource
    object_columns: cp.ObjectColumns
    images: cp.TableSource
    image_columns: cp.ImageColumns


@dataclass(frozen=True)
class LocateSettings:
    """What the workers need, small and picklable."""

    layout: ProjectLayout
    channels: tuple[str, ...]
    channel: str
    height: int
    width: int
    finder: NucleusFinder
    use_illumination: bool
    qc_sites: int
    record: dict  # recorded in each plate's marker; a re-run with another record is refused
    fresh_plates: frozenset[str] = frozenset()
    sources: tuple[TablePair, ...] = ()  # importing when not empty
    by_file_name: bool = False

    @property
    def channel_index(self) -> int:
        return self.channels.index(self.channel)

    @property
    def importing(self) -> bool:
        return bool(self.sources)

    @property
    def failures_file(self) -> StoragePath:
        return self.layout.outputs / "locate" / "_failed" / "locate-failures.jsonl"

    def run_record(self, index: StoragePath) -> StoragePath:
        return self.layout.outputs / "locate" / "_runs" / f"{index_stem(index)}.json"

    def target(self, site: Site) -> StoragePath:
        return self.layout.locations_file(site.plate, site.well, site.site)


# -------------------------------------------------------------------- plates
class StartPlate(beam.DoFn):
    """Clear a plate redone with --overwrite, then write its marker (not complete) before any site."""

    def __init__(self, settings: LocateSettings):
        self.settings = settings

    def process(self, plate: str) -> Iterator[str]:
        s = self.settings
        folder = s.layout.locations_dir / plate
        if plate in s.fresh_plates:
            earlier = folder.glob(f"*{LOCATIONS_SUFFIX}")
            for path in earlier:
                path.remove()
            inc_counter(NAMESPACE, "earlier_files_removed", len(earlier))
        remove_stale_temporaries(folder, beam_sink_folders=False)
        marker_file(s.layout, plate).write_text(marker_text(s.record, complete=False))
        yield plate


def _result(site: Site, count: int, settings: LocateSettings) -> tuple[str, tuple]:
    """``(plate, (well, site, nuclei or FAILED, the nucleus channel's image))``: what FinalizePlate needs."""
    return site.plate, (site.well, site.site, count, site.channel_files[settings.channel_index])


def _kept_count(site: Site, target: StoragePath, settings: LocateSettings) -> int | None:
    """The nuclei of a site a resumed plate already has, or None when the site is to be written."""
    return None if site.plate in settings.fresh_plates else committed_count(target)


def _kept(site: Site, target: StoragePath, settings: LocateSettings) -> list | None:
    """The result of a site a resumed plate already has, or None when the site is to be written."""
    count = _kept_count(site, target, settings)
    if count is None:
        return None
    inc_counter(NAMESPACE, "sites_kept")
    return [_result(site, count, settings)]


def committed_count(target: StoragePath) -> int | None:
    """The nuclei of a site a resumed plate already has (written whole by this method), or None."""
    try:
        return len(read_locations(target)) if target.exists() else None
    except LocationsError:
        return None  # damaged after it was written: done again


class LocateSite(ReadAheadDoFn):
    """Segment one site's nucleus channel and write its locations file.

    Images in an object store are read ahead (``ReadAheadDoFn``) while earlier sites are segmented.
    """

    def __init__(self, settings: LocateSettings):
        self.settings = settings

    def setup(self) -> None:
        super().setup()
        self._functions: OrderedDict[str, np.ndarray | None] = OrderedDict()  # a few plates' functions

    def process(self, site: Site, started: list[str]) -> Iterator:
        del started  # only orders this step after the plates' markers
        yield from self.read_ahead(site)

    def _image_path(self, site: Site) -> StoragePath:
        return self.settings.layout.image_file(site.channel_files[self.settings.channel_index])

    def reads_ahead(self, site: Site) -> bool:
        return in_a_bucket(lambda: [self._image_path(site)])

    def fetch(self, site: Site) -> tuple[StoragePath, int | None, np.ndarray | None]:
        """(target, nuclei a resumed plate already has, or None and the image to segment)."""
        s = self.settings
        target = s.target(site)
        if (count := _kept_count(site, target, s)) is not None:
            return target, count, None
        return target, None, read_image(self._image_path(site), (s.height, s.width))

    def emit(self, site: Site, fetched) -> Iterator:
        s = self.settings
        try:
            target, kept, image = fetched.result()
            if kept is not None:
                inc_counter(NAMESPACE, "sites_kept")
                yield _result(site, kept, s)
                return
            nuclei = segment(image, self._function(site.plate), s.finder)
            target.write_text(locations_csv(nuclei.centres))  # the site is committed here
        except (ImageReadError, UnsafePathError, ValueError, OSError) as error:
            inc_counter(NAMESPACE, "sites_failed")
            yield beam.pvalue.TaggedOutput("failed", failure("locate", site.key, str(error), row=str(site.row + 2)))
            yield _result(site, FAILED, s)
            return
        inc_counter(NAMESPACE, "sites_located")
        inc_counter(NAMESPACE, "nuclei_found", len(nuclei.centres))
        yield _result(site, len(nuclei.centres), s)

    def _function(self, plate: str) -> np.ndarray | None:
        """The plate's illumination function for the channel, when prepare committed one."""
        s = self.settings
        if not s.use_illumination:
            return None
        if plate not in self._functions:
            stats_file = s.layout.intensities_file(plate)
            committed = (stats_file.parent / PREPARE_MANIFEST).exists()
            self._functions[plate] = (read_statistics(stats_file).illum_correction_function[:, :, s.channel_index]
                                      if committed else None)
            if len(self._functions) > 4:
                self._functions.popitem(last=False)
        return self._functions[plate]


class FinalizePlate(beam.DoFn):
    """Counts per site, the QC picture, then the plate's marker (complete when no site failed)."""

    def __init__(self, settings: LocateSettings):
        self.settings = settings

    def process(self, element: tuple[str, list]) -> Iterator[str]:
        plate, results = element
        s = self.settings
        results = sorted(results)
        written = [r for r in results if r[2] != FAILED]
        failed = len(results) - len(written)
        folder = qc_dir(s.layout, plate)
        folder.joinpath(f"{plate}_counts.csv").write_text(counts_csv([(plate, w, site, n) for w, site, n, _ in written]))
        picture = self._picture(plate, written)
        if picture is not None:
            folder.joinpath(f"{plate}_nuclei.png").write_bytes(picture)
        remove_stale_temporaries(s.layout.locations_dir / plate, beam_sink_folders=False)
        nuclei = sum(n for _, _, n, _ in written)
        marker_file(s.layout, plate).write_text(marker_text(
            s.record, complete=failed == 0, sites=len(written), sites_failed=failed, nuclei=nuclei))
        inc_counter(NAMESPACE, "plates_committed" if failed == 0 else "plates_incomplete")
        yield plate

    def _picture(self, plate: str, written: list) -> bytes | None:
        s = self.settings
        by_key = {f"{well}-{site}": (well, site) for well, site, _, _ in written}
        chosen = qc_choice(list(by_key), s.qc_sites)
        if not chosen:
            return None
        images, centres, titles = [], [], []
        for key in chosen:
            well, site = by_key[key]
            try:
                image_file = next(f for w, st, _, f in written if (w, st) == (well, site))
                images.append(read_image(s.layout.image_file(image_file), (s.height, s.width)))
                centres.append(read_locations(s.layout.locations_file(plate, well, site)))
                titles.append(f"{well} site {site}")
            except (ImageReadError, LocationsError, UnsafePathError, OSError) as error:
                logger.warning("locate: QC picture of plate %s leaves out %s (%s)", plate, key, error)
        if not images:
            return None
        note = (f"{s.record.get('method')}; {sum(len(c) for c in centres)} nuclei in {len(images)} of "
                f"{len(written)} sites shown")
        return nuclei_found(images, centres, titles, plate, note)



# ------------------------------------------------------------------ import
class ReadObjects(beam.DoFn):
    """A CellProfiler object table, streamed: ``(image ref, (object numbers, centres))`` per image and chunk."""

    def process(self, pair: TablePair) -> Iterator:
        first = 0
        columns = pair.object_columns
        wanted = [*columns.image_keys, *([columns.object_number] if columns.object_number else []), columns.x, columns.y]
        try:
            for chunk in cp.iter_table(pair.objects, wanted):
                for key, value in cp.objects_per_image(chunk, columns, pair.number, pair.objects, first):
                    if key == "bad":
                        yield beam.pvalue.TaggedOutput("failed", failure("locate", str(pair.objects), value))
                    else:
                        inc_counter(NAMESPACE, "objects_read", len(value[0]))
                        yield key, value
                first += len(chunk)
        except (cp.TableError, OSError, ValueError, KeyError) as error:
            yield beam.pvalue.TaggedOutput("failed", failure(
                "locate", str(pair.objects), f"reading stopped after {first} row(s): {error}"))


class ReadImageRows(beam.DoFn):
    """A CellProfiler image table, streamed: ``(match key, image ref)`` per image."""

    def process(self, pair: TablePair) -> Iterator:
        columns = pair.image_columns
        wanted = [*columns.image_keys, *(columns.site or ()), *([columns.file_name] if columns.file_name else [])]
        try:
            for chunk in cp.iter_table(pair.images, wanted):
                yield from cp.image_match_keys(chunk, columns, pair.number)
        except (cp.TableError, OSError, ValueError, KeyError) as error:
            yield beam.pvalue.TaggedOutput("failed", failure("locate", str(pair.images), str(error)))


def pair_images_with_sites(element: tuple[str, dict]) -> Iterator:
    """One match key's image rows and index sites -> ``(image ref, site key)``; the rest is reported.

    A site with no image row gets no objects (an empty file): CellProfiler did not image it, or its
    table was not given.
    """
    match, grouped = element
    refs, sites = sorted(grouped["images"]), sorted(set(grouped["sites"]))
    if refs and not sites:
        inc_counter(NAMESPACE, "images_unmatched", len(refs))
        for ref in refs:
            yield beam.pvalue.TaggedOutput("failed", failure(
                "locate", f"CellProfiler image {ref}", f"no site of the index matches it ({match})"))
    elif refs:
        if len(sites) > 1 or len(refs) > 1:
            yield beam.pvalue.TaggedOutput("failed", failure(
                "locate", match, f"{len(refs)} CellProfiler image(s) {', '.join(refs[:5])} match {len(sites)} "
                                 f"index site(s) {', '.join(sites[:5])}: the first image is used for the first site"))
        yield refs[0], sites[0]


def objects_to_site(element: tuple[str, dict]) -> Iterator:
    """One image's object chunks -> ``(site key, chunk)``; objects of an image no site claims are reported."""
    ref, grouped = element
    sites, chunks = grouped["site"], grouped["objects"]
    if sites:
        for chunk in chunks:
            yield sites[0], chunk
    elif count := sum(len(numbers) for numbers, _ in chunks):
        inc_counter(NAMESPACE, "objects_unmatched", count)
        yield beam.pvalue.TaggedOutput("failed", failure(
            "locate", f"CellProfiler image {ref}", f"{count} object(s) of an image with no index site "
                                                   f"(not in the image table, or its site is not in the index)"))


class WriteImportedSite(beam.DoFn):
    """One index site and its objects -> its locations file, objects in CellProfiler's order."""

    def __init__(self, settings: LocateSettings):
        self.settings = settings

    def process(self, element: tuple[str, dict], started: list[str]) -> list:
        del started  # only orders this step after the plates' markers
        key, grouped = element
        if not grouped["site"]:
            return []  # a site of a plate this run does not write (complete, or not in this run's plates)
        site, s = grouped["site"][0], self.settings
        try:
            target = s.target(site)
            if (kept := _kept(site, target, s)) is not None:
                return kept
            chunks = grouped["objects"]
            numbers = np.concatenate([n for n, _ in chunks]) if chunks else np.zeros(0)
            centres = np.concatenate([c for _, c in chunks]) if chunks else np.zeros((0, 2))
            target.write_text(locations_csv(centres[np.argsort(numbers, kind="stable")]))
        except (UnsafePathError, ValueError, OSError) as error:
            inc_counter(NAMESPACE, "sites_failed")
            return [beam.pvalue.TaggedOutput("failed", failure("locate", key, str(error))), _result(site, FAILED, s)]
        inc_counter(NAMESPACE, "sites_located")
        if len(centres):
            inc_counter(NAMESPACE, "nuclei_found", len(centres))
        else:
            inc_counter(NAMESPACE, "sites_without_objects")
        return [_result(site, len(centres), s)]


def _match_key(site: Site, settings: LocateSettings) -> tuple[str, str]:
    return (cp.site_match_key(site.plate, site.well, site.site, site.channel_files[settings.channel_index],
                              settings.by_file_name), site.key)


# ---------------------------------------------------------------- transform
@dataclass
class LocatePlates(beam.PTransform):
    """Locations for every site of ``plates`` (segmented, or imported when ``settings.sources``)."""

    settings: LocateSettings
    index_path: str
    plates: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self):
        super().__init__()
        if not self.plates:
            raise ValueError("LocatePlates needs at least one plate to locate")

    def expand(self, pbegin):
        s = self.settings
        read = pbegin | "ReadSites" >> ReadSites(self.index_path, s.channels)
        sites = read["sites"] | "PlatesToLocate" >> beam.Filter(lambda site, plates: site.plate in plates, self.plates)
        started = (pbegin | "PlatesToStart" >> beam.Create(sorted(self.plates))
                   | "StartPlates" >> beam.ParDo(StartPlate(s)))
        failures = [read["failed"]]
        if s.importing:
            located = self._imported(pbegin, read["sites"], sites, started, failures)
        else:
            located = sites | "LocateSites" >> beam.ParDo(LocateSite(s), beam.pvalue.AsList(started)).with_outputs(
                "failed", main="ok")
        failures.append(located.failed)
        committed = (
            located.ok
            | "GroupSitesPerPlate" >> beam.GroupByKey()  # one plate's (well, site, count) tuples: plate-sized
            | "FinalizePlates" >> beam.ParDo(FinalizePlate(s))
        )
        written = tuple(failures) | "AllFailures" >> beam.Flatten() | "DeadLetters" >> WriteDeadLetters(
            s.failures_file)
        record = (
            pbegin
            | "RunEnd" >> beam.Create([None])
            | "WriteRunRecord" >> beam.ParDo(WriteRunRecord(s, self.index_path, sorted(self.plates)),
                                             beam.pvalue.AsList(committed), beam.pvalue.AsList(written))
        )
        return {"committed": committed, "run_record": record}

    def _imported(self, pbegin, all_sites, sites, started, failures):
        s = self.settings
        objects = (pbegin | "ObjectTables" >> beam.Create(list(s.sources))
                   | "ReadObjects" >> beam.ParDo(ReadObjects()).with_outputs("failed", main="objects"))
        images = (pbegin | "ImageTables" >> beam.Create(list(s.sources))
                  | "ReadImageRows" >> beam.ParDo(ReadImageRows()).with_outputs("failed", main="rows"))
        index_keys = all_sites | "SiteMatchKeys" >> beam.Map(_match_key, s)
        image_sites = (
            {"images": images.rows, "sites": index_keys}
            | "MatchImagesToSites" >> beam.CoGroupByKey()
            | "ImagePerSite" >> beam.FlatMap(pair_images_with_sites).with_outputs("failed", main="pairs")
        )
        site_objects = (
            {"site": image_sites.pairs, "objects": objects.objects}
            | "JoinObjectsToImages" >> beam.CoGroupByKey()
            | "ObjectsPerSite" >> beam.FlatMap(objects_to_site).with_outputs("failed", main="chunks")
        )
        failures += [objects.failed, images.failed, image_sites.failed, site_objects.failed]
        keyed_sites = sites | "KeyBySite" >> beam.Map(lambda site: (site.key, site))
        return (
            {"site": keyed_sites, "objects": site_objects.chunks}
            | "GroupObjectsPerSite" >> beam.CoGroupByKey()
            | "WriteImportedSites" >> beam.ParDo(WriteImportedSite(s), beam.pvalue.AsList(started)).with_outputs(
                "failed", main="ok")
        )


class WriteRunRecord(beam.DoFn):
    """The run's last step, once every plate is finalized and the dead letters written (for --detach)."""

    def __init__(self, settings: LocateSettings, index: str, plates: list[str]):
        self.settings, self.index, self.plates = settings, index, plates

    def process(self, _, committed: list[str], failure_files: list[str]) -> Iterator[str]:
        del failure_files  # only orders this step after the dead-letter file
        s = self.settings
        record = {"index": StoragePath(self.index).name, "plates": self.plates, "plates_finalized": sorted(committed),
                  "failures": len(read_failures(s.failures_file)), "settings": s.record}
        target = s.run_record(StoragePath(self.index))
        target.write_text(json.dumps(record, indent=2, sort_keys=True))
        yield str(target)


# -------------------------------------------------------------------- command
def import_sources(args: argparse.Namespace, config: Config) -> tuple[tuple[TablePair, ...], bool]:
    """Check every CellProfiler table's columns at launch (headers only); return the sources and the match."""
    objects = list(args.from_cellprofiler or [])
    tables = list(args.image_table or [])
    if tables and len(tables) != len(objects):
        raise UsageError(f"{len(objects)} --from-cellprofiler but {len(tables)} --image-table: give one image table "
                         f"per object table, or none (then Image.csv beside each, or Per_Image in a SQLite file)")
    channel = nucleus_channel(config)
    image_name = args.image_name or f"Orig{channel}"
    pairs, by_file = [], set()
    for number, url in enumerate(objects):
        try:
            source = cp.object_source(url, args.object_name)
            images = cp.image_source(source, tables[number] if tables else None)
            object_cols, image_cols = cp.table_columns(source), cp.table_columns(images)
            keys = cp.shared_image_keys(object_cols, image_cols, source, args.image_key)
            pair = TablePair(number, source, cp.object_columns(source, object_cols, args.object_name, keys,
                                                               args.x_column, args.y_column),
                             images, cp.image_columns(images, image_cols, keys, args.match_by, image_name))
        except cp.TableError as error:
            raise UsageError(str(error)) from None
        by_file.add(pair.image_columns.site is None)
        pairs.append(pair)
    if len(by_file) > 1:
        raise UsageError("some image tables have Metadata_Plate/Well/Site and some do not: pass --match-by "
                         "filename (or metadata) so every table is matched the same way")
    return tuple(pairs), by_file == {True}


def import_record(pairs: tuple[TablePair, ...], by_file_name: bool) -> dict:
    return {"method": "cellprofiler", "match": "filename" if by_file_name else "metadata",
            "objects": [str(p.objects) for p in pairs], "images": [str(p.images) for p in pairs],
            "image_keys": [list(p.object_columns.image_keys) for p in pairs],
            "x": [p.object_columns.x for p in pairs], "y": [p.object_columns.y for p in pairs]}


def run_command(context: CommandContext, args: argparse.Namespace, emit) -> int:
    config = context.load_config("locate")
    context = context.with_config_paths(config)
    layout = context.layout
    scan = scan_index(layout.index_file, config, "locate", count_columns=("Metadata_Plate",))  # fail fast
    plates = sorted(scan.plates)
    channel = nucleus_channel(config)
    sources, by_file_name = import_sources(args, config) if args.from_cellprofiler else ((), False)
    record = import_record(sources, by_file_name) if sources else segmentation_settings(config)
    finder = nucleus_finder(config.locate)
    emit(f"locate: {len(plates)} plate(s), {scan.sites} site(s); "
         + (f"importing CellProfiler objects from {len(sources)} table(s), matched by "
            f"{'file name' if by_file_name else 'Metadata_Plate/Well/Site'}" if sources else
            f"segmenting channel {channel} ({config.locate.threshold} threshold, diameters "
            f"{finder.min_diameter:g}-{finder.max_diameter:g} px)"))
    try:
        plan = plan_plates(layout, plates, record, args.overwrite)
    except LocateRefused as error:
        raise UsageError(str(error)) from None
    for plate in plan.complete:
        emit(f"plate {plate}: already complete ({marker_file(layout, plate)}); --overwrite locates it again")
    if not plan.todo:
        return 0
    settings = LocateSettings(
        layout=layout, channels=config.channels, channel=channel, height=config.dataset.images.height,
        width=config.dataset.images.width, finder=finder, use_illumination=config.locate.use_illumination,
        qc_sites=config.locate.qc_sites, record=record, fresh_plates=frozenset(plan.fresh), sources=sources,
        by_file_name=by_file_name)

    def build(pipeline):
        return pipeline | "Locate" >> LocatePlates(settings, str(layout.index_file), frozenset(plan.todo))

    todo_sites = scan.sites_on(plan.todo)
    context = context.sized_for(todo_sites)
    if args.dry_run:
        for line in describe_graph(build, context.beam_args):
            emit(line)
        emit(f"dry run: {len(plan.todo)} plate(s) would be located, {len(plan.complete)} are complete")
        return 0
    with output_lock(layout.locations_dir, "locate"):
        run_file = settings.run_record(layout.index_file)
        run_file.remove()  # the job writes it last: one from an earlier run must not pass for this one's
        run = run_pipeline(build, context.beam_args, NAMESPACE, detach=getattr(args, "detach", False),
                           commit=run_file,
                           progress=OutputProgress("locate", [layout.locations_dir / p for p in plan.todo],
                                                   LOCATIONS_SUFFIX, "sites", todo_sites))
    if run.detached:
        emit(run.detached_message)
        return 0
    counters = run.counters
    emit("sites located: {sites_located}; kept from an earlier run: {sites_kept}; failed: {sites_failed}; "
         "nuclei: {nuclei_found}; plates complete: {plates_committed}".format_map(ZeroForMissing(counters)))
    if sources:
        emit("CellProfiler objects read: {objects_read}; sites with no objects (empty files): {sites_without_objects}; "
             "objects of no index site: {objects_unmatched}; image rows of no index site: {images_unmatched}"
             .format_map(ZeroForMissing(counters)))
    emit(f"outputs: {layout.locations_dir} (locations), {layout.outputs / 'locate'} (counts and QC pictures)")
    return report_failures(read_failures(settings.failures_file), settings.failures_file, emit)

