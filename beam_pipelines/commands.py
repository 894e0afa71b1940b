"""The registry of ``dpbeam`` commands: name, help, options and what runs.

Each entry wires parsed arguments to a function in ``dpcore`` (for the
commands that run no pipeline) or to a pipeline module in this package.
Pipeline modules are imported only when their command runs, so ``dpbeam
--help`` and ``dpbeam setup`` stay fast and never load TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from dataclasses import dataclass
from typing import Callable

from dpcore.acceleration import PRECISIONS
from dpcore.inference_engines import ENGINES
from dpcore.example import EXAMPLE_CONFIG, write_example_project
from dpcore.sc_export import DEFAULT_SHARD_MB, MIN_SHARDS
from dpcore.split import split_index
from dpcore.validate import validate_project

from beam_pipelines.context import CommandContext, UsageError
from beam_pipelines.preflight import PIPELINE_COMMANDS, check_command, misspelt_keys

logger = logging.getLogger(__name__)

Emit = Callable[[str], None]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[CommandContext, argparse.Namespace, Emit], int]
    uses_beam: bool = False
    aliases: tuple[str, ...] = ()  # other names DeepProfiler gave the command
    local_threads: bool = True  # locally one worker thread per core; False: one in-process worker (aggregate)


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


# ------------------------------------------------------------------- setup
def _run_setup(context: CommandContext, args: argparse.Namespace, emit: Emit) -> int:
    if context.config_name:
        context = context.with_config_paths(context.load_config("setup"))
    for folder in context.layout.setup_folders():
        created = folder.mkdir()
        emit(f"{'created' if created else 'exists '}  {folder}")
    return 0


# ---------------------------------------------------------------- validate
def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commands", default=",".join(PIPELINE_COMMANDS), metavar="LIST",
                        help="the commands the config must be ready for, comma-separated (default: "
                             f"{','.join(PIPELINE_COMMANDS)}); each command's own pre-start checks run: "
                             "required keys, crop settings, train's model settings, profile's model, "
                             "feature layer and checkpoint (profile's check loads TensorFlow)")


def _commands_to_check(value: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    unknown = [name for name in chosen if name not in PIPELINE_COMMANDS]
    if unknown or not chosen:
        raise UsageError(f"--commands takes names from {', '.join(PIPELINE_COMMANDS)}, got {value!r}")
    return chosen


def _run_validate(context: CommandContext, args: argparse.Namespace, emit: Emit) -> int:
    chosen = _commands_to_check(args.commands)
    config = context.load_config("validate")
    context = context.with_config_paths(config)
    emit(f"validating {context.layout.root} with {config.source} and index {context.layout.index_file} "
         f"for {', '.join(chosen)}")
    report = validate_project(context.layout, config, chosen)
    # A typo is a problem (the command would ignore the key silently); other unknown keys only a note.
    report.problems[:0] = misspelt_keys(config)
    report.notes += [f"{key} is not a config key dpbeam uses (ignored)"
                     for key, known in config.unknown_keys.items() if not known]
    verdicts = [check_command(command, context.layout, config) for command in chosen]
    for verdict in verdicts:
        report.problems += [f"{verdict.command}: {problem}" for problem in verdict.problems]
        report.notes += verdict.notes
    ready = [v.command for v in verdicts if v.ready]
    refused = [v.command for v in verdicts if not v.ready]
    report.readiness.append(f"config ready for: {', '.join(ready) or 'none'}"
                            + (f"; refused by: {', '.join(refused)} (see the problems)" if refused else ""))
    for line in report.lines():
        emit(line)
    return 0 if report.ok else 1


# ----------------------------------------------------------------- example
def _example_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace files that already exist")


def _run_example(context: CommandContext, args: argparse.Namespace, emit: Emit) -> int:
    written = write_example_project(context.layout.root, overwrite=args.overwrite)
    emit(f"example project (BBBC022 subset, CC0; see tests/data/README.md for citation) at {context.layout.root}: "
         f"{len(written)} file(s) written")
    emit(f"next: dpbeam --root {context.layout.root} --config {EXAMPLE_CONFIG} validate")
    return 0


# ------------------------------------------------------------------- split
def _split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", type=int, required=True, help="number of parts (wells are never divided)")


def _run_split(context: CommandContext, args: argparse.Namespace, emit: Emit) -> int:
    if context.config_name:
        context = context.with_config_paths(context.load_config("split"))
    # The summary goes to standard output once; the library logs the same only at DEBUG.
    for part in split_index(context.layout, args.parts):
        emit(f"wrote {part.path} ({part.sites} sites, {part.wells} well{'' if part.wells == 1 else 's'})")
    return 0


# ---------------------------------------------------------- import-loaddata
def _import_loaddata_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csvs", nargs="+", metavar="CSV",
                        help="CellProfiler LoadData CSV(s), local or in a bucket (e.g. the Cell Painting Gallery's "
                             "load_data_csv/<batch>/<plate>/load_data_with_illum.csv); several plates at once")
    parser.add_argument("--platemap", action="append", default=[], metavar="CSV",
                        help="a CSV of annotations joined onto the rows (repeat for several, applied in order)")
    parser.add_argument("--join", action="append", nargs="+", default=[], metavar="COLUMN",
                        help="the columns the preceding --platemap is joined on (one --join per --platemap), "
                             "e.g. --platemap well.csv --join Metadata_Plate Metadata_Well")
    parser.add_argument("--image-name", action="append", default=[], metavar="CHANNEL=NAME",
                        help="LoadData image name of a config channel (default: Orig<channel>, e.g. OrigDNA)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index file")


def _run_import_loaddata(context: CommandContext, args: argparse.Namespace, emit: Emit) -> int:
    from dpcore import loaddata  # noqa: PLC0415 -- pandas only when the command runs
    from dpcore.storage import as_storage_path  # noqa: PLC0415

    from beam_pipelines.dead_letter import failure, report_failures  # noqa: PLC0415

    config = context.load_config("import-loaddata")
    context = context.with_config_paths(config)
    if len(args.platemap) != len(args.join):
        raise UsageError(f"{len(args.platemap)} --platemap but {len(args.join)} --join: give each platemap the "
                         f"columns it is joined on, e.g. --platemap well.csv --join Metadata_Plate Metadata_Well")
    target = context.layout.index_file
    if target.exists() and not args.overwrite:
        raise UsageError(f"{target} exists: pass --overwrite to replace it (or --metadata NAME for another file)")
    platemaps = [loaddata.Platemap(str(path), loaddata.read_csv(path), tuple(columns))
                 for path, columns in zip(map(as_storage_path, args.platemap), args.join)]
    label = config.dataset.metadata.label_field
    result = loaddata.import_loaddata([as_storage_path(csv) for csv in args.csvs], config.channels,
                                      loaddata.parse_image_names(args.image_name), platemaps,
                                      required=(label,) if label else ())
    if result.index.empty:
        raise UsageError(f"no usable row in {', '.join(args.csvs)} ({len(result.rejected)} rejected, e.g. "
                         f"{result.rejected[0]['item']}: {result.rejected[0]['reason']})" if result.rejected
                         else f"no row in {', '.join(args.csvs)}")
    target.write_text(result.index.to_csv(index=False))  # atomic: a reader never sees half an index
    rejected_file = target.parent / f"{target.name.rsplit('.', 1)[0]}-rejected.jsonl"
    records = [failure("import-loaddata", r["item"], r["reason"]) for r in result.rejected]
    rejected_file.write_text("".join(json.dumps(record) + "\n" for record in records))
    plates = result.index["Metadata_Plate"].nunique()
    illumination = sum(c.startswith(loaddata.ILLUMINATION_PREFIX) for c in result.index.columns)
    emit(f"wrote {target}: {len(result.index)} site(s) of {plates} plate(s) from {result.rows_read} row(s) of "
         f"{len(args.csvs)} CSV(s); {illumination} channel(s) with CellProfiler illumination functions")
    split = config.train.partition.split_field if config.train else None
    if split and split not in result.index.columns:
        emit(f"note: the index has no column {split} (train.partition.split_field), which export-sc needs: "
             f"join it from a platemap (--platemap CSV --join COLUMN ...)")
    if label and config.dataset.metadata.control_value is not None:
        controls = int((result.index[label] == str(config.dataset.metadata.control_value)).sum())
        emit(f"{label}: {result.index[label].nunique()} value(s); {controls} site(s) of the control "
             f"{config.dataset.metadata.control_value!r}")
    return report_failures(records, rejected_file, emit)


# ---------------------------------------------------------------- evaluate
def _run_evaluate(context: CommandContext, args: argparse.Namespace, emit: Emit) -> int:
    from dpcore import evaluation  # noqa: PLC0415 -- copairs and pandas only when the command runs
    from dpcore.report import committed, evaluation_dir, profiles_dir  # noqa: PLC0415

    import pandas as pd  # noqa: PLC0415

    config = context.load_config("evaluate")
    context = context.with_config_paths(config)
    e, metadata = config.evaluate, config.dataset.metadata
    level = e.level or config.aggregate.level
    source = profiles_dir(context.layout) / f"{level}_normalized_feature_select.parquet"
    if source.exists() and not committed(source.parent):
        raise UsageError(f"{source} is not committed (no _manifest.json beside it: aggregate was interrupted or "
                         f"failed): run aggregate again")
    if not source.exists():
        raise UsageError(f"{source} does not exist: run aggregate (with aggregate.level {level!r}) first")
    if not metadata.label_field or metadata.control_value is None:
        raise UsageError("evaluate needs dataset.metadata.label_field and control_value (the treatments and the "
                         "controls they are ranked against)")
    label = metadata.label_field if metadata.label_field.startswith("Metadata_") else f"Metadata_{metadata.label_field}"
    with source.open("rb") as handle:
        profiles = pd.read_parquet(handle)
    out = evaluation_dir(context.layout)
    manifest = out / "_manifest.json"
    manifest.remove()  # written last: an earlier run's must not pass for this one's
    emit(f"evaluate: {len(profiles)} {level} profile(s) from {source}; null size {e.null_size}, seed {e.seed}")
    try:
        activity = evaluation.phenotypic_activity(profiles, label, metadata.control_value, e.null_size, e.threshold,
                                                  e.seed, e.distance)
    except evaluation.EvaluationError as error:
        raise UsageError(f"phenotypic activity: {error}") from None
    out.joinpath("phenotypic_activity.parquet").write_bytes(evaluation.to_parquet(activity))
    out.joinpath("phenotypic_activity.png").write_bytes(evaluation.map_plot(
        activity, label, f"phenotypic activity of {len(activity)} treatment(s) against {metadata.control_value}",
        e.threshold))
    active = int(activity["below_corrected_p"].sum())
    emit(f"phenotypic activity: {active} of {len(activity)} treatment(s) distinguishable from "
         f"{metadata.control_value} (corrected p < {e.threshold:g}); mean mAP {activity['mean_average_precision'].mean():.3f}")
    summary = {"level": level, "source": str(source), "null_size": e.null_size, "threshold": e.threshold,
               "seed": e.seed, "distance": e.distance, "phenotypic_activity": {"treatments": len(activity),
                                                                                "active": active}}
    if e.annotation_column:
        treatments_file = profiles_dir(context.layout) / "treatments.parquet"
        with treatments_file.open("rb") as handle:
            treatments = pd.read_parquet(handle)
        try:
            consistent = evaluation.consistency(treatments, e.annotation_column, label, metadata.control_value,
                                                e.null_size, e.threshold, e.seed, e.distance)
        except evaluation.EvaluationError as error:
            raise UsageError(f"consistency: {error}") from None
        out.joinpath("consistency.parquet").write_bytes(evaluation.to_parquet(consistent))
        out.joinpath("consistency.png").write_bytes(evaluation.map_plot(
            consistent, e.annotation_column, f"consistency of {e.annotation_column}", e.threshold))
        summary["consistency"] = {"annotations": len(consistent),
                                  "consistent": int(consistent["below_corrected_p"].sum())}
        emit(f"consistency: {summary['consistency']['consistent']} of {len(consistent)} {e.annotation_column} "
             f"value(s) consistent (corrected p < {e.threshold:g})")
    else:
        for stale in ("consistency.parquet", "consistency.png"):
            out.joinpath(stale).remove()
    manifest.write_text(json.dumps(summary, indent=2, sort_keys=True))
    emit(f"outputs: {out}")
    return 0


# ------------------------------------------------------------------ report
def _run_report(context: CommandContext, args: argparse.Namespace, emit: Emit) -> int:
    from dpcore.report import build_report, report_file  # noqa: PLC0415 -- matplotlib only when it runs

    config = context.load_config("report")
    context = context.with_config_paths(config)
    page, missing = build_report(context.layout, config)
    target = report_file(context.layout)
    target.write_text(page)  # atomic: a reader never sees half a page
    emit(f"wrote {target} ({len(page) // 1024} KiB, self-contained)")
    if missing:
        emit(f"sections without data yet: {', '.join(missing)} (the page says what to run)")
    return 0


# --------------------------------------------------------- pipeline commands
def _pipeline(module: str) -> Callable[[CommandContext, argparse.Namespace, Emit], int]:
    """Run ``beam_pipelines.<module>.run_command``, importing Beam only now."""
    def run(context: CommandContext, args: argparse.Namespace, emit: Emit) -> int:
        return importlib.import_module(f"beam_pipelines.{module}").run_command(context, args, emit)
    return run


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above zero (argparse names the option in its error)."""

    def parse(text: str):
        value = kind(text)
        if not value > 0:  # NaN too
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value" for what kind() itself rejects
    return parse


