"""``dpbeam profile``: per-cell deep features with Beam RunInference, written to Parquet.

::

    ReadIndex -> SitesToDo -> Reshuffle -> CutCells --(failed / no cells)--------------> dead letters
                                             | ("plate|well|site|cell", crop)   | (site key, site info)
                          RunInference(KeyedModelHandler(FeatureModelHandler))  |
                          batched by profile.batch_size across sites            |
                                             | (cell key, vector) --(failed)---> dead letters
                                        KeyBySite -> CoGroupByKey <--------------+
                                             |
                                        WriteSiteFeatures -> features/<plate>/<well>-<site>.parquet
                                             |
                                        WriteManifest -> features/manifest.json

A site is committed when its Parquet file is renamed into place; a re-run skips
committed sites unless ``--overwrite``. The model is built once per worker by
the model handler (``load_model``) and runs as a compiled ``tf.function``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from dpcore.checkpoints import CheckpointError, file_sha256
from dpcore.config import Config, ConfigError
from dpcore.images import ImageReadError
from dpcore.layout import ProjectLayout, UnsafePathError
from dpcore.locations import LocationsError, LocationsMissing
from dpcore.locking import output_lock
from dpcore.metadata import Site, load_sites, read_sites
from dpcore.profiling import FeatureModelSpec, classes_in_checkpoint, feature_frame, pretrained_weights_file
from dpcore.single_cells import CellSource
from dpcore.storage import StoragePath, as_storage_path

from beam_pipelines.context import CommandContext, UsageError
from beam_pipelines.dead_letter import WriteDeadLetters, failure, read_failures, report_failures
from beam_pipelines.progress import counter_values, inc_counter

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.profile"
MANIFEST_NAME = "manifest.json"
NO_CELLS = "no-cells"  # dead-letter stage that reports, but does not fail the run


class FeatureModelHandler(ModelHandler[np.ndarray, np.ndarray, Any]):
    """Crops -> feature vectors with our Keras feature model.

    Our own handler rather than Beam's ``TFModelHandlerNumpy``: the model is
    built from the zoo and weights are loaded by layer name (DeepProfiler's
    checkpoints), and inference runs compiled (Beam's default runs eagerly,
    2.5-4x slower).
    """

    def __init__(self, spec: FeatureModelSpec, batch_size: int):
        super().__init__()
        self.spec = spec
        self.batch_size = batch_size

    def load_model(self):
        from dpcore.models import predict_function  # noqa: PLC0415 -- TF loads on workers only
        return predict_function(self.spec.build())

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[np.ndarray]:
        vectors = model(np.stack(batch))
        inc_counter(NAMESPACE, "cells_inferred", len(batch))
        return list(vectors)

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(x.nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


@dataclass(frozen=True)
class SiteInfo:
    metadata: tuple[tuple[str, str], ...]
    cell_indices: tuple[int, ...]
    centres: tuple[tuple[float, float], ...]


def _cell_key(site: Site, cell: int) -> str:
    return f"{site.plate}|{site.well}|{site.site}|{cell}"


class CutCells(beam.DoFn):
    """Read a site, cut its cells; emit keyed crops and, once, the site's description."""

    def __init__(self, source: CellSource):
        self.source = source

    def process(self, site: Site) -> Iterator:
        try:
            cut = self.source.cut(site)
        except LocationsMissing as error:
            yield beam.pvalue.TaggedOutput("failed", failure(NO_CELLS, site.key, str(error)))
        except (LocationsError, ImageReadError, UnsafePathError) as error:
            inc_counter(NAMESPACE, "sites_failed")
            yield beam.pvalue.TaggedOutput("failed", failure("read", site.key, str(error)))
        else:
            yield from self._emit(site, cut)

    def _emit(self, site: Site, cut) -> Iterator:
        kept = [int(i) for i in cut.batch.kept]
        if not kept:
            yield beam.pvalue.TaggedOutput("failed", failure(
                NO_CELLS, site.key, f"no usable cell ({cut.batch.outside} outside the image, "
                                    f"{cut.batch.invalid} with NaN)"))
        else:
            inc_counter(NAMESPACE, "sites_read")
            inc_counter(NAMESPACE, "cells_cut", len(kept))
            yield beam.pvalue.TaggedOutput("sites", (site.key, SiteInfo(
                site.metadata, tuple(kept), tuple((float(x), float(y)) for x, y in cut.centres[kept]))))
            for crop, cell in zip(cut.batch.crops, kept):
                yield _cell_key(site, cell), crop


