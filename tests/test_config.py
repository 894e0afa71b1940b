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