def _dry_run_argument(parser: argparse.ArgumentParser) -> None:
    # Beam's own option is spelt --dry_run and takes a value; both spellings mean the same here.
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", nargs="?", const=True, default=False,
                        type=_boolean, metavar="BOOL",
                        help="build the job graph for the chosen runner and list its steps; nothing runs, "
                             "nothing is written or removed, no lock is taken")


def _detach_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detach", action="store_true",
                        help="return as soon as the runner accepted the job (Dataflow, Flink, Spark, a job server); "
                             "the pipeline commits its own outputs, so nothing waits on this command. The output "
                             "lock is held only while submitting: do not start a second run on the same outputs")


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute plates and images already committed by an earlier run")
    parser.add_argument("--illumination", choices=("deepprofiler", "cellprofiler"), default=None,
                        help="deepprofiler: compute each plate's illumination functions (DeepProfiler's); "
                             "cellprofiler: divide by the plate's CellProfiler functions (.npy) named in the "
                             "index's Illum_<channel> columns (default: prepare.illumination_correction.functions)")
    _detach_argument(parser)
    _dry_run_argument(parser)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace a complete earlier export")
    parser.add_argument("--format", choices=("tfrecord", "png"), default="tfrecord",
                        help="tfrecord shards (default) or DeepProfiler's one-PNG-per-cell layout")
    parser.add_argument("--gzip", action="store_true", help="GZIP-compress the TFRecord shards")
    parser.add_argument("--shard-mb", type=_positive(float), default=DEFAULT_SHARD_MB,
                        help=f"target shard size in MB before compression (default: {DEFAULT_SHARD_MB:g})")
    parser.add_argument("--min-shards", type=_positive(int), default=MIN_SHARDS, metavar="N",
                        help=f"at least N shards in all (default: {MIN_SHARDS}), smaller than --shard-mb where "
                             "needed, never more than a split's sites: a small export is still written by several "
                             "workers at once")
    _detach_argument(parser)
    _dry_run_argument(parser)