def _by_site(element: tuple[str, np.ndarray]) -> tuple[str, tuple[int, np.ndarray]]:
    key, vector = element
    plate, well, site, cell = key.split("|")
    return f"{plate}/{well}-{site}", (int(cell), np.asarray(vector, dtype=np.float32))


def _failed_batch(element) -> Iterator[dict]:
    batch, error = element
    for key, _ in batch:
        yield failure("inference", key.replace("|", "/", 1), f"{type(error).__name__}: {error}")


class WriteSiteFeatures(beam.DoFn):
    def __init__(self, layout: ProjectLayout, model_name: str):
        self.layout = layout
        self.model_name = model_name

    def process(self, element) -> Iterator[tuple[str, int]]:
        key, grouped = element
        infos, vectors = list(grouped["info"]), sorted(grouped["vectors"], key=lambda cv: cv[0])
        # No vectors: every cell of the site failed inference, which the dead letter reports.
        if infos and vectors:
            yield self._write(key, infos[0], vectors)

    def _write(self, key: str, info: SiteInfo, vectors: list) -> tuple[str, int]:
        by_cell = dict(vectors)
        cells = [c for c in info.cell_indices if c in by_cell]
        centres = np.array([xy for c, xy in zip(info.cell_indices, info.centres) if c in by_cell])
        frame = feature_frame(dict(info.metadata), self.model_name, np.array(cells), centres,
                              np.stack([by_cell[c] for c in cells]))
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        site_file(self.layout, *_split_key(key)).write_bytes(buffer.getvalue())  # the site is committed here
        inc_counter(NAMESPACE, "sites_written")
        return key, len(cells)


def _split_key(key: str) -> tuple[str, str, str]:
    plate, rest = key.split("/", 1)
    well, site = rest.rsplit("-", 1)
    return plate, well, site


def site_file(layout: ProjectLayout, plate: str, well: str, site: str) -> StoragePath:
    return layout.features_dir / plate / f"{well}-{site}.parquet"


def committed_sites(layout: ProjectLayout) -> set[str]:
    """Keys of sites whose Parquet file exists (written atomically, so complete). One listing."""
    done = set()
    for path in layout.features_dir.glob("*/*.parquet"):
        plate = path.parent.name
        well, site = path.name[: -len(".parquet")].rsplit("-", 1)
        done.add(f"{plate}/{well}-{site}")
    return done


@dataclass
class ProfileSites(beam.PTransform):
    source: CellSource
    spec: FeatureModelSpec
    batch_size: int
    index_path: str
    skip: frozenset
    failures_file: StoragePath
    # A Beam resource hint for the inference step only, e.g. on Dataflow
    # "type:nvidia-tesla-t4;count:1;install-nvidia-driver": reading and cropping stay on CPU workers.
    accelerator: str | None = None

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        cut = (
            pbegin
            | "IndexFile" >> beam.Create([self.index_path])
            | "ReadIndex" >> beam.FlatMap(read_sites, self.source.channels)
            | "SitesToDo" >> beam.Filter(lambda site, skip: site.key not in skip, self.skip)
            | "SpreadSites" >> beam.Reshuffle()
            | "CutCells" >> beam.ParDo(CutCells(self.source)).with_outputs("failed", "sites", main="crops")
        )
        handler = KeyedModelHandler(FeatureModelHandler(self.spec, self.batch_size))
        inference = RunInference(handler).with_exception_handling()
        if self.accelerator:
            inference = inference.with_resource_hints(accelerator=self.accelerator)
        inferred, dead = cut.crops | "RunInference" >> inference
        failed_inference = dead.failed_inferences | "InferenceFailures" >> beam.FlatMap(_failed_batch)
        written = (
            {"info": cut.sites, "vectors": inferred | "KeyBySite" >> beam.Map(_by_site)}
            | "JoinSites" >> beam.CoGroupByKey()
            | "WriteSiteFeatures" >> beam.ParDo(WriteSiteFeatures(self.source.layout, self.spec.model_name))
        )
        (cut.failed, failed_inference) | "AllFailures" >> beam.Flatten() | "DeadLetters" >> WriteDeadLetters(
            self.failures_file)
        return written


# ------------------------------------------------------------------- command
def resolve_checkpoint(layout: ProjectLayout, name: str | None) -> StoragePath | None:
    if name is None:
        return None
    if "://" in name or name.startswith("/"):
        return as_storage_path(name)
    return layout.checkpoint_dir / name


def build_spec(layout: ProjectLayout, config: Config, pretrained: str | None) -> FeatureModelSpec:
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
            raise UsageError(f"profile.checkpoint {config.profile.checkpoint!r}: {checkpoint} does not exist")
        classes = classes_in_checkpoint(checkpoint) or classes
    return FeatureModelSpec(model.name, model.params.conv_blocks, config.profile.feature_layer, crop_shape,
                            num_classes=classes, checkpoint=str(checkpoint) if checkpoint else None)


