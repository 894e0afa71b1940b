"""DeepProfiler's JSON config as a tree of frozen dataclasses.

The file is read once, every key is checked against the config reference
(``shared/spec/deepprofiler-config-reference.txt``) and the result is never
mutated. Problems are collected rather than raised one at a time, so a user sees
every wrong key of a config in one go; each message names the key path and
what was expected.

Keys the reference does not define (real configs carry ``area_coverage``,
``outlines``, ``control_id`` and others) produce one warning each and are
otherwise ignored. Keys without a documented default are ``None`` when absent;
a command states the keys it needs (:data:`REQUIRED_KEYS`) and
:meth:`Config.require` fails before any work starts if one is missing, so a
command never demands sections it does not use.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Mapping, Union

from dpcore.storage import StoragePath, as_storage_path

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- vocabularies
LOCATION_MODES = ("single_cells", "full_image")
FILE_FORMATS = ("tif", "tiff", "png")
BITS = (8, 16)
VALIDATION_FRAMES = ("all", "train", "val")
INITIALIZATIONS = ("random", "imagenet")
ILLUMINATION_FUNCTIONS = ("deepprofiler", "cellprofiler")
THRESHOLD_METHODS = ("otsu", "li", "triangle", "yen")  # dpcore.segmentation.THRESHOLD_METHODS
SIZE_UNITS = ("px", "um")
AGGREGATE_OPERATIONS = ("median", "mean")
NORMALIZE_METHODS = ("standardize", "mad_robustize")
NORMALIZE_SAMPLES = ("controls", "all")
FEATURE_SELECT_OPERATIONS = ("variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist")
# pycytominer >= 1.0 split the old variance_threshold in two: variance_threshold now drops features of variance
# below 1e-6, and frequency_threshold is the one that reads freq_cut and unique_cut. It is allowed, not a default
# (the JUMP profiling recipe lists the four above).
FEATURE_SELECT_CHOICES = FEATURE_SELECT_OPERATIONS + ("frequency_threshold",)
# The operation each feature_select threshold belongs to: a threshold set without it would do nothing.
FEATURE_SELECT_THRESHOLDS = {"corr_threshold": "correlation_threshold", "freq_cut": "frequency_threshold",
                             "unique_cut": "frequency_threshold", "na_cutoff": "drop_na_columns"}
LEVEL_STRATA = {"wells": ("Metadata_Plate", "Metadata_Well"), "sites": ("Metadata_Plate", "Metadata_Well", "Metadata_Site")}
# DeepProfiler's two metric plugins and the Keras metric names it passes to ``model.compile`` as they are.
PLUGIN_METRICS = ("top_k", "average_class_precision")
KERAS_METRICS = ("accuracy", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
                 "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy")
METRICS = KERAS_METRICS[:1] + PLUGIN_METRICS + KERAS_METRICS[1:]
NAMED_LR_SCHEDULES = ("cosine", "plateau")
CROP_GENERATORS = (
    "sampled_crop_generator",
    "online_labels_cropgen",
    "repeat_channel_crop_generator",
    "full_image_crop_generator",
)
# Model name -> allowed ``conv_blocks`` (None: the key is not used by that model).
MODEL_CONV_BLOCKS: Mapping[str, tuple[int, ...] | None] = {
    "efficientnet": tuple(range(8)),
    "resnet": (50, 101, 152),
    "inception_resnet_v2": None,
    "cnn": tuple(range(1, 11)),  # DeepProfiler's cnn: that many conv blocks (at least 1)
}
# DeepProfiler trains its cnn plugin with Adam and no weight decay, the ImageNet architectures with SGD
# (Nesterov momentum 0.9) and L2 on the kernels.
ADAM_MODELS = ("cnn",)
DEFAULT_FEATURE_DIM = 256  # train.model.params.feature_dim, the cnn's feature layer (DeepProfiler has no default)
# Folder keys of DeepProfiler's ``paths`` section that we honour.
PATH_KEYS = (
    "root", "config", "images", "metadata", "locations", "outlines", "pretrained",
    "intensities", "compressed_images", "compressed_metadata", "single_cell_set",
    "results", "checkpoints", "logs", "summaries", "features", "index",
)

# Keys each command needs beyond those with defaults.
REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "import-loaddata": ("dataset.images.channels",),
    "locate": ("dataset.images.channels", "dataset.images.width", "dataset.images.height"),
    "validate": ("dataset.images.channels", "dataset.images.width", "dataset.images.height"),
    "prepare": ("dataset.images.channels", "dataset.images.width", "dataset.images.height"),
    "export-sc": (
        "dataset.images.channels", "dataset.images.width", "dataset.images.height",
        "dataset.locations.box_size", "train.partition.targets", "train.partition.split_field",
    ),
    "train": (
        "dataset.images.channels", "dataset.images.width", "dataset.images.height",
        "dataset.locations.box_size", "train.partition.targets", "train.partition.split_field",
        "train.partition.training", "train.partition.validation", "train.model.name",
        "train.model.epochs",
    ),
    "profile": (
        "dataset.images.channels", "dataset.images.width", "dataset.images.height",
        "dataset.locations.box_size", "profile.feature_layer", "train.model.name",
    ),
    "split": (),
    "setup": (),
}


class ConfigError(ValueError):
    """The config cannot be used; ``problems`` lists every reason found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"config {source} has {len(self.problems)} problem(s):\n{lines}")