def _locate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-cellprofiler", action="append", default=[], metavar="OBJECTS",
                        help="import nuclei from CellProfiler's object table instead of segmenting: Nuclei.csv "
                             "(ExportToSpreadsheet), a SQLite file (ExportToDatabase, table Per_<object>) or "
                             "Parquet; local or in a bucket; repeat for several plates")
    parser.add_argument("--image-table", action="append", default=[], metavar="IMAGE",
                        help="the per-image table of each --from-cellprofiler, in the same order (default: "
                             "Image.csv / Image.parquet beside it, or Per_Image in the SQLite file)")
    parser.add_argument("--object-name", default="Nuclei",
                        help="CellProfiler's object name (default Nuclei): the table Per_<name>, column prefix <name>_")
    parser.add_argument("--x-column", default=None, help="the objects' x (column) centre "
                                                         "(default: Location_Center_X, with or without the prefix)")
    parser.add_argument("--y-column", default=None, help="the objects' y (row) centre (default: Location_Center_Y)")
    parser.add_argument("--image-key", action="append", default=[], metavar="COLUMN",
                        help="a column both tables share that names an object's image (repeat for several; default: "
                             "ImageNumber, with TableNumber when both tables have it)")
    parser.add_argument("--match-by", choices=("auto", "metadata", "filename"), default="auto",
                        help="how an image row names its site: Metadata_Plate/Well/Site, or its FileName_<image> "
                             "matched to the index's file names (auto: metadata when the columns are there)")
    parser.add_argument("--image-name", default=None,
                        help="CellProfiler image name of the nucleus channel for --match-by filename "
                             "(default Orig<channel>, e.g. OrigDNA)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing locations (locate's own, other settings', or anyone's)")
    _detach_argument(parser)
    _dry_run_argument(parser)


