"""``dpbeam profile``: per-cell deep features with Beam RunInference, written to Parquet.

::

    ReadSites -> KeyByPlate -> GroupByPlate -> SitesToDo (one listing per plate) --(kept)--> counts
                                                  |
                                     SpreadSites -> CutCells --(failed / no cells)------------> dead letters
                                                  | (site info, the site's crops (N, box, box, C))
                          RunInference(SiteModelHandler(FeatureModelHandler))
                          sites batched up to profile.batch_size cells
                                                  | (site info, vectors (N, D)) --(failed)--> UnpublishFailedInference
                                             WriteSiteFeatures -> features/<plate>/<well>-<site>.parquet     -> dead letters
                                                  | counts
                                             WriteRunRecord -> features/_manifest.json, _runs/<index>.json

A site travels as one element, its crops together: its vectors come back
together, so its file is written straight after the model, in the same fused
step, without a shuffle to join cells to their sites. (Cells as elements, joined
by a CoGroupByKey, kept every worker's share of Parquet writing for a serial
step after the last inference; the 4-plate benchmark's profile spent ~2 of its
~7.5 s per 3 plates there, on one core.)

A site is committed when its Parquet file is renamed into place; a re-run skips
committed sites unless ``--overwrite``, deciding per plate on the workers (one
listing of the plate's folder), so nothing per site enters the job graph. A
site that fails in this run loses any feature file an earlier run left, so a
stale file never passes as current. The run's record is the pipeline's last
step. The layout is ``dpcore.features``; the model is built once per worker by
the model handler (``load_model``) and runs as a frozen graph, on OpenVINO on CPUs or TensorFlow
(``dpcore.inference_engines``, ``--inference-engine``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from dpcore import features
from dpcore.checkpoints import CheckpointError, file_sha256
from dpcore.config import Config, ConfigError
from dpcore.images import ImageReadError
from dpcore.inference_engines import WHOLE_PROCESS, CpuShare, EngineError, check_engine
from dpcore.layout import ProjectLayout, UnsafePathError
from dpcore.locations import LocationsError, LocationsMissing
from dpcore.locking import output_lock
from dpcore.metadata import Site, scan_index
from dpcore.profiling import (FeatureModelSpec, classes_in_checkpoint, feature_parquet, feature_table,
                              pretrained_weights_file)
from dpcore.single_cells import CellSource, SiteData, warm_up_cutting
from dpcore.storage import StoragePath, as_storage_path
from dpcore.tensorflow_runtime import cores_shared

from beam_pipelines import array_coder
from beam_pipelines.context import CommandContext, UsageError, acceleration_options
from beam_pipelines.dead_letter import WriteDeadLetters, failure, read_failures, report_failures
from beam_pipelines.index import ReadSites
from beam_pipelines.progress import OutputProgress, inc_counter
from beam_pipelines.read_ahead import ReadAheadDoFn
from beam_pipelines.running import describe_graph, run_pipeline

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.profile"
NO_CELLS = "no-cells"  # dead-letter stage that reports, but does not fail the run
# The model the running command built before its job (FeatureModelSpec -> Keras model), for workers in this process.
_CHECKED_MODELS: dict[FeatureModelSpec, Any] = {}


def cells_in(element: np.ndarray | tuple[Any, np.ndarray]) -> int:
    """How many crops a site's element carries: RunInference batches sites by cells."""
    crops = element[1] if isinstance(element, tuple) else element
    return len(crops)


