"""``dpbeam aggregate``: per-cell features to profiles, as a Beam pipeline.

::

    FeaturePlates -> ListSiteFiles -> KeyFilesByGroup -> GroupFilesByGroup   (file names only)
                                          -> ReduceGroupFiles --(failed)-----------------> dead letters
                                          | (plate, row)                     exact median/mean per group
                 (other strata: ReadSiteFiles -> GroupCellsByGroup -> ReduceGroups, cells shuffled)
                                      GroupRowsByPlate -> WritePlateParts    _parts/<level>/<plate>.parquet
                                          | part urls (one per plate)
                                      AllParts -> FinishProfiles            <level>*.parquet, treatments,
                                                                             _manifest.json (written last)

With the usual strata (plate and well, or plate, well and site) a group is a set of whole site files
(``<plate>/<well>-<site>.parquet``): only file names are shuffled and a worker reads one group's files
and reduces it, holding one group's cells (a well: thousands), never a plate's or the screen's. Other
strata shuffle the cells themselves to their group. The reduced table is small (one row per well): the last step reads it whole and runs
pycytominer's normalize (per plate), feature_select and consensus on it (:mod:`dpcore.profiles`).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Iterator

import apache_beam as beam
import pandas as pd
import pyarrow.parquet as pq

from dpcore import profiles as pr
from dpcore.config import Config
from dpcore.features import SUFFIX
from dpcore.layout import ProjectLayout
from dpcore.locking import output_lock
from dpcore.storage import StoragePath

from beam_pipelines.context import CommandContext, UsageError
from beam_pipelines.dead_letter import WriteDeadLetters, failure, read_failures, report_failures
from beam_pipelines.progress import inc_counter
from beam_pipelines.running import describe_graph, run_pipeline

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.aggregate"


@dataclass(frozen=True)
class AggregateSettings:
    features_dir: StoragePath
    profiles_dir: StoragePath
    level: str
    strata: tuple[str, ...]
    features: tuple[str, ...]
    operation: str
    normalize_method: str
    normalize_samples: str  # pycytominer's samples query, or "all"
    feature_select: tuple[str, ...]
    feature_select_settings: dict
    treatment_columns: tuple[str, ...]
    source: dict  # what the profiles were made from, recorded in the manifest

    @property
    def failures_file(self) -> StoragePath:
        return self.profiles_dir / "_failed" / "aggregate-failures.jsonl"

    @property
    def groups_follow_files(self) -> bool:
        """Whether a group is a set of whole site files (plate and well, with or without the site)."""
        return self.strata in (("Metadata_Plate", "Metadata_Well"), ("Metadata_Plate", "Metadata_Well", "Metadata_Site"))

    def part(self, plate: str) -> StoragePath:
        return self.profiles_dir / pr.PARTS_DIR / self.level / f"{plate}.parquet"

    def output(self, suffix: str = "") -> StoragePath:
        return self.profiles_dir / f"{self.level}{suffix}.parquet"


def list_site_files(plate_dir: str) -> Iterator[str]:
    for path in sorted(StoragePath(plate_dir).glob(f"*{SUFFIX}"), key=str):
        inc_counter(NAMESPACE, "site_files")
        yield str(path)


def read_site_file(url: str, settings: AggregateSettings) -> list[tuple[tuple, pr.GroupPart]]:
    """One site's feature file -> its cells, split by group; ValueError/KeyError/OSError when unusable."""
    with StoragePath(url).open("rb") as handle:
        frame = pd.read_parquet(handle)
    missing = [c for c in settings.features if c not in frame.columns]
    if missing:
        raise KeyError(f"missing feature column(s) {', '.join(missing[:5])}: written by another model?")
    inc_counter(NAMESPACE, "cells_read", len(frame))
    return pr.group_parts(frame, settings.strata, settings.features)


def _reason(error: Exception) -> str:
    return str(error).strip("'\"")


class ReadSiteFile(beam.DoFn):
    """One site's feature file -> its cells, split by group (the shuffle path: any strata)."""

    def __init__(self, settings: AggregateSettings):
        self.settings = settings

    def process(self, url: str) -> list:
        try:
            return read_site_file(url, self.settings)
        except (OSError, ValueError, KeyError) as error:
            return [beam.pvalue.TaggedOutput("failed", failure("aggregate", url, _reason(error)))]


def file_group_key(url: str, settings: AggregateSettings) -> tuple[tuple, str]:
    """``(plate, well[, site])`` from a feature file's path, ``<plate>/<well>-<site>.parquet`` (as profile names it)."""
    path = StoragePath(url)
    well, site = path.name[: -len(SUFFIX)].rsplit("-", 1)
    values = {"Metadata_Plate": path.parent.name, "Metadata_Well": well, "Metadata_Site": site}
    return tuple(values[column] for column in settings.strata), url