def run(source: CellSource, spec: FeatureModelSpec, batch_size: int, index_path: str, skip: frozenset,
        failures_file: StoragePath, beam_args=(), test_pipeline=None, accelerator: str | None = None
        ) -> tuple[dict, list]:
    pipeline = test_pipeline or beam.Pipeline(options=PipelineOptions(list(beam_args)))
    written = pipeline | "Profile" >> ProfileSites(source, spec, batch_size, index_path, skip, failures_file,
                                                   accelerator)
    _ = written | "CountWritten" >> beam.combiners.Count.Globally()
    result = pipeline.run()
    result.wait_until_finish()
    return counter_values(result, NAMESPACE), read_failures(failures_file)


def local_parallelism(beam_args: tuple[str, ...]) -> tuple[str, ...]:
    """On the local DirectRunner, default to one thread per core.

    Cropping (numpy) and inference (TensorFlow) take comparable CPU time per
    cell; threads let one site be cut while another batch is inferred. Users'
    own --runner/--direct_* choices always win.
    """
    chosen = " ".join(beam_args)
    if "--runner" in chosen and "DirectRunner" not in chosen:
        return beam_args
    if "--direct_num_workers" in chosen or "--direct_running_mode" in chosen:
        return beam_args
    return beam_args + (f"--direct_num_workers={os.cpu_count() or 1}", "--direct_running_mode=multi_threading")


def run_command(context: CommandContext, args: argparse.Namespace, emit) -> int:
    config = context.load_config("profile")
    context = context.with_config_paths(config)
    context.select_gpu()
    layout = context.layout
    if args.part >= 0:
        layout = ProjectLayout.create(layout.root, layout.experiment, layout.single_cells,
                                      layout.split_index_file(args.part).url, layout.overrides)
    index_path = layout.index_file
    sites = load_sites(index_path, config, "profile")
    source = CellSource.from_config(layout, config)
    spec = build_spec(layout, config, args.pretrained_weights)
    try:
        probe = spec.build()  # fail before the pipeline: unknown layer, wrong checkpoint, missing weights
    except CheckpointError as error:
        raise UsageError(str(error)) from error
    dimension = int(probe.output.shape[-1])
    del probe
    skip = frozenset() if args.overwrite else frozenset(committed_sites(layout) & {s.key for s in sites})
    emit(f"profile: {len(sites)} site(s) from {index_path}; {len(skip)} already committed and skipped; "
         f"model {spec.model_name} (conv_blocks {spec.conv_blocks}), layer {spec.feature_layer} "
         f"-> {dimension} features per cell")
    failures_file = layout.features_dir / "_failed" / "profile-failures.jsonl"
    counters, failures = ({}, [])
    if len(skip) < len(sites):
        with output_lock(layout.features_dir, "profile"):
            counters, failures = run(source, spec, config.profile.batch_size, str(index_path), skip, failures_file,
                                     local_parallelism(context.beam_args), accelerator=args.inference_accelerator)
    manifest = {
        "model": spec.model_name, "conv_blocks": spec.conv_blocks, "feature_layer": spec.feature_layer,
        "features_per_cell": dimension, "feature_prefix": f"{spec.model_name}_",
        "checkpoint": spec.checkpoint, "checkpoint_sha256": file_sha256(StoragePath(spec.checkpoint))
        if spec.checkpoint else None,
        "pretrained_weights": spec.pretrained_weights, "config_fingerprint": config.fingerprint,
        "index": str(index_path), "sites_in_index": len(sites),
        "sites_committed": len(committed_sites(layout) & {s.key for s in sites}),
        "cells_this_run": counters.get("cells_inferred", 0),
    }
    (layout.features_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    emit(f"sites written this run: {counters.get('sites_written', 0)}; cells profiled: "
         f"{counters.get('cells_inferred', 0)}; sites committed in all: {manifest['sites_committed']} "
         f"of {len(sites)}")
    emit(f"features: {layout.features_dir}/<plate>/<well>-<site>.parquet; manifest: "
         f"{layout.features_dir / MANIFEST_NAME}")
    no_cells = [f for f in failures if f["stage"] == NO_CELLS]
    real = [f for f in failures if f["stage"] != NO_CELLS]
    if no_cells:
        emit(f"{len(no_cells)} site(s) without cells (listed in {failures_file}): "
             + ", ".join(f["item"] for f in no_cells[:10]))
    return report_failures(real, failures_file, emit)