def _aggregate_arguments(parser: argparse.ArgumentParser) -> None:
    _detach_argument(parser)
    _dry_run_argument(parser)


def _acceleration_arguments(parser: argparse.ArgumentParser, batch_key: str) -> None:
    """Options for a GPU (or TPU) run: they change speed, not the model (see dpcore.acceleration)."""
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help=f"cells per model call (default: the config's {batch_key}); e.g. 256 on a GPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="numeric precision of the network: mixed_float16 for NVIDIA GPUs with tensor cores, "
                             "mixed_bfloat16 for TPUs/Ampere+ (weights stay float32; default float32)")
    parser.add_argument("--xla", action="store_true",
                        help="compile the network with XLA (for GPUs; much slower on a CPU)")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epoch", type=int, default=None,
                        help="first epoch: N > 1 continues from checkpoint_{N-1:04d}.hdf5 (DeepProfiler's flag); "
                             "1 starts over. Without it an interrupted run continues after its last finished epoch")
    parser.add_argument("--seed", type=int, default=None, help="random seed: a repeatable run on the CPU")
    parser.add_argument("--pretrained-weights", default=None,
                        help="Keras ImageNet 'notop' weights for initialization ImageNet "
                             "(default: ROOT/inputs/pretrained/<Keras file name>); nothing is downloaded")
    _acceleration_arguments(parser, "train.model.params.batch_size")