class ReduceGroupFiles(beam.DoFn):
    """One group's feature files (a well's sites) -> its row: only this group's cells are in memory."""

    def __init__(self, settings: AggregateSettings):
        self.settings = settings

    def process(self, element: tuple[tuple, list[str]]) -> list:
        key, urls = element
        s = self.settings
        outputs, parts = [], []
        for url in sorted(urls):
            try:
                found = read_site_file(url, s)
                strays = sorted({part_key for part_key, _ in found if part_key != key})
                if strays:
                    raise ValueError(f"holds cells of {strays[0]}, not of {key} as its path says")
                parts += [part for _, part in found]
            except (OSError, ValueError, KeyError) as error:
                outputs.append(beam.pvalue.TaggedOutput("failed", failure("aggregate", url, _reason(error))))
        if parts:
            row = pr.reduce_group(key, parts, s.strata, s.features, s.operation)
            inc_counter(NAMESPACE, "groups")
            outputs.append((str(row["Metadata_Plate"]), row))
        return outputs


class ReduceGroup(beam.DoFn):
    def __init__(self, settings: AggregateSettings):
        self.settings = settings

    def process(self, element: tuple) -> Iterator[tuple[str, dict]]:
        key, parts = element
        s = self.settings
        row = pr.reduce_group(key, list(parts), s.strata, s.features, s.operation)
        inc_counter(NAMESPACE, "groups")
        yield str(row["Metadata_Plate"]), row


class WritePlatePart(beam.DoFn):
    def __init__(self, settings: AggregateSettings):
        self.settings = settings

    def process(self, element: tuple[str, list]) -> Iterator[str]:
        plate, rows = element
        s = self.settings
        frame = pr.rows_to_frame(list(rows), s.strata, s.features)
        target = s.part(plate)
        target.write_bytes(_parquet(frame))
        yield str(target)


class FinishProfiles(beam.DoFn):
    """The screen-level tables from the reduced parts, then the manifest (the run's commit)."""

    def __init__(self, settings: AggregateSettings):
        self.settings = settings

    def process(self, parts: list[str], failure_files: list[str]) -> list[str]:
        del failure_files  # orders this step after the dead letters, so the manifest can count them
        s = self.settings
        if not parts:
            return self._manifest({}, note="no features could be read")
        frames = []
        for url in sorted(parts):
            with StoragePath(url).open("rb") as handle:
                frames.append(pd.read_parquet(handle))
        # Metadata constant per group on one plate may vary on another: keep only columns all plates have.
        common = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
        reduced = pd.concat([f[common] for f in frames], ignore_index=True).sort_values(list(s.strata), kind="stable")
        reduced = reduced.reset_index(drop=True)
        s.output().write_bytes(_parquet(reduced))
        normalized = pr.normalize_per_plate(reduced.drop(columns=[pr.CELL_COUNT]), s.normalize_method,
                                            s.normalize_samples)
        s.output("_normalized").write_bytes(_parquet(normalized))
        selected = (pr.select_features(normalized, s.feature_select, s.feature_select_settings)
                    if s.feature_select else normalized)
        s.output("_normalized_feature_select").write_bytes(_parquet(selected))
        counts = {"groups": len(reduced), "plates": int(reduced["Metadata_Plate"].nunique()),
                  "cells": int(reduced[pr.CELL_COUNT].sum()), "features": len(s.features),
                  "features_selected": len(pr.feature_columns(selected.columns))}
        treatments = [c for c in s.treatment_columns if c in selected.columns]
        if treatments:
            consensus = pr.consensus_per_treatment(selected, treatments)
            (s.profiles_dir / "treatments.parquet").write_bytes(_parquet(consensus))
            counts["treatments"] = len(consensus)
        else:
            (s.profiles_dir / "treatments.parquet").remove()
            logger.warning("aggregate: no treatment column (%s) in the profiles: treatments.parquet not written",
                           ", ".join(s.treatment_columns) or "none configured")
        return self._manifest(counts)

    def _manifest(self, counts: dict, note: str = "") -> list[str]:
        s = self.settings
        manifest = {"level": s.level, "strata": list(s.strata), "operation": s.operation,
                    "normalize": {"method": s.normalize_method, "samples": s.normalize_samples},
                    "feature_select": list(s.feature_select), "counts": counts, "source": s.source,
                    "failures": len(read_failures(s.failures_file)), "note": note,
                    "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        target = s.profiles_dir / pr.MANIFEST_NAME
        target.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return [str(target)]


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@dataclass
class AggregateProfiles(beam.PTransform):
    settings: AggregateSettings
    plates: tuple[str, ...]

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        s = self.settings
        files = (
            pbegin
            | "FeaturePlates" >> beam.Create([str(s.features_dir / plate) for plate in self.plates])
            | "ListSiteFiles" >> beam.FlatMap(list_site_files)
        )
        if s.groups_follow_files:
            # Only file names are shuffled: each group's files meet on one worker, which reads them and
            # reduces the group; no step ever holds more cells than one group's, on any runner.
            read = (
                files
                | "KeyFilesByGroup" >> beam.Map(file_group_key, s)
                | "GroupFilesByGroup" >> beam.GroupByKey()
                | "ReduceGroupFiles" >> beam.ParDo(ReduceGroupFiles(s)).with_outputs("failed", main="rows")
            )
            rows = read.rows
        else:
            # Strata that file names do not tell (e.g. a treatment across plates): cells are shuffled to
            # their group through the runner's shuffle (in memory on the DirectRunner).
            read = (
                files
                | "SpreadSiteFiles" >> beam.Reshuffle()
                | "ReadSiteFiles" >> beam.ParDo(ReadSiteFile(s)).with_outputs("failed", main="parts")
            )
            rows = (
                read.parts
                | "GroupCellsByGroup" >> beam.GroupByKey()
                | "ReduceGroups" >> beam.ParDo(ReduceGroup(s))
            )
        parts = (
            rows
            | "GroupRowsByPlate" >> beam.GroupByKey()
            | "WritePlateParts" >> beam.ParDo(WritePlatePart(s))
            | "AllParts" >> beam.combiners.ToList()
        )
        written = read.failed | "DeadLetters" >> WriteDeadLetters(s.failures_file)
        return parts | "FinishProfiles" >> beam.ParDo(FinishProfiles(s), beam.pvalue.AsList(written))


# -------------------------------------------------------------------- command
def settings_from_config(layout: ProjectLayout, config: Config) -> tuple[AggregateSettings, tuple[str, ...]]:
    """The settings and the plates with features; UsageError when there is nothing to aggregate."""
    a = config.aggregate
    features_dir = layout.features_dir
    plates = tuple(sorted(p.name for p in features_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))) \
        if features_dir.exists() else ()
    sample = next((f for plate in plates for f in sorted((features_dir / plate).glob(f"*{SUFFIX}"), key=str)), None)
    if sample is None:
        raise UsageError(f"no features under {features_dir}: run profile first")
    with sample.open("rb") as handle:
        columns = pq.read_schema(handle).names
    strata = a.group_columns
    missing = [c for c in strata if c not in columns]
    if missing or "Metadata_Plate" not in strata:
        raise UsageError(f"aggregate.strata must include Metadata_Plate and name columns of the features "
                         f"({sample} has {', '.join(pr.metadata_columns(columns))}); missing: "
                         f"{', '.join(missing) or 'Metadata_Plate'}")
    label = config.dataset.metadata.label_field
    label_column = None if not label else (label if label.startswith("Metadata_") else f"Metadata_{label}")
    if a.normalize_samples == "controls":
        if label_column is None or config.dataset.metadata.control_value is None:
            raise UsageError("aggregate.normalize.samples \"controls\" needs dataset.metadata.label_field and "
                             "control_value (or set it to \"all\")")
        samples = pr.control_query(label_column, config.dataset.metadata.control_value)
    else:
        samples = "all"
    treatments = a.treatment_columns or ((label_column,) if label_column else ())
    manifest = features_dir / "_manifest.json"
    source = json.loads(manifest.read_text()) if manifest.exists() else {}
    settings = AggregateSettings(
        features_dir=features_dir, profiles_dir=layout.experiment_dir / "profiles", level=a.level, strata=strata,
        features=tuple(pr.feature_columns(columns)), operation=a.operation, normalize_method=a.normalize_method,
        normalize_samples=samples, feature_select=a.feature_select,
        feature_select_settings={"corr_threshold": a.corr_threshold, "freq_cut": a.freq_cut,
                                 "unique_cut": a.unique_cut, "na_cutoff": a.na_cutoff},
        treatment_columns=tuple(treatments),
        source={"features": str(features_dir), "model": source.get("model"),
                "feature_layer": source.get("feature_layer"), "checkpoint_sha256": source.get("checkpoint_sha256"),
                "config_fingerprint": source.get("config_fingerprint")})
    return settings, plates