class FeatureModelHandler(ModelHandler[np.ndarray, np.ndarray, Any]):
    """Sites' crop stacks -> their feature vectors with our Keras feature model.

    Each element is one site's crops, (N, box, box, C); a batch holds whole sites, up to
    ``batch_size`` crops unless one site alone has more. The engine runs the batch's crops together
    (in its own parts: ``dpcore.inference_engines``) and each site gets its (N, D) vectors back.

    Our own handler rather than Beam's ``TFModelHandlerNumpy``: the model is
    built from the zoo and weights are loaded by layer name (DeepProfiler's
    checkpoints), and inference runs compiled, on OpenVINO or TensorFlow
    (``dpcore.inference_engines``; Beam's default runs eagerly, 2.5-4x slower).
    Beam loads the model once per worker process and its threads share it.
    """

    def __init__(self, spec: FeatureModelSpec, batch_size: int, engine: str = "auto",
                 cpu_share: CpuShare = WHOLE_PROCESS):
        super().__init__()
        self.spec = spec
        self.batch_size = batch_size
        self.engine = engine
        self.cpu_share = cpu_share

    def load_model(self):
        from dpcore.inference_engines import predictor  # noqa: PLC0415 -- TF loads on workers only
        # A worker in the launcher's own process (the local DirectRunner's threads) reuses the model the
        # launcher built to check the config: one build less (~3-5 s of start-up for EfficientNet-B0).
        model = _CHECKED_MODELS.get(self.spec) or self.spec.build()
        return predictor(model, self.batch_size, self.engine, self.spec.acceleration, self.cpu_share)

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[np.ndarray]:
        if not batch:
            return []
        sizes = [len(crops) for crops in batch]
        vectors = model(batch[0] if len(batch) == 1 else np.concatenate(batch))
        inc_counter(NAMESPACE, "cells_inferred", sum(sizes))
        return np.split(vectors, np.cumsum(sizes)[:-1])

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size, "element_size_fn": cells_in}

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(x.nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


class SiteModelHandler(KeyedModelHandler):
    """Beam's KeyedModelHandler (the key: a site's ``SiteInfo``), which also takes an empty batch.

    BatchElements sized by ``element_size_fn`` emits an empty batch when the first site of a batch has
    more cells than the batch size (Beam 2.77, ``_GlobalWindowsBatchingDoFn.process``); KeyedModelHandler
    would fail unpacking it, and RunInference would report a failed batch for every such site.
    """

    def run_inference(self, batch, model, inference_args=None):
        if not batch:
            return []
        return super().run_inference(batch, model, inference_args)

    def get_num_bytes(self, batch) -> int:  # RunInference sizes every batch it ran, the empty one too
        return super().get_num_bytes(batch) if batch else 0


@dataclass(frozen=True)
class SiteInfo:
    """What a site's Parquet file needs besides the vectors, carried through inference as the key."""

    key: str
    metadata: tuple[tuple[str, str], ...]
    cell_indices: tuple[int, ...]
    centres: tuple[tuple[float, float], ...]


class CutCells(ReadAheadDoFn):
    """Read a site, cut its cells; emit (the site's description, its crops).

    Images in an object store are read ahead (``ReadAheadDoFn``) while earlier sites are cut and run
    through the model. A site that yields no features in this run has its earlier feature file
    (from a run under ``--overwrite``) removed: otherwise it would pass as current.
    """

    def __init__(self, source: CellSource):
        self.source = source

    def setup(self) -> None:
        # A worker process loads the crop kernel while its first sites are read (the launcher may not have).
        warm_up_cutting(self.source.use_compressed)
        super().setup()

    def process(self, site: Site) -> Iterator:
        yield from self.read_ahead(site)

    def reads_ahead(self, site: Site) -> bool:
        return self.source.in_a_bucket(site)

    def fetch(self, site: Site) -> SiteData:
        return self.source.load(site)

    def emit(self, site: Site, fetched) -> Iterator:
        try:
            cut = self.source.cut_loaded(fetched.result())
        except LocationsMissing as error:
            yield beam.pvalue.TaggedOutput("failed", failure(NO_CELLS, site.key, self._unpublish(site, str(error))))
        except (LocationsError, ImageReadError, UnsafePathError) as error:
            inc_counter(NAMESPACE, "sites_failed")
            yield beam.pvalue.TaggedOutput("failed", failure("read", site.key, self._unpublish(site, str(error))))
        else:
            yield from self._emit(site, cut)

    def _unpublish(self, site: Site, reason: str) -> str:
        return unpublish(self.source.layout, site.key, reason)

    def _emit(self, site: Site, cut) -> Iterator:
        kept = [int(i) for i in cut.batch.kept]
        if not kept:
            yield beam.pvalue.TaggedOutput("failed", failure(
                NO_CELLS, site.key, self._unpublish(site, f"no usable cell ({cut.batch.outside} outside the "
                                                          f"image, {cut.batch.invalid} with NaN)")))
        else:
            inc_counter(NAMESPACE, "sites_read")
            inc_counter(NAMESPACE, "cells_cut", len(kept))
            info = SiteInfo(site.key, site.metadata, tuple(kept),
                            tuple((float(x), float(y)) for x, y in cut.centres[kept]))
            yield info, cut.batch.crops


def unpublish(layout: ProjectLayout, site_key: str, reason: str) -> str:
    """A site that failed in this run loses the feature file an earlier run left: it would pass as current.
    Returns the failure's reason, saying so when a file was removed."""
    plate, well, site = features.split_site_key(site_key)
    stale = features.site_file(layout.features_dir, plate, well, site)
    if not stale.exists():
        return reason
    stale.remove()
    inc_counter(NAMESPACE, "stale_sites_removed")
    return f"{reason} (its features from an earlier run were removed)"


class UnpublishFailedInference(beam.DoFn):
    """A batch the model failed on -> one failure per site in it; their earlier files go."""

    def __init__(self, layout: ProjectLayout):
        self.layout = layout

    def process(self, element) -> Iterator[dict]:
        batch, error = element
        inc_counter(NAMESPACE, "sites_failed", len(batch))
        for info, _ in batch:
            yield failure("inference", info.key, unpublish(self.layout, info.key, error_text(error)))


def error_text(error) -> str:
    """``Type: message`` of what Beam's exception handling passes on: (type, repr, formatted traceback)."""
    if isinstance(error, tuple) and len(error) == 3 and error[2]:
        return str(error[2][-1]).strip()
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


class WriteSiteFeatures(beam.DoFn):
    """(site info, vectors) -> the site's Parquet file, committed when it is renamed into place."""

    def __init__(self, layout: ProjectLayout, model_name: str):
        self.layout = layout
        self.model_name = model_name

    def process(self, element: tuple[SiteInfo, np.ndarray]) -> Iterator[tuple[str, int]]:
        info, vectors = element
        table = feature_table(dict(info.metadata), self.model_name, np.array(info.cell_indices),
                              np.array(info.centres), vectors)
        plate, well, site = features.split_site_key(info.key)
        features.site_file(self.layout.features_dir, plate, well, site).write_bytes(feature_parquet(table))
        inc_counter(NAMESPACE, "sites_written")
        yield info.key, len(info.cell_indices)


class SitesToDo(beam.DoFn):
    """A plate's sites -> those still to profile; one listing of the plate's feature folder.

    Committed sites (their file exists) are counted on the ``kept`` output.
    """

    def __init__(self, features_dir: StoragePath, overwrite: bool):
        self.features_dir = features_dir
        self.overwrite = overwrite

    def process(self, element: tuple[str, Iterable[Site]]) -> Iterator:
        plate, sites = element
        done = set() if self.overwrite else features.committed_in_plate(self.features_dir, plate)
        for site in sites:
            if site.key in done:
                inc_counter(NAMESPACE, "sites_already_committed")
                yield beam.pvalue.TaggedOutput("kept", 1)
            else:
                yield site


class WriteRunRecord(beam.DoFn):
    """The run's last step: the features' manifest and this index's run record."""

    def __init__(self, features_dir: StoragePath, index: StoragePath, description: dict):
        self.features_dir = features_dir
        self.index = index
        self.description = description

    def process(self, _, written: tuple[int, int], kept: int, failures: int,
                dead_letter_files: list[str]) -> Iterator[dict]:
        sites_written, cells = written
        record = {"index": str(self.index), "sites_written": sites_written, "cells_profiled": cells,
                  "sites_committed_earlier": kept, "sites_committed": sites_written + kept,
                  "failure_records": failures}
        (self.features_dir / features.MANIFEST_NAME).write_text(json.dumps(self.description, indent=2,
                                                                           sort_keys=True))
        features.run_record_file(self.features_dir, self.index).write_text(json.dumps(record, indent=2,
                                                                                      sort_keys=True))
        yield record


def _sum_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    sites = cells = 0
    for a, b in pairs:
        sites += a
        cells += b
    return sites, cells


@dataclass
class ProfileSites(beam.PTransform):
    source: CellSource
    spec: FeatureModelSpec
    batch_size: int
    index_path: str
    overwrite: bool
    failures_file: StoragePath
    description: dict
    # A Beam resource hint for the inference step only, e.g. on Dataflow
    # "type:nvidia-tesla-t4;count:1;install-nvidia-driver": reading and cropping stay on CPU workers.
    accelerator: str | None = None
    # Crops -> vectors; FeatureModelHandler(spec, batch_size, engine, cpu_share) unless a test passes a fake one.
    model_handler: ModelHandler | None = None
    engine: str = "auto"  # dpcore.inference_engines.ENGINES
    cpu_share: CpuShare = WHOLE_PROCESS  # OpenVINO's threads and streams per worker process

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        array_coder.register()  # crops are measured by Beam's workers: from their size, not by pickling them
        features_dir = self.source.layout.features_dir
        read = pbegin | "ReadSites" >> ReadSites(self.index_path, self.source.channels)
        todo = (
            read["sites"]
            | "KeyByPlate" >> beam.Map(lambda site: (site.plate, site))
            | "GroupByPlate" >> beam.GroupByKey()
            | "SitesToDo" >> beam.ParDo(SitesToDo(features_dir, self.overwrite)).with_outputs("kept", main="sites")
        )
        cut = (
            todo.sites
            | "SpreadSites" >> beam.Reshuffle()
            | "CutCells" >> beam.ParDo(CutCells(self.source)).with_output_types(tuple[SiteInfo, np.ndarray])
            .with_outputs("failed", main="crops")
        )
        handler = SiteModelHandler(self.model_handler or FeatureModelHandler(
            self.spec, self.batch_size, self.engine, self.cpu_share))
        inference = RunInference(handler).with_exception_handling()
        if self.accelerator:
            inference = inference.with_resource_hints(accelerator=self.accelerator)
        inferred, dead = cut.crops | "RunInference" >> inference
        failed_inference = dead.failed_inferences | "InferenceFailures" >> beam.ParDo(
            UnpublishFailedInference(self.source.layout))
        written = inferred | "WriteSiteFeatures" >> beam.ParDo(
            WriteSiteFeatures(self.source.layout, self.spec.model_name))
        failed = (read["failed"], cut.failed, failed_inference) | "AllFailures" >> beam.Flatten()
        # A side input of the run record only to order them: when the record appears, the failure file is final.
        dead_letters = failed | "DeadLetters" >> WriteDeadLetters(self.failures_file)
        counts = {
            "written": written | "AddUpWritten" >> beam.CombineGlobally(_AddUpWritten()),
            "kept": todo.kept | "CountKept" >> beam.CombineGlobally(sum),
            "failures": failed | "CountFailures" >> beam.combiners.Count.Globally(),
        }
        return (
            pbegin
            | "RunRecordTrigger" >> beam.Create([None])
            | "WriteRunRecord" >> beam.ParDo(
                WriteRunRecord(features_dir, as_storage_path(self.index_path), self.description),
                beam.pvalue.AsSingleton(counts["written"]), beam.pvalue.AsSingleton(counts["kept"]),
                beam.pvalue.AsSingleton(counts["failures"]), beam.pvalue.AsList(dead_letters))
        )


class _AddUpWritten(beam.CombineFn):
    """(site key, cells) -> (sites, cells)."""

    def create_accumulator(self) -> tuple[int, int]:
        return 0, 0

    def add_input(self, accumulator, element):
        return accumulator[0] + 1, accumulator[1] + element[1]

    def merge_accumulators(self, accumulators):
        return _sum_pairs(accumulators)

    def extract_output(self, accumulator):
        return accumulator


# ------------------------------------------------------------------- command
def resolve_checkpoint(layout: ProjectLayout, name: str | None) -> StoragePath | None:
    if name is None:
        return None
    if "://" in name or name.startswith("/"):
        return as_storage_path(name)
    return layout.checkpoint_dir / name


def build_spec(layout: ProjectLayout, config: Config, pretrained: str | None,
               missing_checkpoint_ok: bool = False) -> FeatureModelSpec:
    """What profile will run. ``missing_checkpoint_ok`` (validate, before training) builds the model without a
    ``profile.checkpoint`` that does not exist yet, so its layer can still be checked."""
    model = config.train.model
    source_box = config.dataset.locations.box_size
    crop_shape = (source_box, source_box, len(config.channels))
    if model.crop_generator == "repeat_channel_crop_generator":
        size = config.profile.use_pretrained_input_size
        if size is None:
            raise ConfigError(config.source, [
                "profile.use_pretrained_input_size is required by repeat_channel_crop_generator (224 or 299)"])
        weights = as_storage_path(pretrained) if pretrained else pretrained_weights_file(
            layout.pretrained_dir, model.name, model.params.conv_blocks)
        if not weights.exists():
            raise UsageError(
                f"ImageNet weights for {model.name} are needed and cannot be downloaded here: put the Keras "
                f"'notop' weights file at {weights} or pass --pretrained-weights FILE")
        return FeatureModelSpec(model.name, model.params.conv_blocks, config.profile.feature_layer, crop_shape,
                                repeat_channel_size=size, pretrained_weights=str(weights))
    checkpoint = resolve_checkpoint(layout, config.profile.checkpoint)
    classes = 2
    if checkpoint is not None:
        if not checkpoint.exists():
            if not missing_checkpoint_ok:
                raise UsageError(f"profile.checkpoint {config.profile.checkpoint!r}: {checkpoint} does not exist")
            checkpoint = None
        else:
            classes = classes_in_checkpoint(checkpoint) or classes
    return FeatureModelSpec(model.name, model.params.conv_blocks, config.profile.feature_layer, crop_shape,
                            num_classes=classes, checkpoint=str(checkpoint) if checkpoint else None,
                            feature_dim=model.params.feature_dim)


def build(pipeline: beam.Pipeline, source: CellSource, spec: FeatureModelSpec, batch_size: int,
          index_path: StoragePath, overwrite: bool, description: dict, accelerator: str | None = None,
          engine: str = "auto", cpu_share: CpuShare = WHOLE_PROCESS) -> None:
    _ = pipeline | "Profile" >> ProfileSites(
        source, spec, batch_size, str(index_path), overwrite,
        features.failures_file(source.layout.features_dir, index_path), description, accelerator,
        engine=engine, cpu_share=cpu_share)


def local_model_callers(beam_args: tuple[str, ...]) -> int:
    """How many workers of a local DirectRunner may call the model at once (1 elsewhere: a remote
    worker's cores are not this machine's)."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions  # noqa: PLC0415

    options = PipelineOptions(list(beam_args))
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if "DirectRunner" not in str(runner):
        return 1
    return max(1, options.view_as(DirectOptions).direct_num_workers or 1)


def local_cpu_share(beam_args: tuple[str, ...], threads_per_call: int | None) -> CpuShare:
    """OpenVINO's share of a worker process (``dpcore.inference_engines``): local worker threads each get a
    stream of the process's cores; local worker processes one stream of their part of the machine's."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions  # noqa: PLC0415

    callers = local_model_callers(beam_args)
    if PipelineOptions(list(beam_args)).view_as(DirectOptions).direct_running_mode == "multi_processing":
        return CpuShare(threads=threads_per_call if callers > 1 else None)
    return CpuShare(streams=callers)


def describe(spec: FeatureModelSpec, dimension: int, config: Config) -> dict:
    """The features' manifest: which model made them (``dpcore.features.MODEL_KEYS`` must agree to add sites)."""
    return {
        "model": spec.model_name, "conv_blocks": spec.conv_blocks, "feature_layer": spec.feature_layer,
        "features_per_cell": dimension, "feature_prefix": f"{spec.model_name}_",
        "checkpoint": spec.checkpoint, "checkpoint_sha256": file_sha256(StoragePath(spec.checkpoint))
        if spec.checkpoint else None,
        "pretrained_weights": spec.pretrained_weights, "config_fingerprint": config.fingerprint,
        "precision": spec.acceleration.precision,
    }


def _progress(layout: ProjectLayout, scan, overwrite: bool) -> OutputProgress:
    """Sites' Parquet files written while the job runs, out of those not committed before it."""
    watched = OutputProgress("profile", [layout.features_dir / plate for plate in sorted(scan.plates)],
                             ".parquet", "sites", scan.sites)
    if overwrite or not watched.local:
        return watched
    return replace(watched, total=max(scan.sites - watched.count_since(0.0), 0))  # skipped sites are not work


def run_command(context: CommandContext, args: argparse.Namespace, emit) -> int:
    config = context.load_config("profile")
    if context.workers_in_this_process:  # the crop kernel loads while the model is built
        warm_up_cutting(config.prepare.compression.implement)
    context = context.with_config_paths(config)
    context.select_gpu()
    layout = context.layout
    if args.part >= 0:
        layout = ProjectLayout.create(layout.root, layout.experiment, layout.single_cells,
                                      layout.split_index_file(args.part).url, layout.overrides)
    scan = scan_index(layout.index_file, config, "profile")  # fail fast on a bad index; nothing per site is kept
    # With the local default parallelism (beam_pipelines.context.local_parallelism) for this many sites.
    beam_args = context.sized_for(scan.sites).beam_args
    # Before TensorFlow starts in this process (the probe below) and in local worker processes.
    with cores_shared(local_model_callers(beam_args)) as per_call:
        if per_call:
            logger.info("local workers call the model with %d TensorFlow thread(s) each", per_call)
        return _profile(config, layout, beam_args, args, emit, scan, local_cpu_share(beam_args, per_call))


def _profile(config: Config, layout: ProjectLayout, beam_args: tuple[str, ...], args: argparse.Namespace,
             emit, scan, cpu_share: CpuShare) -> int:
    source = CellSource.from_config(layout, config)
    batch_size, acceleration = acceleration_options(args, config.profile.batch_size, "profile.batch_size")
    engine = getattr(args, "inference_engine", "auto")
    try:
        check_engine(engine, acceleration)
    except EngineError as error:
        raise UsageError(str(error)) from error
    spec = replace(build_spec(layout, config, args.pretrained_weights), acceleration=acceleration)
    try:
        probe = spec.build()  # fail before the pipeline: unknown layer, wrong checkpoint, missing weights
    except CheckpointError as error:
        raise UsageError(str(error)) from error
    dimension = int(probe.output.shape[-1])
    _CHECKED_MODELS[spec] = probe
    try:
        return _run_job(config, layout, beam_args, args, emit, spec, scan, source, dimension, batch_size,
                        engine, cpu_share)
    finally:
        _CHECKED_MODELS.pop(spec, None)


def _run_job(config: Config, layout: ProjectLayout, beam_args: tuple[str, ...], args: argparse.Namespace, emit,
             spec: FeatureModelSpec, scan, source: CellSource, dimension: int, batch_size: int, engine: str,
             cpu_share: CpuShare) -> int:
    index_path = layout.index_file
    description = describe(spec, dimension, config)
    existing = features.read_manifest(layout.features_dir)
    if existing and not args.overwrite and features.model_differences(existing, description):
        raise UsageError(
            f"the features in {layout.features_dir} were made with another model or config "
            f"({', '.join(features.model_differences(existing, description))} differ): new sites would not be "
            f"comparable. Use --overwrite to redo every site, or another --exp")
    emit(f"profile: {scan.sites} site(s) in {len(scan.plates)} plate(s) from {index_path}"
         f"{'' if args.overwrite else ' (committed sites are skipped)'}; model {spec.model_name} "
         f"(conv_blocks {spec.conv_blocks}), layer {spec.feature_layer} -> {dimension} features per cell; "
         f"batch {batch_size}, {spec.acceleration.describe()}, engine {engine}"
         f"{' (OpenVINO on CPUs, TensorFlow on GPUs)' if engine == 'auto' else ''}")
    record_file = features.run_record_file(layout.features_dir, index_path)
    build_profile = (lambda pipeline: build(pipeline, source, spec, batch_size, index_path,
                                            args.overwrite, description, args.inference_accelerator, engine,
                                            cpu_share))
    if args.dry_run:
        for line in describe_graph(build_profile, beam_args):
            emit(line)
        return 0
    with output_lock(layout.features_dir, "profile"):
        record_file.remove()  # the job writes it last: one from an earlier run must not pass for this one's
        run = run_pipeline(
            build_profile,
            beam_args, NAMESPACE, detach=getattr(args, "detach", False),
            commit=record_file,
            progress=_progress(layout, scan, args.overwrite))
    if run.detached:
        emit(run.detached_message)
        return 0
    record = json.loads(record_file.read_text())
    failures_file = features.failures_file(layout.features_dir, index_path)
    failures = read_failures(failures_file)
    emit(f"sites written this run: {record['sites_written']}; cells profiled: {record['cells_profiled']}; "
         f"committed by earlier runs and kept: {record['sites_committed_earlier']}; "
         f"sites with features now: {record['sites_committed']} of {scan.sites}")
    stale = run.counters.get("stale_sites_removed", 0)
    if stale:
        emit(f"{stale} site(s) failed in this run and lost their features from an earlier run (see the failures)")
    emit(f"features: {layout.features_dir}/<plate>/<well>-<site>.parquet (a Parquet dataset: "
         f"pd.read_parquet('{layout.features_dir}') reads them all); manifest: "
         f"{layout.features_dir / features.MANIFEST_NAME}; this run: {record_file}")
    no_cells = [f for f in failures if f["stage"] == NO_CELLS]
    real = [f for f in failures if f["stage"] != NO_CELLS]
    if no_cells:
        emit(f"{len(no_cells)} site(s) without cells (listed in {failures_file}): "
             + ", ".join(f["item"] for f in no_cells[:10]))
    return report_failures(real, failures_file, emit)