# --------------------------------------------------------------------- sections
@dataclass(frozen=True)
class MetadataConfig:
    label_field: str | None = None
    control_value: str | None = None


@dataclass(frozen=True)
class ImagesConfig:
    channels: tuple[str, ...] | None = None
    file_format: str = "tif"
    bits: int = 16
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class LocationsConfig:
    mode: str = "single_cells"
    box_size: int | None = None
    view_size: int | None = None  # defaults to box_size, see effective_view_size
    mask_objects: bool = False

    @property
    def effective_view_size(self) -> int | None:
        return self.view_size if self.view_size is not None else self.box_size


@dataclass(frozen=True)
class DatasetConfig:
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    locations: LocationsConfig = field(default_factory=LocationsConfig)


@dataclass(frozen=True)
class IlluminationConfig:
    down_scale_factor: float = 4.0
    median_filter_size: int = 24
    # "deepprofiler": computed per plate by prepare; "cellprofiler": the plate's CellProfiler functions
    # (.npy) named in the index's Illum_<channel> columns (import-loaddata writes them). Not in the reference.
    functions: str = "deepprofiler"


@dataclass(frozen=True)
class CompressionConfig:
    implement: bool = False
    scaling_factor: float = 1.0


@dataclass(frozen=True)
class PrepareConfig:
    illumination_correction: IlluminationConfig = field(default_factory=IlluminationConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)


@dataclass(frozen=True)
class LocateConfig:
    """``locate``: how nuclei are found when a screen has no locations (dpbeam's; not in the reference).

    Sizes are nuclear diameters in ``size_unit``: pixels, or µm converted with ``pixel_size`` (µm per
    pixel). The defaults suit 20x Cell Painting images (BBBC022: nuclei ~15-25 px across); set them in
    µm with the pixel size to use one config at 10x and 40x.
    """

    channel: str | None = None  # default: the config channel named DNA (or Hoechst, DAPI), else the first
    use_illumination: bool = True  # divide by prepare's illumination function when the plate has one
    threshold: str = "otsu"
    threshold_correction: float = 1.0
    smoothing_sigma: float | None = None  # in size_unit; default min_diameter / 3.5
    min_diameter: float = 8.0
    max_diameter: float = 80.0
    size_unit: str = "px"
    pixel_size: float | None = None
    split_touching: bool = True
    declump_ratio: float = 0.8
    exclude_border: bool = False
    qc_sites: int = 4

    @property
    def pixels_per_unit(self) -> float:
        return 1.0 / self.pixel_size if self.size_unit == "um" and self.pixel_size else 1.0