def run_command(context: CommandContext, args: argparse.Namespace, emit) -> int:
    config = context.load_config("aggregate")
    context = context.with_config_paths(config)
    settings, plates = settings_from_config(context.layout, config)
    emit(f"aggregate: {len(plates)} plate(s) of features, {len(settings.features)} features per cell, "
         f"{settings.operation} per {settings.level} ({', '.join(settings.strata)})")

    def build(pipeline):
        return pipeline | "Aggregate" >> AggregateProfiles(settings, plates)

    if args.dry_run:
        for line in describe_graph(build, context.beam_args):
            emit(line)
        return 0
    with output_lock(settings.profiles_dir, "aggregate"):
        manifest = settings.profiles_dir / pr.MANIFEST_NAME
        manifest.remove()  # written last by the job: one from an earlier run must not pass for this one's
        for old in (settings.profiles_dir / pr.PARTS_DIR / settings.level).glob("*.parquet"):
            old.remove()  # a plate whose features are gone must not stay in the profiles
        run = run_pipeline(build, context.beam_args, NAMESPACE, detach=getattr(args, "detach", False),
                           commit=manifest)
    if run.detached:
        emit(run.detached_message)
        return 0
    counts = json.loads(manifest.read_text())["counts"]
    emit(f"cells: {counts.get('cells', 0)} in {counts.get('groups', 0)} {settings.level}; features kept by "
         f"selection: {counts.get('features_selected', 0)} of {counts.get('features', 0)}; treatments: "
         f"{counts.get('treatments', 0)}")
    emit(f"outputs: {settings.profiles_dir}")
    return report_failures(read_failures(settings.failures_file), settings.failures_file, emit)

