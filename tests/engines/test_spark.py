"""prepare, export-sc and profile on Spark (``local[2]`` inside Beam's Spark job server, SDK workers
from an external pool), outputs byte-identical to the DirectRunner's. The options are exactly
``scripts/engines.py spark options --worker-pool HOST:PORT``, the ones the README shows."""

from __future__ import annotations

import json

import pytest

from tests.conftest import (EXAMPLE, assert_same_export, assert_same_features, assert_same_prepare,
                            cnn_profile_project)
from tests.engines.conftest import copy_project, direct, run_on

pytestmark = [pytest.mark.engines, pytest.mark.pipeline]


def test_prepare_on_spark_matches_direct(spark_options, prepared, tmp_path):
    root = copy_project(EXAMPLE, tmp_path / "project")
    text = run_on(root, "bbbc022.json", "prepare", spark_options)
    assert "plates committed: 1" in text and "PNGs written: 60" in text, text
    assert_same_prepare(root, prepared[0])


def test_export_on_spark_matches_direct(spark_options, exported, tmp_path):
    root = copy_project(exported[0], tmp_path / "project", "outputs/single-cells")
    text = run_on(root, "bbbc022.json", "export-sc", spark_options, "--shard-mb", "10")
    assert "cells exported: 808" in text, text
    assert_same_export(root, exported[0])


def test_profile_on_spark_matches_direct(spark_options, prepared, tmp_path, example_config_dict):
    reference, config = cnn_profile_project(prepared[0], tmp_path / "direct", example_config_dict)
    direct(reference, config, "profile")
    root, _ = cnn_profile_project(prepared[0], tmp_path / "spark", example_config_dict)
    run_on(root, config, "profile", spark_options)
    assert_same_features(root, reference, sites=12)
    record = json.loads((root / "outputs/results/features/_runs/index.json").read_text())
    assert record["sites_written"] == 12 and record["cells_profiled"] == 808