@dataclass(frozen=True)
class AggregateConfig:
    """``aggregate``: cells to profiles (dpbeam's; not in DeepProfiler's reference)."""

    level: str = "wells"  # names the output files; "wells" and "sites" have default strata
    strata: tuple[str, ...] | None = None  # the grouping columns (default from level)
    operation: str = "median"
    normalize_method: str = "standardize"
    normalize_samples: str = "controls"  # "controls": dataset.metadata.control_value of label_field
    feature_select: tuple[str, ...] = FEATURE_SELECT_OPERATIONS
    corr_threshold: float = 0.9
    freq_cut: float = 0.05
    unique_cut: float = 0.01
    na_cutoff: float = 0.05
    treatment_columns: tuple[str, ...] | None = None  # consensus key (default: the label field)

    @property
    def group_columns(self) -> tuple[str, ...]:
        return self.strata or LEVEL_STRATA.get(self.level, ())


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate``: mAP with copairs (dpbeam's)."""

    level: str | None = None  # the profiles evaluated (default: aggregate.level)
    annotation_column: str | None = None  # e.g. Metadata_moa: consistency when set
    null_size: int = 10000
    threshold: float = 0.05
    seed: int = 0
    distance: str = "cosine"


@dataclass(frozen=True)
class ProfileConfig:
    feature_layer: str | None = None
    checkpoint: str | None = None  # "None" in the JSON means no checkpoint
    batch_size: int = 32
    use_pretrained_input_size: int | None = None


@dataclass(frozen=True)
class PartitionConfig:
    targets: tuple[str, ...] | None = None
    split_field: str | None = None
    # Split values are compared with index cells, which are read as strings.
    training: tuple[str, ...] | None = None
    validation: tuple[str, ...] | None = None

    @property
    def label_field(self) -> str | None:
        """The first target: the only one DeepProfiler trains on."""
        return self.targets[0] if self.targets else None


@dataclass(frozen=True)
class ModelParams:
    learning_rate: float = 0.005
    batch_size: int = 32
    conv_blocks: int = 0
    label_smoothing: float = 0.0
    online_label_smoothing: float = 0.0
    online_lambda: float = 0.0
    feature_dim: int = 256  # DEFAULT_FEATURE_DIM


@dataclass(frozen=True)
class StepSchedule:
    """Learning rate ``learning_rates[i]`` from 0-based epoch ``epochs[i]`` on (DeepProfiler's, i.e. Keras', numbering)."""

    epochs: tuple[int, ...]
    learning_rates: tuple[float, ...]


LrSchedule = Union[None, StepSchedule, Literal["cosine", "plateau"]]
CheckpointPolicy = Union[int, Literal["best"]]


@dataclass(frozen=True)
class ModelConfig:
    name: str | None = None
    crop_generator: str = "sampled_crop_generator"
    augmentations: bool = False
    metrics: tuple[str, ...] = ("accuracy",)
    epochs: int | None = None
    initialization: str = "random"  # normalised to lower case
    checkpoint_policy: CheckpointPolicy = 1  # every epoch, DeepProfiler's default
    params: ModelParams = field(default_factory=ModelParams)
    lr_schedule: LrSchedule = None


@dataclass(frozen=True)
class SamplingConfig:
    factor: float = 1.0
    cache_size: int = 10000
    workers: int = 1


@dataclass(frozen=True)
class ValidationConfig:
    frequency: int = 1
    top_k: int = 5
    batch_size: int = 32
    frame: str = "val"
    sample_first_crops: bool = False


@dataclass(frozen=True)
class TrainConfig:
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    locate: LocateConfig = field(default_factory=LocateConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    paths: Mapping[str, str] = field(default_factory=dict)
    source: str = "<memory>"
    fingerprint: str = ""
    # Keys the config has that dpbeam does not use, each with the known key it most resembles (or None):
    # ``dataset.locations.box_szie`` -> ``dataset.locations.box_size``.
    unknown_keys: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def misspelt_keys(self) -> dict[str, str]:
        """Unknown keys that are very likely typos of a known key."""
        return {key: known for key, known in self.unknown_keys.items() if known}

    def get(self, key_path: str) -> Any:
        """The value at a documented dotted key path such as ``train.model.name``."""
        node: Any = self
        for part in _ATTRIBUTE_PATHS.get(key_path, key_path).split("."):
            node = getattr(node, part)
        return node

    def require(self, command: str, extra: tuple[str, ...] = ()) -> None:
        """Fail with every missing key that ``command`` needs."""
        missing = [k for k in REQUIRED_KEYS.get(command, ()) + tuple(extra) if self.get(k) is None]
        if missing:
            typos = {known: key for key, known in self.misspelt_keys.items()}
            raise ConfigError(
                self.source,
                [f"{key} is required by the {command!r} command but is not set"
                 + (f" (the config has {typos[key]}: did you mean {key.rsplit('.', 1)[-1]}?)" if key in typos else "")
                 for key in missing],
            )

    @property
    def channels(self) -> tuple[str, ...]:
        return self.dataset.images.channels or ()


# Key paths of the JSON whose value the objects keep under another name (``aggregate`` is flat).
_ATTRIBUTE_PATHS = {
    "aggregate.normalize.method": "aggregate.normalize_method",
    "aggregate.normalize.samples": "aggregate.normalize_samples",
    "aggregate.feature_select.operations": "aggregate.feature_select",
    "aggregate.feature_select.corr_threshold": "aggregate.corr_threshold",
    "aggregate.feature_select.freq_cut": "aggregate.freq_cut",
    "aggregate.feature_select.unique_cut": "aggregate.unique_cut",
    "aggregate.feature_select.na_cutoff": "aggregate.na_cutoff",
}

# ----------------------------------------------------------------------- reader
_MISSING = object()


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    """Walks one JSON object, recording problems and unknown keys by key path."""

    def __init__(self, data: Mapping[str, Any], path: str, problems: list[str], unknown: dict[str, str | None]):
        self.data = data
        self.path = path
        self.problems = problems
        self.unknown = unknown
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, expected: str, value: Any) -> None:
        self.problems.append(f"{self.key(name)} must be {expected}, got {_describe(value)}")

    def section(self, name: str) -> "_Reader":
        self.used.add(name)
        value = self.data.get(name, {})
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(name, "an object (a JSON {...} section)", value)
            value = {}
        return _Reader(value, self.key(name), self.problems, self.unknown)

    def value(self, name: str, convert: Callable[[Any], Any], expected: str, default: Any = None) -> Any:
        """Convert ``data[name]``; on failure record the problem, return default."""
        self.used.add(name)
        raw = self.data.get(name, _MISSING)
        if raw is _MISSING or raw is None:
            return default
        try:
            return convert(raw)
        except (TypeError, ValueError):
            self.fail(name, expected, raw)
            return default

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                self.unknown[self.key(name)] = self._closest_known(name)

    def _closest_known(self, name: str) -> str | None:
        """The known key of this section a typo most likely meant (``box_szie`` -> ``box_size``)."""
        close = difflib.get_close_matches(name.lower(), sorted(self.used), n=1, cutoff=0.75)
        return self.key(close[0]) if close else None


# ------------------------------------------------------------------ converters
def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError
    return value


def _scalar_string(value: Any) -> str:
    """A metadata value: index cells are strings, JSON may hold 0 or "0"."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _integer(minimum: int | None = None, allowed: tuple[int, ...] | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        if minimum is not None and value < minimum:
            raise ValueError
        if allowed is not None and value not in allowed:
            raise ValueError
        return value
    return convert


def _number(minimum: float | None = None, maximum: float | None = None,
            exclusive_minimum: bool = False) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        number = float(value)
        if minimum is not None and (number < minimum or (exclusive_minimum and number == minimum)):
            raise ValueError
        if maximum is not None and number > maximum:
            raise ValueError
        return number
    return convert


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _choice(options: tuple[str, ...], case_insensitive: bool = False) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError
        candidate = value.lower() if case_insensitive else value
        if candidate not in options:
            raise ValueError
        return candidate
    return convert


def _list_of(item: Callable[[Any], Any], non_empty: bool = True, unique: bool = False) -> Callable[[Any], tuple]:
    def convert(value: Any) -> tuple:
        if not isinstance(value, list) or (non_empty and not value):
            raise TypeError
        items = tuple(item(v) for v in value)
        if unique and len(set(items)) != len(items):
            raise ValueError
        return items
    return convert


def _one_of(options: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f'"{o}"' for o in options)


# -------------------------------------------------------------------- sections
def _read_dataset(r: _Reader) -> DatasetConfig:
    m = r.section("metadata")
    metadata = MetadataConfig(
        label_field=m.value("label_field", _string, "a column name (string)"),
        control_value=m.value("control_value", _scalar_string, "a string"),
    )
    m.finish()

    i = r.section("images")
    images = ImagesConfig(
        channels=i.value("channels", _list_of(_string, unique=True),
                         "a non-empty list of distinct column names"),
        file_format=i.value("file_format", lambda v: _choice(FILE_FORMATS)(v.lower() if isinstance(v, str) else v),
                            _one_of(FILE_FORMATS), "tif"),
        bits=i.value("bits", _integer(allowed=BITS), "8 or 16", 16),
        width=i.value("width", _integer(minimum=1), "a positive integer (pixels)"),
        height=i.value("height", _integer(minimum=1), "a positive integer (pixels)"),
    )
    i.finish()

    loc = r.section("locations")
    locations = LocationsConfig(
        mode=loc.value("mode", _choice(LOCATION_MODES), _one_of(LOCATION_MODES), "single_cells"),
        box_size=loc.value("box_size", _integer(minimum=1), "a positive integer (pixels)"),
        view_size=loc.value("view_size", _integer(minimum=1), "a positive integer (pixels)"),
        mask_objects=loc.value("mask_objects", _boolean, "true or false", False),
    )
    loc.finish()
    r.finish()
    return DatasetConfig(metadata=metadata, images=images, locations=locations)


def _read_prepare(r: _Reader) -> PrepareConfig:
    ic = r.section("illumination_correction")
    illumination = IlluminationConfig(
        down_scale_factor=ic.value("down_scale_factor", _number(minimum=1.0), "a number >= 1", 4.0),
        # The disk's diameter: below 2 the disk (radius size/2) is empty and the filter has nothing to rank.
        median_filter_size=ic.value("median_filter_size", _integer(minimum=2),
                                    "an integer >= 2 (the disk's diameter in pixels)", 24),
        functions=ic.value("functions", _choice(ILLUMINATION_FUNCTIONS), _one_of(ILLUMINATION_FUNCTIONS),
                           "deepprofiler"),
    )
    ic.finish()
    c = r.section("compression")
    compression = CompressionConfig(
        implement=c.value("implement", _boolean, "true or false", False),
        scaling_factor=c.value("scaling_factor", _number(minimum=0.0, maximum=4.0, exclusive_minimum=True),
                               "a number in (0, 4]", 1.0),
    )
    c.finish()
    r.finish()
    return PrepareConfig(illumination_correction=illumination, compression=compression)


def _read_locate(r: _Reader) -> LocateConfig:
    positive = _number(minimum=0.0, exclusive_minimum=True)
    locate = LocateConfig(
        channel=r.value("channel", _string, "a channel name from dataset.images.channels"),
        use_illumination=r.value("use_illumination", _boolean, "true or false", True),
        threshold=r.value("threshold", _choice(THRESHOLD_METHODS), _one_of(THRESHOLD_METHODS), "otsu"),
        threshold_correction=r.value("threshold_correction", positive, "a positive number", 1.0),
        smoothing_sigma=r.value("smoothing_sigma", _number(minimum=0.0), "a number >= 0"),
        min_diameter=r.value("min_diameter", positive, "a positive number", 8.0),
        max_diameter=r.value("max_diameter", positive, "a positive number", 80.0),
        size_unit=r.value("size_unit", _choice(SIZE_UNITS), _one_of(SIZE_UNITS), "px"),
        pixel_size=r.value("pixel_size", positive, "a positive number (micrometres per pixel)"),
        split_touching=r.value("split_touching", _boolean, "true or false", True),
        declump_ratio=r.value("declump_ratio", _number(minimum=0.0, maximum=1.0, exclusive_minimum=True),
                              "a number in (0, 1]", 0.8),
        exclude_border=r.value("exclude_border", _boolean, "true or false", False),
        qc_sites=r.value("qc_sites", _integer(minimum=0), "an integer >= 0", 4),
    )
    r.finish()
    return locate


def _read_aggregate(r: _Reader) -> AggregateConfig:
    unit = _number(minimum=0.0, maximum=1.0)
    n = r.section("normalize")
    f = r.section("feature_select")
    aggregate = AggregateConfig(
        level=r.value("level", _string, "a name such as \"wells\" or \"sites\"", "wells"),
        strata=r.value("strata", _list_of(_string, unique=True), "a list of Metadata_ column names"),
        operation=r.value("operation", _choice(AGGREGATE_OPERATIONS), _one_of(AGGREGATE_OPERATIONS), "median"),
        normalize_method=n.value("method", _choice(NORMALIZE_METHODS), _one_of(NORMALIZE_METHODS), "standardize"),
        normalize_samples=n.value("samples", _choice(NORMALIZE_SAMPLES), _one_of(NORMALIZE_SAMPLES), "controls"),
        feature_select=f.value("operations", _list_of(_choice(FEATURE_SELECT_CHOICES), non_empty=False, unique=True),
                               "a list of " + _one_of(FEATURE_SELECT_CHOICES), FEATURE_SELECT_OPERATIONS),
        corr_threshold=f.value("corr_threshold", unit, "a number in [0, 1]", 0.9),
        freq_cut=f.value("freq_cut", unit, "a number in [0, 1]", 0.05),
        unique_cut=f.value("unique_cut", unit, "a number in [0, 1]", 0.01),
        na_cutoff=f.value("na_cutoff", unit, "a number in [0, 1]", 0.05),
        treatment_columns=r.value("treatment_columns", _list_of(_string, unique=True), "a list of column names"),
    )
    for threshold, operation in FEATURE_SELECT_THRESHOLDS.items():
        if f.data.get(threshold) is not None and operation not in aggregate.feature_select:
            logger.warning("config: %s is set but has no effect: its operation %r is not in "
                           "aggregate.feature_select.operations", f.key(threshold), operation)
    n.finish()
    f.finish()
    r.finish()
    return aggregate


def _read_evaluate(r: _Reader) -> EvaluateConfig:
    evaluate = EvaluateConfig(
        level=r.value("level", _string, "a profiles level written by aggregate (\"wells\", \"sites\")"),
        annotation_column=r.value("annotation_column", _string, "a column name such as Metadata_moa"),
        null_size=r.value("null_size", _integer(minimum=100), "an integer >= 100", 10000),
        threshold=r.value("threshold", _number(minimum=0.0, maximum=1.0, exclusive_minimum=True),
                          "a number in (0, 1]", 0.05),
        seed=r.value("seed", _integer(minimum=0), "an integer >= 0", 0),
        distance=r.value("distance", _choice(("cosine", "euclidean", "abs_cosine", "correlation")),
                         'one of "cosine", "euclidean", "abs_cosine", "correlation"', "cosine"),
    )
    r.finish()
    return evaluate


def _checkpoint_name(value: Any) -> str | None:
    name = _string(value)
    return None if name.strip().lower() == "none" else name


def _read_profile(r: _Reader) -> ProfileConfig:
    profile = ProfileConfig(
        feature_layer=r.value("feature_layer", _string, "a layer name (string)"),
        checkpoint=r.value("checkpoint", _checkpoint_name, 'a file name or "None"'),
        batch_size=r.value("batch_size", _integer(minimum=1), "a positive integer", 32),
        use_pretrained_input_size=r.value("use_pretrained_input_size", _integer(minimum=32),
                                          "an integer input size such as 224 or 299"),
    )
    r.finish()
    return profile


def _lr_schedule(r: _Reader) -> LrSchedule:
    r.used.add("lr_schedule")
    raw = r.data.get("lr_schedule")
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw.lower() in NAMED_LR_SCHEDULES:
            return raw.lower()  # type: ignore[return-value]
    elif isinstance(raw, dict):
        s = _Reader(raw, r.key("lr_schedule"), r.problems, r.unknown)
        epochs = s.value("epoch", _list_of(_integer(minimum=0)), "a non-empty list of epoch numbers")
        rates = s.value("lr", _list_of(_number(minimum=0.0, exclusive_minimum=True)),
                        "a non-empty list of positive learning rates")
        s.finish()
        if epochs is None or rates is None:
            if "epoch" not in raw or "lr" not in raw:
                r.problems.append(f"{r.key('lr_schedule')} needs both \"epoch\" and \"lr\" lists")
            return None
        if len(epochs) != len(rates):
            r.problems.append(f"{r.key('lr_schedule')}: \"epoch\" and \"lr\" must have the same length, "
                              f"got {len(epochs)} and {len(rates)}")
            return None
        if list(epochs) != sorted(set(epochs)):
            r.problems.append(f"{r.key('lr_schedule')}.epoch must be strictly increasing, got {list(epochs)}")
            return None
        return StepSchedule(epochs=epochs, learning_rates=rates)
    r.fail("lr_schedule", 'absent, "cosine", "plateau" or {"epoch": [...], "lr": [...]}', raw)
    return None


def _checkpoint_policy(value: Any) -> CheckpointPolicy:
    if isinstance(value, str) and value.lower() == "best":
        return "best"
    return _integer(minimum=1)(value)


def _read_train(r: _Reader) -> TrainConfig:
    p = r.section("partition")
    partition = PartitionConfig(
        targets=p.value("targets", _list_of(_string), "a non-empty list of column names"),
        split_field=p.value("split_field", _string, "a column name (string)"),
        training=p.value("training", _list_of(_scalar_string), "a non-empty list of split values"),
        validation=p.value("validation", _list_of(_scalar_string, non_empty=False), "a list of split values"),
    )
    p.finish()

    m = r.section("model")
    pr = m.section("params")
    params = ModelParams(
        learning_rate=pr.value("learning_rate", _number(minimum=0.0, exclusive_minimum=True), "a positive number", 0.005),
        batch_size=pr.value("batch_size", _integer(minimum=1), "a positive integer", 32),
        conv_blocks=pr.value("conv_blocks", _integer(minimum=0), "a non-negative integer", 0),
        label_smoothing=pr.value("label_smoothing", _number(0.0, 1.0), "a number in [0, 1]", 0.0),
        online_label_smoothing=pr.value("online_label_smoothing", _number(0.0, 1.0), "a number in [0, 1]", 0.0),
        online_lambda=pr.value("online_lambda", _number(0.0, 1.0), "a number in [0, 1]", 0.0),
        feature_dim=pr.value("feature_dim", _integer(minimum=1), "a positive integer", DEFAULT_FEATURE_DIM),
    )
    pr.finish()
    model = ModelConfig(
        name=m.value("name", _choice(tuple(MODEL_CONV_BLOCKS)), _one_of(tuple(MODEL_CONV_BLOCKS))),
        crop_generator=m.value("crop_generator", _choice(CROP_GENERATORS), _one_of(CROP_GENERATORS),
                               "sampled_crop_generator"),
        augmentations=m.value("augmentations", _boolean, "true or false", False),
        metrics=m.value("metrics", _list_of(_choice(METRICS), non_empty=False), "a list of " + _one_of(METRICS),
                        ("accuracy",)),
        epochs=m.value("epochs", _integer(minimum=1), "a positive integer"),
        initialization=m.value("initialization", _choice(INITIALIZATIONS, case_insensitive=True),
                               '"Random" or "ImageNet"', "random"),
        checkpoint_policy=m.value("checkpoint_policy", _checkpoint_policy,
                                  'a positive integer (every N epochs) or "best"', 1),
        params=params,
        lr_schedule=_lr_schedule(m),
    )
    allowed_blocks = MODEL_CONV_BLOCKS.get(model.name or "")
    # cnn has no usable default (DeepProfiler's needs at least one block): the key is checked when absent too.
    checked = "conv_blocks" in pr.data or model.name == "cnn"
    if allowed_blocks is not None and checked and params.conv_blocks not in allowed_blocks:
        r.problems.append(
            f"{pr.key('conv_blocks')} must be one of {list(allowed_blocks)} for model {model.name!r}, "
            f"got {params.conv_blocks}")
    m.finish()

    s = r.section("sampling")
    sampling = SamplingConfig(
        factor=s.value("factor", _number(0.0, 1.0, exclusive_minimum=True), "a number in (0, 1]", 1.0),
        cache_size=s.value("cache_size", _integer(minimum=1), "a positive integer", 10000),
        workers=s.value("workers", _integer(minimum=1), "a positive integer", 1),
    )
    s.finish()

    v = r.section("validation")
    validation = ValidationConfig(
        frequency=v.value("frequency", _integer(minimum=1), "a positive integer (epochs)", 1),
        top_k=v.value("top_k", _integer(minimum=1), "a positive integer", 5),
        batch_size=v.value("batch_size", _integer(minimum=1), "a positive integer", 32),
        frame=v.value("frame", _choice(VALIDATION_FRAMES), _one_of(VALIDATION_FRAMES), "val"),
        sample_first_crops=v.value("sample_first_crops", _boolean, "true or false", False),
    )
    v.finish()
    r.finish()
    return TrainConfig(partition=partition, model=model, sampling=sampling, validation=validation)


def _read_paths(r: _Reader) -> dict[str, str]:
    paths = {}
    for name, value in r.data.items():
        if name not in PATH_KEYS:
            continue
        converted = r.value(name, _string, "a folder path or URI (string)")
        if converted is not None:
            paths[name] = converted
    r.finish()
    return paths


# ------------------------------------------------------------------- entry points
def parse_config(data: Any, source: str = "<memory>") -> Config:
    """Build a :class:`Config` from decoded JSON, or raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"the top level must be a JSON object, got {_describe(data)}"])
    problems: list[str] = []
    unknown: dict[str, str | None] = {}
    top = _Reader(data, "", problems, unknown)
    config = Config(
        dataset=_read_dataset(top.section("dataset")),
        prepare=_read_prepare(top.section("prepare")),
        profile=_read_profile(top.section("profile")),
        train=_read_train(top.section("train")),
        locate=_read_locate(top.section("locate")),
        aggregate=_read_aggregate(top.section("aggregate")),
        evaluate=_read_evaluate(top.section("evaluate")),
        paths=_read_paths(top.section("paths")),
        source=source,
        fingerprint=fingerprint(data),
    )
    top.finish()
    config = replace(config, unknown_keys=dict(unknown))
    _cross_checks(config, problems)
    for key, known in unknown.items():
        if known:
            logger.warning("config %s: key %s is not a config key; did you mean %s? (ignored)", source, key, known)
        else:
            logger.warning("config %s: key %s is not a DeepProfiler config key dpbeam uses; ignored", source, key)
    if problems:
        raise ConfigError(source, problems)
    return config