def _profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", type=int, default=-1,
                        help="profile only part K written by split (index-001.csv for --part 1)")
    parser.add_argument("--overwrite", action="store_true", help="redo sites already committed")
    parser.add_argument("--pretrained-weights", default=None,
                        help="Keras ImageNet 'notop' weights file for repeat_channel_crop_generator "
                             "(default: ROOT/inputs/pretrained/<Keras file name>); nothing is downloaded")
    parser.add_argument("--inference-accelerator", default=None,
                        help="Beam resource hint for the inference step only, e.g. on Dataflow "
                             "'type:nvidia-tesla-t4;count:1;install-nvidia-driver'")
    _acceleration_arguments(parser, "profile.batch_size")
    parser.add_argument("--inference-engine", choices=ENGINES, default="auto",
                        help="what runs the network: auto (default: OpenVINO on a worker without a GPU, for "
                             "float32 without --xla; else TensorFlow), tensorflow, or openvino (CPU only)")
    _detach_argument(parser)
    _dry_run_argument(parser)


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("setup", "create DeepProfiler's folder layout under ROOT",
                "Create inputs/ and outputs/ folders (honouring a config's paths section when --config is "
                "given) and list what was created.", _no_arguments, _run_setup),
    CommandSpec("example", "write a small real example project (BBBC022 subset) under ROOT",
                "Copy the bundled BBBC022 subset (2 wells, 12 sites, 5 channels, nuclei locations, "
                "config bbbc022.json) under ROOT. Existing files are kept unless --overwrite.",
                _example_arguments, _run_example),
    CommandSpec("validate", "check config, index, images and locations without running anything",
                "Load the config and the index, read every image header and locations file, print a "
                "summary and every problem found, then run every pipeline command's own pre-start checks "
                "(see --commands) and say which commands the config is ready for. Exit status 1 if there "
                "was any problem.",
                _validate_arguments, _run_validate),
    CommandSpec("import-loaddata", "write the index from CellProfiler LoadData CSVs (Cell Painting Gallery)",
                "Turn CellProfiler LoadData CSVs (local or in a bucket) into DeepProfiler's index at "
                "inputs/metadata/<--metadata name>: plate, well, site, one column per config channel with the "
                "image's URL (PathName + FileName of Orig<channel>), Illum_<channel> with the CellProfiler "
                "illumination function when the CSV names one, the CSV's other Metadata_ columns, and "
                "columns joined from platemaps. Rows with a missing image or no platemap match are listed by "
                "CSV line in <index>-rejected.jsonl and left out (exit status 1).",
                _import_loaddata_arguments, _run_import_loaddata),
    CommandSpec("locate", "nuclei locations for every site: segmented, or imported from CellProfiler (Beam pipeline)",
                "Write inputs/locations/<plate>/<well>-<site>-Nuclei.csv for every site of the index: nuclei found "
                "in the nucleus channel (the locate config section; after prepare's illumination correction "
                "when the plate has it), or CellProfiler's objects with --from-cellprofiler. Counts per site "
                "and a QC picture per plate go to outputs/locate/<plate>/. Existing locations are never "
                "replaced without --overwrite; an interrupted run is resumed.",
                _locate_arguments, _pipeline("locate"), uses_beam=True),
    CommandSpec("prepare", "illumination statistics and compressed PNGs (Beam pipeline)",
                "Compute per-plate illumination statistics and correction functions, and write "
                "illumination-corrected 8-bit PNGs when prepare.compression.implement is true.",
                _prepare_arguments, _pipeline("prepare"), uses_beam=True),
    CommandSpec("export-sc", "crop every cell into TFRecord shards with a Parquet index (Beam pipeline)",
                "Crop every cell (DeepProfiler's boxes, bilinear, min-max normalised) into TFRecord shards "
                "under outputs/<single-cells>/ grouped by split (training, validation, other), with "
                "an index part per shard in sc-metadata/ (a Parquet dataset; sc-metadata.csv too for small "
                "exports), a montage.png of sample crops and manifest.json (written last). A complete export is "
                "kept unless --overwrite; an interrupted one is resumed (only shards not yet committed are "
                "written), unless it was started with other settings.",
                _export_arguments, _pipeline("export_sc"), uses_beam=True),
    CommandSpec("train", "train a classifier on the exported crops (tf.distribute)",
                "Train the configured model (train.model) on the export-sc shards with tf.distribute: "
                "all GPUs (MirroredStrategy), the CPU, or several workers described by TF_CONFIG "
                "(MultiWorkerMirroredStrategy). Writes checkpoint_{epoch:04d}.hdf5, logs/log.csv, "
                "TensorBoard summaries and training curves under outputs/<exp>/. A killed run continues "
                "from its last finished epoch when started again.",
                _train_arguments, _pipeline("train"), aliases=("traintf2",)),
    CommandSpec("profile", "extract per-cell features to Parquet (Beam RunInference)",
                "Cut every cell (as export-sc does), run the configured network over the crops with Beam "
                "RunInference, batched by profile.batch_size across sites, and write one Parquet file per "
                "site under outputs/<exp>/features/<plate>/ (Metadata_ columns + <model>_<i> features), "
                "_manifest.json and a run record in _runs/. Sites already written are skipped unless --overwrite.",
                _profile_arguments, _pipeline("profile"), uses_beam=True),
    CommandSpec("aggregate", "per-cell features to well profiles: normalized, feature-selected (Beam pipeline)",
                "Reduce the per-cell features of outputs/<exp>/features/ to one row per group (aggregate.level, "
                "default wells: exact median per Metadata_Plate, Metadata_Well) in a Beam pipeline, then "
                "normalize per plate against the controls, select features and take each treatment's "
                "consensus with pycytominer. Writes outputs/<exp>/profiles/<level>.parquet, "
                "<level>_normalized.parquet, <level>_normalized_feature_select.parquet, treatments.parquet and "
                "_manifest.json (last).",
                _aggregate_arguments, _pipeline("aggregate"), uses_beam=True, local_threads=False),
    CommandSpec("evaluate", "mean average precision of the profiles with copairs: activity, consistency",
                "Rank each treatment's replicate profiles against the controls (phenotypic activity) and, "
                "with evaluate.annotation_column, treatments by shared annotation (consistency), with copairs; "
                "writes outputs/<exp>/evaluation/ (one Parquet per analysis, copairs' columns, and a plot of "
                "mAP against -log10 p).", _no_arguments, _run_evaluate),
    CommandSpec("report", "one self-contained HTML page of the run: plate maps, pictures, profiles, mAP",
                "Write outputs/<exp>/report/index.html: cells per well and failures as plate maps, the "
                "illumination functions, the crop montage, training curves, a 2-D embedding of the profiles "
                "coloured by treatment, the mAP table and plot, and the run's provenance (config fingerprint, "
                "checkpoint hash, versions). Every picture is embedded.", _no_arguments, _run_report),
    CommandSpec("split", "split the index into N parts (index-000.csv ...) for profile --part",
                "Write index-000.csv ... beside the index; wells are never divided between parts.",
                _split_arguments, _run_split),
)

BY_NAME = {name: spec for spec in COMMANDS for name in (spec.name, *spec.aliases)}
