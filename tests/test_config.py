"""The config model: every key of the reference, its default, and every error path."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from dpcore.config import (ConfigError, StepSchedule, load_config, parse_config)

REPO = Path(__file__).resolve().parents[1]


def _with(base: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(base)
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data


def _without(base: dict, dotted: str) -> dict:
    data = copy.deepcopy(base)
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]
    return data


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.channels == ("DNA", "RNA", "ER", "AGP", "Mito")
    assert config.fingerprint and len(config.fingerprint) == 64


def test_bbbc022_config_loads_with_its_values():
    # tests/data/bbbc022 is the repository's copy of the BBBC022 example: the suite needs nothing outside it.
    config = load_config(REPO / "tests/data/bbbc022/inputs/config/bbbc022.json")
    assert config.dataset.images.width == 696 and config.dataset.images.height == 520
    assert config.dataset.locations.box_size == 128
    assert config.train.partition.training == ("0",) and config.train.partition.validation == ("1",)
    assert config.train.model.lr_schedule == "cosine"
    assert config.train.model.metrics == ("accuracy", "top_k", "average_class_precision")
    assert config.profile.checkpoint == "checkpoint_0003.hdf5"


def test_values_are_typed_and_immutable(example_config_dict):
    config = parse_config(example_config_dict)
    assert config.dataset.images.bits == 16
    assert config.prepare.illumination_correction.down_scale_factor == 4.0
    assert config.prepare.compression.implement is True
    assert config.train.model.params.learning_rate == pytest.approx(0.005)
    assert config.train.model.initialization == "random"
    assert config.train.partition.label_field == "Treatment"
    with pytest.raises(AttributeError):
        config.dataset.images.bits = 8  # type: ignore[misc]


def test_defaults_when_keys_are_absent():
    config = parse_config({"dataset": {"images": {"channels": ["DNA"], "width": 10, "height": 12}}})
    assert config.dataset.images.file_format == "tif"
    assert config.dataset.images.bits == 16
    assert config.dataset.locations.mode == "single_cells"
    assert config.dataset.locations.mask_objects is False
    assert config.prepare.illumination_correction.median_filter_size == 24
    assert config.prepare.compression.implement is False
    assert config.prepare.compression.scaling_factor == 1.0
    assert config.profile.checkpoint is None and config.profile.batch_size == 32
    assert config.train.model.checkpoint_policy == 1  # every epoch
    assert config.train.model.lr_schedule is None  # constant
    assert config.train.validation.frame == "val"
    assert config.train.sampling.factor == 1.0


def test_view_size_defaults_to_box_size():
    config = parse_config({"dataset": {"locations": {"box_size": 96}}})
    assert config.dataset.locations.effective_view_size == 96


@pytest.mark.parametrize("value, expected", [
    (None, None), ("cosine", "cosine"), ("Cosine", "cosine"), ("plateau", "plateau"),
    ({"epoch": [40, 80], "lr": [0.1, 0.01]}, StepSchedule((40, 80), (0.1, 0.01))),
])
def test_lr_schedule_forms(example_config_dict, value, expected):
    data = _with(example_config_dict, "train.model.lr_schedule", value)
    assert parse_config(data).train.model.lr_schedule == expected


@pytest.mark.parametrize("value, expected", [(1, 1), (5, 5), ("best", "best"), ("BEST", "best")])
def test_checkpoint_policy_forms(example_config_dict, value, expected):
    data = _with(example_config_dict, "train.model.checkpoint_policy", value)
    assert parse_config(data).train.model.checkpoint_policy == expected


@pytest.mark.parametrize("value", ["Random", "random", "RANDOM", "ImageNet", "imagenet"])
def test_initialization_is_case_insensitive(example_config_dict, value):
    data = _with(example_config_dict, "train.model.initialization", value)
    assert parse_config(data).train.model.initialization == value.lower()


def test_checkpoint_none_string_means_no_checkpoint(example_config_dict):
    data = _with(example_config_dict, "profile.checkpoint", "None")
    assert parse_config(data).profile.checkpoint is None


def test_split_values_become_strings(example_config_dict):
    data = _with(example_config_dict, "train.partition.training", [0, "A", 2.0])
    assert parse_config(data).train.partition.training == ("0", "A", "2")


# Every key with a wrong type or value: the message names the key path.
BAD_VALUES = [
    ("dataset.metadata.label_field", 3),
    ("dataset.images.channels", []),
    ("dataset.images.channels", "DNA"),
    ("dataset.images.channels", ["DNA", "DNA"]),
    ("dataset.images.file_format", "jpeg"),
    ("dataset.images.bits", 12),
    ("dataset.images.width", "696"),
    ("dataset.images.height", 0),
    ("dataset.locations.mode", "cells"),
    ("dataset.locations.box_size", "abc"),
    ("dataset.locations.box_size", -5),
    ("dataset.locations.view_size", 1.5),
    ("dataset.locations.mask_objects", "false"),
    ("prepare.illumination_correction.down_scale_factor", 0),
    ("prepare.illumination_correction.median_filter_size", 2.5),
    ("prepare.illumination_correction.median_filter_size", 1),
    ("prepare.compression.implement", 1),
    ("prepare.compression.scaling_factor", 0),
    ("profile.feature_layer", ""),
    ("profile.checkpoint", 3),
    ("profile.batch_size", 0),
    ("profile.use_pretrained_input_size", "224"),
    ("train.partition.targets", []),
    ("train.partition.split_field", ["Split"]),
    ("train.partition.training", "0"),
    ("train.partition.validation", [True]),
    ("train.model.name", "vgg16"),
    ("train.model.crop_generator", "my_generator"),
    ("train.model.augmentations", "yes"),
    ("train.model.metrics", ["accuracy", "f1"]),
    ("train.model.epochs", 0),
    ("train.model.initialization", "Xavier"),
    ("train.model.checkpoint_policy", "worst"),
    ("train.model.checkpoint_policy", 0),
    ("train.model.params.learning_rate", -0.1),
    ("train.model.params.batch_size", 3.5),
    ("train.model.params.conv_blocks", 9),
    ("train.model.params.label_smoothing", 1.5),
    ("train.model.params.online_label_smoothing", "0.1"),
    ("train.model.params.online_lambda", -1),
    ("train.model.lr_schedule", "linear"),
    ("train.model.lr_schedule", 5),
    ("train.sampling.factor", 0),
    ("train.sampling.cache_size", -1),
    ("train.sampling.workers", "2"),
    ("train.validation.frequency", 0),
    ("train.validation.top_k", 0),
    ("train.validation.batch_size", 0),
    ("train.validation.frame", "test"),
    ("train.validation.sample_first_crops", "true"),
    ("dataset.images", ["not", "a", "section"]),
]


@pytest.mark.parametrize("key, value", BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_wrong_type_or_value_names_the_key(example_config_dict, key, value):
    data = _with(example_config_dict, key, value)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="bad.json")
    message = str(caught.value)
    assert key in message, message
    assert "bad.json" in message


def test_all_problems_are_reported_at_once(example_config_dict):
    data = _with(example_config_dict, "dataset.images.bits", 12)
    data = _with(data, "train.model.epochs", "three")
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert len(caught.value.problems) == 2


@pytest.mark.parametrize("schedule, fragment", [
    ({"epoch": [10, 20], "lr": [0.1]}, "same length"),
    ({"epoch": [20, 10], "lr": [0.1, 0.01]}, "strictly increasing"),
    ({"epoch": [10]}, 'both "epoch" and "lr"'),
    ({"epoch": [10], "lr": [0]}, "train.model.lr_schedule.lr"),
])
def test_step_schedule_errors(example_config_dict, schedule, fragment):
    data = _with(example_config_dict, "train.model.lr_schedule", schedule)
    with pytest.raises(ConfigError, match="lr_schedule") as caught:
        parse_config(data)
    assert fragment in str(caught.value)


def test_conv_blocks_checked_against_the_model(example_config_dict):
    data = _with(example_config_dict, "train.model.name", "resnet")
    data = _with(data, "train.model.params.conv_blocks", 34)
    with pytest.raises(ConfigError, match=r"conv_blocks must be one of \[50, 101, 152\]"):
        parse_config(data)
    assert parse_config(_with(data, "train.model.params.conv_blocks", 101)).train.model.params.conv_blocks == 101
    # DeepProfiler's cnn builds conv_blocks blocks, at least one: the example's 0 (for B0) is refused.
    cnn = _with(example_config_dict, "train.model.name", "cnn")
    with pytest.raises(ConfigError, match=r"conv_blocks must be one of \[1, 2, .*10\] for model 'cnn', got 0"):
        parse_config(cnn)
    cnn = _with(_with(cnn, "train.model.params.conv_blocks", 4), "train.model.params.feature_dim", 64)
    assert parse_config(cnn).train.model.params.feature_dim == 64
    assert parse_config(example_config_dict).train.model.params.feature_dim == 256


def test_deepprofilers_keras_metric_names_are_accepted(example_config_dict):
    names = ["accuracy", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
             "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "top_k", "average_class_precision"]
    assert parse_config(_with(example_config_dict, "train.model.metrics", names)).train.model.metrics == tuple(names)


def test_training_and_validation_values_must_not_overlap(example_config_dict):
    data = _with(example_config_dict, "train.partition.validation", [0])
    with pytest.raises(ConfigError, match="share values"):
        parse_config(data)


def test_unknown_keys_warn_once_each_and_never_crash(example_config_dict, caplog):
    data = _with(example_config_dict, "dataset.locations.area_coverage", 0.75)
    data = _with(data, "dataset.outlines", "")
    data = _with(data, "dataset.metadata.control_id", "DMSO")
    data = _with(data, "comet_ml", {"api_key": "x"})
    with caplog.at_level(logging.WARNING, logger="dpcore.config"):
        config = parse_config(data)
    warned = [r.getMessage() for r in caplog.records]
    for key in ("dataset.locations.area_coverage", "dataset.outlines", "dataset.metadata.control_id", "comet_ml"):
        assert sum(key in w for w in warned) == 1, warned
    assert config.dataset.locations.box_size == 128


def test_commands_require_only_what_they_use(example_config_dict):
    # Profiling needs no label smoothing, no partition, no sampling.
    data = _without(example_config_dict, "train.model.params")
    data = _without(data, "train.partition")
    data = _without(data, "train.sampling")
    config = parse_config(data)
    config.require("profile")
    config.require("prepare")
    with pytest.raises(ConfigError, match="train.partition.targets is required by the 'export-sc' command"):
        config.require("export-sc")


def test_profile_requires_a_feature_layer(example_config_dict):
    config = parse_config(_without(example_config_dict, "profile.feature_layer"))
    config.require("train")
    with pytest.raises(ConfigError, match="profile.feature_layer"):
        config.require("profile")


def test_export_only_config_needs_no_model_or_profile():
    config = load_config(REPO / "configs/export.json")
    config.require("export-sc")
    config.require("prepare")
    with pytest.raises(ConfigError, match="train.model.name"):
        config.require("train")


def test_paths_section_is_parsed_and_unknown_path_keys_warn(example_config_dict, caplog):
    data = _with(example_config_dict, "paths", {"images": "/data/images", "locations": "locs", "bogus": "x"})
    with caplog.at_level(logging.WARNING, logger="dpcore.config"):
        config = parse_config(data)
    assert config.paths == {"images": "/data/images", "locations": "locs"}
    assert any("paths.bogus" in r.getMessage() for r in caplog.records)


def test_fingerprint_ignores_key_order(example_config_dict):
    shuffled = json.loads(json.dumps(example_config_dict, sort_keys=True))
    assert parse_config(shuffled).fingerprint == parse_config(example_config_dict).fingerprint
    changed = _with(example_config_dict, "profile.batch_size", 64)
    assert parse_config(changed).fingerprint != parse_config(example_config_dict).fingerprint


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(ConfigError, match="(?s)broken.json.*not valid JSON"):
        load_config(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="top level must be a JSON object"):
        load_config(listed)


# ---------------------------------------------------------------- the whole contract, key by key
# The documented defaults (README, "Config reference") and the message each key's wrong value gets: pinned
# here so that no default, bound or message changes unnoticed (scripts/mutation.sh config).
ALL_WRONG_MESSAGES = [
    "dataset.metadata.label_field must be a column name (string), got WRONG",
    "dataset.metadata.control_value must be a string, got WRONG",
    "dataset.images.channels must be a non-empty list of distinct column names, got WRONG",
    "dataset.images.file_format must be one of \"tif\", \"tiff\", \"png\", got WRONG",
    "dataset.images.bits must be 8 or 16, got WRONG",
    "dataset.images.width must be a positive integer (pixels), got WRONG",
    "dataset.images.height must be a positive integer (pixels), got WRONG",
    "dataset.locations.mode must be one of \"single_cells\", \"full_image\", got WRONG",
    "dataset.locations.box_size must be a positive integer (pixels), got WRONG",
    "dataset.locations.view_size must be a positive integer (pixels), got WRONG",
    "dataset.locations.mask_objects must be true or false, got WRONG",
    "prepare.illumination_correction.down_scale_factor must be a number >= 1, got WRONG",
    "prepare.illumination_correction.median_filter_size must be an integer >= 2 (the disk's diameter in pixels), got WRONG",
    "prepare.illumination_correction.functions must be one of \"deepprofiler\", \"cellprofiler\", got WRONG",
    "prepare.compression.implement must be true or false, got WRONG",
    "prepare.compression.scaling_factor must be a number in (0, 4], got WRONG",
    "profile.feature_layer must be a layer name (string), got WRONG",
    "profile.checkpoint must be a file name or \"None\", got WRONG",
    "profile.batch_size must be a positive integer, got WRONG",
    "profile.use_pretrained_input_size must be an integer input size such as 224 or 299, got WRONG",
    "train.partition.targets must be a non-empty list of column names, got WRONG",
    "train.partition.split_field must be a column name (string), got WRONG",
    "train.partition.training must be a non-empty list of split values, got WRONG",
    "train.partition.validation must be a list of split values, got WRONG",
    "train.model.params.learning_rate must be a positive number, got WRONG",
    "train.model.params.batch_size must be a positive integer, got WRONG",
    "train.model.params.conv_blocks must be a non-negative integer, got WRONG",
    "train.model.params.label_smoothing must be a number in [0, 1], got WRONG",
    "train.model.params.online_label_smoothing must be a number in [0, 1], got WRONG",
    "train.model.params.online_lambda must be a number in [0, 1], got WRONG",
    "train.model.params.feature_dim must be a positive integer, got WRONG",
    "train.model.name must be one of \"efficientnet\", \"resnet\", \"inception_resnet_v2\", \"cnn\", got WRONG",
    "train.model.crop_generator must be one of \"sampled_crop_generator\", \"online_labels_cropgen\", "
    "\"repeat_channel_crop_generator\", \"full_image_crop_generator\", got WRONG",
    "train.model.augmentations must be true or false, got WRONG",
    "train.model.metrics must be a list of one of \"accuracy\", \"top_k\", \"average_class_precision\", "
    "\"binary_accuracy\", \"categorical_accuracy\", \"sparse_categorical_accuracy\", \"top_k_categorical_accuracy\", "
    "\"sparse_top_k_categorical_accuracy\", got WRONG",
    "train.model.epochs must be a positive integer, got WRONG",
    "train.model.initialization must be \"Random\" or \"ImageNet\", got WRONG",
    "train.model.checkpoint_policy must be a positive integer (every N epochs) or \"best\", got WRONG",
    "train.model.lr_schedule needs both \"epoch\" and \"lr\" lists",
    "train.sampling.factor must be a number in (0, 1], got WRONG",
    "train.sampling.cache_size must be a positive integer, got WRONG",
    "train.sampling.workers must be a positive integer, got WRONG",
    "train.validation.frequency must be a positive integer (epochs), got WRONG",
    "train.validation.top_k must be a positive integer, got WRONG",
    "train.validation.batch_size must be a positive integer, got WRONG",
    "train.validation.frame must be one of \"all\", \"train\", \"val\", got WRONG",
    "train.validation.sample_first_crops must be true or false, got WRONG",
    "locate.channel must be a channel name from dataset.images.channels, got WRONG",
    "locate.use_illumination must be true or false, got WRONG",
    "locate.threshold must be one of \"otsu\", \"li\", \"triangle\", \"yen\", got WRONG",
    "locate.threshold_correction must be a positive number, got WRONG",
    "locate.smoothing_sigma must be a number >= 0, got WRONG",
    "locate.min_diameter must be a positive number, got WRONG",
    "locate.max_diameter must be a positive number, got WRONG",
    "locate.size_unit must be one of \"px\", \"um\", got WRONG",
    "locate.pixel_size must be a positive number (micrometres per pixel), got WRONG",
    "locate.split_touching must be true or false, got WRONG",
    "locate.declump_ratio must be a number in (0, 1], got WRONG",
    "locate.exclude_border must be true or false, got WRONG",
    "locate.qc_sites must be an integer >= 0, got WRONG",
    "aggregate.level must be a name such as \"wells\" or \"sites\", got WRONG",
    "aggregate.strata must be a list of Metadata_ column names, got WRONG",
    "aggregate.operation must be one of \"median\", \"mean\", got WRONG",
    "aggregate.normalize.method must be one of \"standardize\", \"mad_robustize\", got WRONG",
    "aggregate.normalize.samples must be one of \"controls\", \"all\", got WRONG",
    "aggregate.feature_select.operations must be a list of one of \"variance_threshold\", \"correlation_threshold\", "
    "\"drop_na_columns\", \"blocklist\", \"frequency_threshold\", got WRONG",
    "aggregate.feature_select.corr_threshold must be a number in [0, 1], got WRONG",
    "aggregate.feature_select.freq_cut must be a number in [0, 1], got WRONG",
    "aggregate.feature_select.unique_cut must be a number in [0, 1], got WRONG",
    "aggregate.feature_select.na_cutoff must be a number in [0, 1], got WRONG",
    "aggregate.treatment_columns must be a list of column names, got WRONG",
    "evaluate.level must be a profiles level written by aggregate (\"wells\", \"sites\"), got WRONG",
    "evaluate.annotation_column must be a column name such as Metadata_moa, got WRONG",
    "evaluate.null_size must be an integer >= 100, got WRONG",
    "evaluate.threshold must be a number in (0, 1], got WRONG",
    "evaluate.seed must be an integer >= 0, got WRONG",
    "evaluate.distance must be one of \"cosine\", \"euclidean\", \"abs_cosine\", \"correlation\", got WRONG",
]
DEFAULTS = {
    'dataset.metadata.label_field': None,
    'dataset.metadata.control_value': None,
    'dataset.images.channels': None,
    'dataset.images.file_format': 'tif',
    'dataset.images.bits': 16,
    'dataset.images.width': None,
    'dataset.images.height': None,
    'dataset.locations.mode': 'single_cells',
    'dataset.locations.box_size': None,
    'dataset.locations.view_size': None,
    'dataset.locations.mask_objects': False,
    'prepare.illumination_correction.down_scale_factor': 4.0,
    'prepare.illumination_correction.median_filter_size': 24,
    'prepare.illumination_correction.functions': 'deepprofiler',
    'prepare.compression.implement': False,
    'prepare.compression.scaling_factor': 1.0,
    'profile.feature_layer': None,
    'profile.checkpoint': None,
    'profile.batch_size': 32,
    'profile.use_pretrained_input_size': None,
    'train.partition.targets': None,
    'train.partition.split_field': None,
    'train.partition.training': None,
    'train.partition.validation': None,
    'train.model.params.learning_rate': 0.005,
    'train.model.params.batch_size': 32,
    'train.model.params.conv_blocks': 0,
    'train.model.params.label_smoothing': 0.0,
    'train.model.params.online_label_smoothing': 0.0,
    'train.model.params.online_lambda': 0.0,
    'train.model.params.feature_dim': 256,
    'train.model.name': None,
    'train.model.crop_generator': 'sampled_crop_generator',
    'train.model.augmentations': False,
    'train.model.metrics': ('accuracy',),
    'train.model.epochs': None,
    'train.model.initialization': 'random',
    'train.model.checkpoint_policy': 1,
    'train.sampling.factor': 1.0,
    'train.sampling.cache_size': 10000,
    'train.sampling.workers': 1,
    'train.validation.frequency': 1,
    'train.validation.top_k': 5,
    'train.validation.batch_size': 32,
    'train.validation.frame': 'val',
    'train.validation.sample_first_crops': False,
    'locate.channel': None,
    'locate.use_illumination': True,
    'locate.threshold': 'otsu',
    'locate.threshold_correction': 1.0,
    'locate.smoothing_sigma': None,
    'locate.min_diameter': 8.0,
    'locate.max_diameter': 80.0,
    'locate.size_unit': 'px',
    'locate.pixel_size': None,
    'locate.split_touching': True,
    'locate.declump_ratio': 0.8,
    'locate.exclude_border': False,
    'locate.qc_sites': 4,
    'aggregate.level': 'wells',
    'aggregate.strata': None,
    'aggregate.operation': 'median',
    'aggregate.normalize.method': 'standardize',
    'aggregate.normalize.samples': 'controls',
    'aggregate.feature_select.operations': ('variance_threshold', 'correlation_threshold', 'drop_na_columns',
                                            'blocklist'),
    'aggregate.feature_select.corr_threshold': 0.9,
    'aggregate.feature_select.freq_cut': 0.05,
    'aggregate.feature_select.unique_cut': 0.01,
    'aggregate.feature_select.na_cutoff': 0.05,
    'aggregate.treatment_columns': None,
    'evaluate.level': None,
    'evaluate.annotation_column': None,
    'evaluate.null_size': 10000,
    'evaluate.threshold': 0.05,
    'evaluate.seed': 0,
    'evaluate.distance': 'cosine',
    'train.model.lr_schedule': None,
}


def _nested(values: dict) -> dict:
    data: dict = {}
    for key, value in values.items():
        *sections, name = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return data


def test_every_default_is_the_documented_one():
    config = parse_config({})
    assert {key: config.get(key) for key in DEFAULTS} == DEFAULTS
    assert config.unknown_keys == {} and config.paths == {}


def test_every_key_with_a_wrong_value_is_named_with_what_it_must_be():
    wrong = {"wrong": [1, 2]}
    with pytest.raises(ConfigError) as error:
        parse_config(_nested({key: wrong for key in DEFAULTS}), "all-wrong.json")
    assert [problem.replace('{"wrong": [1, 2]}', "WRONG") for problem in error.value.problems] == ALL_WRONG_MESSAGES
    assert str(error.value).startswith(f"config all-wrong.json has {len(ALL_WRONG_MESSAGES)} problem(s):")


# key, values accepted (as read), values refused: every bound on its edge.
BOUNDS = [
    ("dataset.images.bits", [8, 16], [12, 0, 8.0, True, "8"]),
    ("dataset.images.width", [1], [0, -1, 1.5, True]),
    ("dataset.locations.box_size", [1], [0, 2.5, False]),
    ("dataset.locations.view_size", [1], [0]),
    ("prepare.illumination_correction.down_scale_factor", [1, 1.5], [0.99, 0, True]),
    ("prepare.illumination_correction.median_filter_size", [2], [1, 2.5]),
    ("prepare.compression.scaling_factor", [4, 0.01], [4.01, 0, -1]),
    ("profile.batch_size", [1], [0]),
    ("train.model.params.learning_rate", [1e-9], [0, -0.1]),
    ("train.model.params.conv_blocks", [0], [-1]),
    ("train.model.params.label_smoothing", [0, 1, 0.5], [-0.01, 1.01]),
    ("train.model.params.online_label_smoothing", [0, 1], [-0.01, 1.01]),
    ("train.model.params.online_lambda", [0, 1], [-0.01, 1.01]),
    ("train.model.params.feature_dim", [1], [0]),
    ("train.model.epochs", [1], [0]),
    ("train.model.checkpoint_policy", [1, "best", "BEST"], [0, "worst"]),
    ("train.model.initialization", ["ImageNet", "RANDOM"], ["imagenet1k", 1]),
    ("train.sampling.factor", [1, 0.01], [0, 1.01]),
    ("train.sampling.cache_size", [1], [0]),
    ("train.sampling.workers", [1], [0]),
    ("train.validation.frequency", [1], [0]),
    ("train.validation.top_k", [1], [0]),
    ("train.validation.batch_size", [1], [0]),
    ("locate.threshold_correction", [0.01], [0]),
    ("locate.smoothing_sigma", [0, 0.5], [-0.1]),
    ("locate.pixel_size", [0.01], [0]),
    ("locate.declump_ratio", [1, 0.01], [0, 1.01]),
    ("locate.qc_sites", [0], [-1]),
    ("aggregate.feature_select.corr_threshold", [0, 1], [-0.01, 1.01]),
    ("aggregate.feature_select.freq_cut", [0, 1], [-0.01, 1.01]),
    ("evaluate.null_size", [100], [99]),
    ("evaluate.threshold", [1, 0.01], [0, 1.01]),
    ("evaluate.seed", [0], [-1]),
    ("dataset.images.channels", [["DNA"], ["DNA", "ER"]], [[], ["DNA", "DNA"], "DNA", ["DNA", ""]]),
    ("train.model.metrics", [[], ["top_k", "accuracy"]], [["precision"], "accuracy"]),
    ("train.partition.validation", [[]], [[True]]),
    ("dataset.metadata.control_value", ["DMSO", 0, 1.0, 2.5], [True, None and 1, [1]]),
]


@pytest.mark.parametrize("key, accepted, refused", BOUNDS, ids=[bound[0] for bound in BOUNDS])
def test_each_bound_sits_on_its_edge(key, accepted, refused):
    for value in accepted:
        parse_config(_nested({key: value}))  # no error
    for value in refused:
        if value is None:
            continue
        with pytest.raises(ConfigError, match=f"^config <memory> has 1 problem\\(s\\):\\n  - {key} must be "):
            parse_config(_nested({key: value}))


def test_values_are_read_as_documented():
    config = parse_config(_nested({"train.model.initialization": "ImageNet", "train.model.checkpoint_policy": "Best",
                                   "dataset.metadata.control_value": 2.0, "dataset.images.file_format": "PNG",
                                   "prepare.illumination_correction.down_scale_factor": 2}))
    assert config.train.model.initialization == "imagenet" and config.train.model.checkpoint_policy == "best"
    assert config.dataset.metadata.control_value == "2" and config.dataset.images.file_format == "png"
    assert config.prepare.illumination_correction.down_scale_factor == 2.0
    assert isinstance(config.prepare.illumination_correction.down_scale_factor, float)
    assert parse_config(_nested({"dataset.metadata.control_value": 2.5})).dataset.metadata.control_value == "2.5"


def test_a_section_that_is_not_an_object_is_named_and_null_means_absent():
    with pytest.raises(ConfigError) as error:
        parse_config({"dataset": 5, "prepare": {"compression": [1]}})
    assert error.value.problems == ["dataset must be an object (a JSON {...} section), got 5",
                                    "prepare.compression must be an object (a JSON {...} section), got [1]"]
    assert parse_config({"dataset": None, "locate": None}).dataset.images.bits == 16


def test_long_values_are_cut_in_messages():
    with pytest.raises(ConfigError) as error:
        parse_config(_nested({"profile.feature_layer": ["x" * 100]}))
    shown = error.value.problems[0].split("got ", 1)[1]
    assert len(shown) == 60 and shown.endswith("...") and shown.startswith('["xxx')
    with pytest.raises(ConfigError) as error:
        parse_config(_nested({"profile.feature_layer": 7}))
    assert error.value.problems == ["profile.feature_layer must be a layer name (string), got 7"]


def test_every_command_names_each_key_it_needs():
    from dpcore.config import REQUIRED_KEYS

    empty = parse_config({}, "empty.json")
    for command, needed in REQUIRED_KEYS.items():
        if not needed:
            empty.require(command)
            continue
        with pytest.raises(ConfigError) as error:
            empty.require(command)
        assert error.value.problems == [f"{key} is required by the {command!r} command but is not set"
                                        for key in needed]
    typo = parse_config(_nested({"dataset.locations.box_szie": 64}), "typo.json")
    with pytest.raises(ConfigError) as error:
        typo.require("profile", ("profile.checkpoint",))
    assert "dataset.locations.box_size is required by the 'profile' command but is not set (the config has " \
           "dataset.locations.box_szie: did you mean box_size?)" in error.value.problems
    assert error.value.problems[-1] == "profile.checkpoint is required by the 'profile' command but is not set"
    assert typo.misspelt_keys == {"dataset.locations.box_szie": "dataset.locations.box_size"}
    far = parse_config(_nested({"dataset.locations.zzz": 1}))
    assert far.unknown_keys == {"dataset.locations.zzz": None} and far.misspelt_keys == {}


# A valid value other than the default for every key, and how it is read back (README's table).
VALID = {
    "dataset.metadata.label_field": ("Compound", "Compound"), "dataset.metadata.control_value": (0, "0"),
    "dataset.images.channels": (["DNA", "ER"], ("DNA", "ER")), "dataset.images.file_format": ("TIFF", "tiff"),
    "dataset.images.bits": (8, 8), "dataset.images.width": (700, 700), "dataset.images.height": (500, 500),
    "dataset.locations.mode": ("full_image", "full_image"), "dataset.locations.box_size": (96, 96),
    "dataset.locations.view_size": (256, 256), "dataset.locations.mask_objects": (False, False),
    "prepare.illumination_correction.down_scale_factor": (2, 2.0),
    "prepare.illumination_correction.median_filter_size": (10, 10),
    "prepare.illumination_correction.functions": ("cellprofiler", "cellprofiler"),
    "prepare.compression.implement": (True, True), "prepare.compression.scaling_factor": (0.5, 0.5),
    "profile.feature_layer": ("pool5", "pool5"), "profile.checkpoint": ("None", None),
    "profile.batch_size": (64, 64), "profile.use_pretrained_input_size": (224, 224),
    "train.partition.targets": (["Compound"], ("Compound",)), "train.partition.split_field": ("Fold", "Fold"),
    "train.partition.training": ([1, "2"], ("1", "2")), "train.partition.validation": ([], ()),
    "train.model.params.learning_rate": (0.1, 0.1), "train.model.params.batch_size": (16, 16),
    "train.model.params.conv_blocks": (3, 3), "train.model.params.label_smoothing": (0.1, 0.1),
    "train.model.params.online_label_smoothing": (0.2, 0.2), "train.model.params.online_lambda": (0.3, 0.3),
    "train.model.params.feature_dim": (64, 64), "train.model.name": ("cnn", "cnn"),
    "train.model.crop_generator": ("online_labels_cropgen", "online_labels_cropgen"),
    "train.model.augmentations": (True, True), "train.model.metrics": ([], ()), "train.model.epochs": (7, 7),
    "train.model.initialization": ("ImageNet", "imagenet"), "train.model.checkpoint_policy": ("best", "best"),
    "train.model.lr_schedule": ("Cosine", "cosine"),
    "train.sampling.factor": (0.5, 0.5), "train.sampling.cache_size": (100, 100), "train.sampling.workers": (3, 3),
    "train.validation.frequency": (2, 2), "train.validation.top_k": (3, 3), "train.validation.batch_size": (8, 8),
    "train.validation.frame": ("all", "all"), "train.validation.sample_first_crops": (True, True),
    "locate.channel": ("ER", "ER"), "locate.use_illumination": (False, False), "locate.threshold": ("li", "li"),
    "locate.threshold_correction": (1.5, 1.5), "locate.smoothing_sigma": (2, 2.0), "locate.min_diameter": (5, 5.0),
    "locate.max_diameter": (50, 50.0), "locate.size_unit": ("um", "um"), "locate.pixel_size": (0.65, 0.65),
    "locate.split_touching": (False, False), "locate.declump_ratio": (0.5, 0.5), "locate.exclude_border": (True, True),
    "locate.qc_sites": (0, 0), "aggregate.level": ("plates", "plates"),
    "aggregate.strata": (["Metadata_Plate"], ("Metadata_Plate",)), "aggregate.operation": ("mean", "mean"),
    "aggregate.normalize.method": ("mad_robustize", "mad_robustize"), "aggregate.normalize.samples": ("all", "all"),
    "aggregate.feature_select.operations": ([], ()), "aggregate.feature_select.corr_threshold": (0.8, 0.8),
    "aggregate.feature_select.freq_cut": (0.1, 0.1), "aggregate.feature_select.unique_cut": (0.2, 0.2),
    "aggregate.feature_select.na_cutoff": (0.3, 0.3),
    "aggregate.treatment_columns": (["Metadata_Compound", "Metadata_Dose"], ("Metadata_Compound", "Metadata_Dose")),
    "evaluate.level": ("sites", "sites"), "evaluate.annotation_column": ("Metadata_moa", "Metadata_moa"),
    "evaluate.null_size": (500, 500), "evaluate.threshold": (0.1, 0.1), "evaluate.seed": (3, 3),
    "evaluate.distance": ("euclidean", "euclidean"),
}
# Every allowed value of each choice key, written out (not taken from dpcore.config).
CHOICES = {
    "dataset.images.file_format": ["tif", "tiff", "png"], "dataset.locations.mode": ["single_cells", "full_image"],
    "prepare.illumination_correction.functions": ["deepprofiler", "cellprofiler"],
    "train.model.name": ["efficientnet", "resnet", "inception_resnet_v2", "cnn"],
    "train.model.crop_generator": ["sampled_crop_generator", "online_labels_cropgen", "repeat_channel_crop_generator",
                                   "full_image_crop_generator"],
    "train.validation.frame": ["all", "train", "val"], "locate.threshold": ["otsu", "li", "triangle", "yen"],
    "locate.size_unit": ["px", "um"], "aggregate.operation": ["median", "mean"],
    "aggregate.normalize.method": ["standardize", "mad_robustize"], "aggregate.normalize.samples": ["controls", "all"],
    "evaluate.distance": ["cosine", "euclidean", "abs_cosine", "correlation"],
}


def test_every_key_reads_a_valid_value_as_documented():
    assert set(VALID) == set(DEFAULTS)
    data = _nested({key: value for key, (value, _) in VALID.items()})
    data["locate"]["channel"] = "ER"
    data["dataset"]["locations"]["view_size"] = 256
    config = parse_config(data)
    assert {key: config.get(key) for key in VALID} == {key: read for key, (_, read) in VALID.items()}


def test_every_allowed_choice_is_accepted():
    for key, values in CHOICES.items():
        for value in values:
            extra = {"train.model.params.conv_blocks": {"resnet": 50, "cnn": 2}.get(value, 0)} \
                if key == "train.model.name" else {"locate.pixel_size": 0.5} if value == "um" else {}
            assert parse_config(_nested({key: value, **extra})).get(key) == value, (key, value)
    metrics = ["accuracy", "top_k", "average_class_precision", "binary_accuracy", "categorical_accuracy",
               "sparse_categorical_accuracy", "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy"]
    assert parse_config(_nested({"train.model.metrics": metrics})).train.model.metrics == tuple(metrics)
    operations = ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist", "frequency_threshold"]
    assert parse_config(_nested({"aggregate.feature_select.operations": operations})).aggregate.feature_select == \
        tuple(operations)
    for key, twice in (("aggregate.feature_select.operations", "blocklist"), ("aggregate.strata", "Metadata_A"),
                       ("aggregate.treatment_columns", "Metadata_A")):  # each value at most once
        with pytest.raises(ConfigError, match=f"{key} must be"):
            parse_config(_nested({key: [twice, twice]}))


@pytest.mark.parametrize("schedule, problem", [
    ({"epoch": [2, 3], "lr": [0.01]},
     'train.model.lr_schedule: "epoch" and "lr" must have the same length, got 2 and 1'),
    ({"epoch": [3, 2], "lr": [0.01, 0.001]}, "train.model.lr_schedule.epoch must be strictly increasing, got [3, 2]"),
    ({"epoch": [2, 2], "lr": [0.01, 0.001]}, "train.model.lr_schedule.epoch must be strictly increasing, got [2, 2]"),
    ({"epoch": [2]}, 'train.model.lr_schedule needs both "epoch" and "lr" lists'),
    ({"lr": [0.1]}, 'train.model.lr_schedule needs both "epoch" and "lr" lists'),
    ({"epoch": [-1], "lr": [0.1]}, "train.model.lr_schedule.epoch must be a non-empty list of epoch numbers, got [-1]"),
    ({"epoch": [1], "lr": [0]},
     "train.model.lr_schedule.lr must be a non-empty list of positive learning rates, got [0]"),
    ("linear", 'train.model.lr_schedule must be absent, "cosine", "plateau" or {"epoch": [...], "lr": [...]}, '
               'got "linear"'),
])
def test_a_wrong_lr_schedule_says_what_is_wrong(schedule, problem):
    with pytest.raises(ConfigError) as error:
        parse_config(_nested({"train.model.lr_schedule": schedule}))
    assert error.value.problems == [problem]


def test_lr_schedules_that_are_right():
    for value, read in (({"epoch": [0, 3], "lr": [0.01, 0.001]}, StepSchedule((0, 3), (0.01, 0.001))),
                        ("PLATEAU", "plateau"), (None, None)):
        config = parse_config(_nested({"train.model.lr_schedule": value}))
        assert config.train.model.lr_schedule == read and config.unknown_keys == {}


@pytest.mark.parametrize("values, problem", [
    ({"dataset.locations.mode": "full_image", "dataset.locations.view_size": 600, "dataset.images.width": 696,
      "dataset.images.height": 520},
     "dataset.locations.view_size (600) must not exceed the image size (696x520) in full_image mode"),
    ({"dataset.locations.mode": "full_image", "dataset.locations.mask_objects": True},
     'dataset.locations.mask_objects needs mode "single_cells" (outlines belong to cells)'),
    ({"locate.min_diameter": 20, "locate.max_diameter": 20},
     "locate.min_diameter (20) must be below locate.max_diameter (20)"),
    ({"locate.size_unit": "um"},
     'locate.size_unit "um" needs locate.pixel_size (micrometres per pixel, e.g. 0.656 at 20x)'),
    ({"dataset.images.channels": ["DNA"], "locate.channel": "ER"},
     "locate.channel 'ER' is not one of dataset.images.channels (DNA)"),
    ({"aggregate.level": "plates"},
     'aggregate.level \'plates\' needs aggregate.strata (the columns to group by; "wells" and "sites" have defaults)'),
    ({"train.partition.training": ["0", "1"], "train.partition.validation": ["1"]},
     "train.partition.training and train.partition.validation share values ['1']"),
])
def test_settings_that_contradict_each_other_are_named(values, problem):
    with pytest.raises(ConfigError) as error:
        parse_config(_nested(values))
    assert error.value.problems == [problem]


def test_settings_on_the_edge_of_a_contradiction_pass():
    for values in ({"dataset.locations.mode": "full_image", "dataset.locations.view_size": 520,
                    "dataset.images.width": 696, "dataset.images.height": 520},
                   {"dataset.locations.mode": "single_cells", "dataset.locations.view_size": 900,
                    "dataset.images.width": 696, "dataset.images.height": 520},
                   {"dataset.locations.mask_objects": True},
                   {"locate.min_diameter": 19, "locate.max_diameter": 20},
                   {"locate.size_unit": "um", "locate.pixel_size": 0.5},
                   {"dataset.images.channels": ["DNA", "ER"], "locate.channel": "ER"},
                   {"train.partition.training": ["0"], "train.partition.validation": ["1"]}):
        parse_config(_nested(values))


def test_unknown_keys_warn_once_each_with_the_file_and_a_guess(caplog):
    with caplog.at_level("WARNING", logger="dpcore.config"):
        config = parse_config(_nested({"dataset.locations.box_szie": 64, "dataset.area_coverage": 1}), "mine.json")
    assert caplog.messages == [
        "config mine.json: key dataset.locations.box_szie is not a config key; did you mean "
        "dataset.locations.box_size? (ignored)",
        "config mine.json: key dataset.area_coverage is not a DeepProfiler config key dpbeam uses; ignored"]
    assert config.source == "mine.json"
    with pytest.raises(ConfigError) as error:
        parse_config([1, 2], "list.json")
    assert str(error.value).startswith("config list.json has 1 problem(s):") and \
        error.value.problems == ["the top level must be a JSON object, got [1, 2]"]


def test_a_feature_select_threshold_without_its_operation_warns(caplog):
    """freq_cut and unique_cut belong to pycytominer's frequency_threshold (not variance_threshold, since
    pycytominer 1.0): set with the default operations they would do nothing, and the user is told."""
    with caplog.at_level("WARNING", logger="dpcore.config"):
        parse_config(_nested({"aggregate.feature_select.freq_cut": 0.2, "aggregate.feature_select.na_cutoff": 0.1}))
    assert caplog.messages == ["config: aggregate.feature_select.freq_cut is set but has no effect: its operation "
                               "'frequency_threshold' is not in aggregate.feature_select.operations"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="dpcore.config"):
        parse_config(_nested({"aggregate.feature_select.operations": ["frequency_threshold"],
                              "aggregate.feature_select.freq_cut": 0.2, "aggregate.feature_select.unique_cut": 0.2,
                              "aggregate.feature_select.corr_threshold": 0.5}))
    assert caplog.messages == ["config: aggregate.feature_select.corr_threshold is set but has no effect: its "
                               "operation 'correlation_threshold' is not in aggregate.feature_select.operations"]


def test_the_paths_section_is_read_and_checked():
    config = parse_config({"paths": {"images": "/data/images", "index": "gs://b/index", "other": "x"}})
    assert config.paths == {"images": "/data/images", "index": "gs://b/index"}
    with pytest.raises(ConfigError) as error:
        parse_config({"paths": {"images": 3, "logs": "/l"}})
    assert error.value.problems == ["paths.images must be a folder path or URI (string), got 3"]


def test_cnn_blocks_are_checked_even_when_absent():
    with pytest.raises(ConfigError) as error:
        parse_config(_nested({"train.model.name": "cnn"}))
    assert error.value.problems == ["train.model.params.conv_blocks must be one of [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] "
                                    "for model 'cnn', got 0"]
    parse_config(_nested({"train.model.name": "efficientnet"}))  # B0 by default
    with pytest.raises(ConfigError, match="for model 'efficientnet', got 9"):
        parse_config(_nested({"train.model.name": "efficientnet", "train.model.params.conv_blocks": 9}))
    sampled = parse_config(_nested({"train.sampling.workers": 2}))
    assert sampled.train.sampling.workers == 2 and sampled.train.validation.top_k == 5