def _cross_checks(config: Config, problems: list[str]) -> None:
    loc = config.dataset.locations
    images = config.dataset.images
    if loc.mode == "full_image" and loc.effective_view_size is not None and images.width and images.height:
        if loc.effective_view_size > min(images.width, images.height):
            problems.append(
                f"dataset.locations.view_size ({loc.effective_view_size}) must not exceed the image size "
                f"({images.width}x{images.height}) in full_image mode")
    if loc.mask_objects and loc.mode == "full_image":
        problems.append("dataset.locations.mask_objects needs mode \"single_cells\" (outlines belong to cells)")
    locate = config.locate
    if locate.min_diameter >= locate.max_diameter:
        problems.append(f"locate.min_diameter ({locate.min_diameter:g}) must be below locate.max_diameter "
                        f"({locate.max_diameter:g})")
    if locate.size_unit == "um" and locate.pixel_size is None:
        problems.append('locate.size_unit "um" needs locate.pixel_size (micrometres per pixel, e.g. 0.656 at 20x)')
    if locate.channel is not None and config.channels and locate.channel not in config.channels:
        problems.append(f"locate.channel {locate.channel!r} is not one of dataset.images.channels "
                        f"({', '.join(config.channels)})")
    if not config.aggregate.group_columns:
        problems.append(f"aggregate.level {config.aggregate.level!r} needs aggregate.strata (the columns to group "
                        f"by; \"wells\" and \"sites\" have defaults)")
    partition = config.train.partition
    if partition.training and partition.validation:
        overlap = sorted(set(partition.training) & set(partition.validation))
        if overlap:
            problems.append(f"train.partition.training and train.partition.validation share values {overlap}")


def fingerprint(data: Any) -> str:
    """SHA-256 of the config's canonical JSON: same settings, same fingerprint."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_config(path: "StoragePath | str") -> Config:
    """Read and parse a config file (local path or URI)."""
    path = as_storage_path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["the file does not exist"])
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(str(path), [f"not valid JSON: {error}"]) from error
    return parse_config(data, source=str(path))
