"""aggregate, evaluate, report: the stages after profile, against pycytominer, copairs and plain numpy.

Each reference is computed here, independently of dpbeam's code: pycytominer called on all the cells at
once (dpbeam reduces them in a Beam pipeline), normalization and average precision written out in numpy,
and the report opened in a real headless browser (Debian's chromium).
"""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycytominer import aggregate as pycytominer_aggregate
from pycytominer import feature_select as pycytominer_feature_select

from tests.conftest import check_report, run_cli, write_config, write_synthetic_features

PROFILES = "outputs/results/profiles"
STRATA = ["Metadata_Plate", "Metadata_Well"]

# One xdist worker runs the whole module: its aggregated synthetic screen (a module fixture) is
# built once (scripts/test.sh).
pytestmark = pytest.mark.xdist_group("profiles")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, str]:
    """A project with seeded per-cell features, aggregated once (read-only for tests)."""
    root = tmp_path_factory.mktemp("profiles") / "project"
    config = write_synthetic_features(root)
    name = write_config(root, config)
    code, text = run_cli("--root", str(root), "--config", name, "aggregate")
    assert code == 0, text
    return root, name


def all_cells(root: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted(glob.glob(str(root / "outputs/results/features/*/*.parquet")))],
                     ignore_index=True)


def features_of(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith("Metadata_")]


def test_wells_are_pycytominers_aggregate_of_all_the_cells(synthetic):
    root, _ = synthetic
    cells = all_cells(root)
    features = features_of(cells)
    ours = pd.read_parquet(root / PROFILES / "wells.parquet")
    reference = pycytominer_aggregate(cells, strata=STRATA, features=features, operation="median", output_type=None)
    reference = reference.sort_values(STRATA).reset_index(drop=True)
    assert list(ours[STRATA].itertuples(index=False)) == list(reference[STRATA].itertuples(index=False))
    np.testing.assert_allclose(ours[features].to_numpy(), reference[features].to_numpy(), atol=1e-6)
    counts = cells.groupby(STRATA).size().sort_index().to_numpy()
    np.testing.assert_array_equal(ours["Metadata_Object_Count"].to_numpy(), counts)
    # Metadata constant in a well is kept; per-cell metadata is not.
    assert {"Metadata_Treatment", "Metadata_moa"} <= set(ours.columns) and "Metadata_Cell_Index" not in ours
    manifest = json.loads((root / PROFILES / "_manifest.json").read_text())
    assert manifest["counts"]["cells"] == len(cells) and manifest["counts"]["groups"] == 16


def test_normalized_per_plate_against_the_controls_in_numpy(synthetic):
    root, _ = synthetic
    wells = pd.read_parquet(root / PROFILES / "wells.parquet")
    ours = pd.read_parquet(root / PROFILES / "wells_normalized.parquet")
    features = features_of(wells)
    for plate, rows in wells.groupby("Metadata_Plate"):
        values = rows[features].to_numpy(np.float64)
        controls = values[rows["Metadata_Treatment"].eq("DMSO").to_numpy()]
        expected = (values - controls.mean(axis=0)) / controls.std(axis=0)  # StandardScaler: population std
        got = ours[ours["Metadata_Plate"] == plate].sort_values("Metadata_Well")[features].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_mad_robustize_and_feature_selection_match_pycytominer(tmp_path, synthetic):
    root = tmp_path / "project"
    shutil.copytree(synthetic[0] / "outputs/results/features", root / "outputs/results/features")
    config = json.loads((synthetic[0] / "inputs/config" / synthetic[1]).read_text())
    config["aggregate"] = {"normalize": {"method": "mad_robustize", "samples": "all"}, "operation": "mean",
                           "feature_select": {"operations": ["variance_threshold", "correlation_threshold"],
                                              "corr_threshold": 0.8}}
    code, text = run_cli("--root", str(root), "--config", write_config(root, config), "aggregate")
    assert code == 0, text
    wells = pd.read_parquet(root / PROFILES / "wells.parquet")
    cells = all_cells(root)
    features = features_of(cells)
    means = cells.groupby(STRATA)[features].mean().sort_index().to_numpy()
    np.testing.assert_allclose(wells[features].to_numpy(), means, atol=1e-6)
    normalized = pd.read_parquet(root / PROFILES / "wells_normalized.parquet")
    for plate, rows in wells.groupby("Metadata_Plate"):
        values = rows[features].to_numpy(np.float64)
        median = np.median(values, axis=0)
        mad = np.median(np.abs(values - median), axis=0) * 1.4826
        expected = (values - median) / (mad + 1e-18)
        got = normalized[normalized["Metadata_Plate"] == plate][features].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    selected = pd.read_parquet(root / PROFILES / "wells_normalized_feature_select.parquet")
    reference = pycytominer_feature_select(normalized, features=features,
                                           operation=["variance_threshold", "correlation_threshold"],
                                           corr_threshold=0.8, output_type=None)
    assert list(selected.columns) == list(reference.columns)
    assert len(features_of(selected)) < len(features)
    np.testing.assert_allclose(selected[features_of(selected)].to_numpy(),
                               reference[features_of(reference)].to_numpy(), atol=1e-6)


def test_every_feature_selection_and_consensus_setting_reaches_pycytominer(tmp_path, synthetic):
    """Site profiles (48: 2 plates x 8 wells x 3 sites, the same values on both plates) with three features
    each of which one setting alone decides: cnn_10 has a dominant value (second most common / most common =
    6/30 = 0.2: dropped by freq_cut 0.25, kept by the default 0.05, and 8 distinct values: kept by both
    unique_cut values), cnn_8 has 3 values of 16 sites each (3/48 = 0.0625 distinct: dropped by unique_cut 0.1,
    kept by the default 0.01), cnn_9 is missing in 6 sites (kept by na_cutoff 0.2, dropped by the default
    0.05). Treatments by mechanism instead of the label field."""
    root = tmp_path / "project"
    shutil.copytree(synthetic[0] / "outputs/results/features", root / "outputs/results/features")
    dominant = {"B04-1": 1, "B04-2": 1, "B04-3": 1, "B03-2": 2, "B03-3": 3, "B02-1": 4, "B02-2": 5, "B02-3": 6,
                "B01-1": 7}
    for path in (root / "outputs/results/features").glob("*/*.parquet"):
        cells = pd.read_parquet(path)
        cells["cnn_10"] = np.float32(dominant.get(path.stem, 0))  # 0 in 30 sites, 1 in 6, 2..7 in 2 each
        cells["cnn_8"] = np.float32(path.stem.split("-")[1])  # the site number: 1, 2 or 3
        if path.stem.startswith("B03"):
            cells["cnn_9"] = np.float32("nan")
        cells.to_parquet(path, index=False)
    config = json.loads((synthetic[0] / "inputs/config" / synthetic[1]).read_text())
    operations = ["frequency_threshold", "drop_na_columns", "variance_threshold"]
    settings = {"freq_cut": 0.25, "unique_cut": 0.1, "na_cutoff": 0.2}
    config["aggregate"] = {"level": "sites", "feature_select": {"operations": operations, **settings},
                           "treatment_columns": ["Metadata_moa"]}
    code, text = run_cli("--root", str(root), "--config", write_config(root, config), "aggregate")
    assert code == 0, text
    normalized = pd.read_parquet(root / PROFILES / "sites_normalized.parquet")
    assert len(normalized) == 48
    features = features_of(normalized)
    reference = pycytominer_feature_select(normalized, features=features, operation=operations, output_type=None,
                                           **settings)
    selected = pd.read_parquet(root / PROFILES / "sites_normalized_feature_select.parquet")
    assert list(selected.columns) == list(reference.columns)
    kept = features_of(selected)
    assert "cnn_10" not in kept and "cnn_8" not in kept and "cnn_9" in kept  # each setting matters here
    np.testing.assert_allclose(selected[kept].to_numpy(), reference[kept].to_numpy(), atol=1e-6)
    treatments = pd.read_parquet(root / PROFILES / "treatments.parquet").set_index("Metadata_moa").sort_index()
    expected = selected.groupby("Metadata_moa")[kept].median().sort_index()
    assert list(treatments.index) == ["control", "mA", "mB"]
    np.testing.assert_allclose(treatments[kept].to_numpy(), expected.to_numpy(), atol=1e-6)


def test_treatments_are_the_median_of_their_wells_with_their_annotations(synthetic):
    root, _ = synthetic
    selected = pd.read_parquet(root / PROFILES / "wells_normalized_feature_select.parquet")
    treatments = pd.read_parquet(root / PROFILES / "treatments.parquet")
    features = features_of(selected)
    expected = selected.groupby("Metadata_Treatment")[features].median()
    got = treatments.set_index("Metadata_Treatment").loc[expected.index, features]
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), atol=1e-6)
    assert dict(zip(treatments["Metadata_Treatment"], treatments["Metadata_moa"]))["drugA2"] == "mA"


# ------------------------------------------------------------------ evaluate
def average_precision_by_hand(values: np.ndarray, labels: np.ndarray, query: int, control: str,
                              distance: str = "cosine") -> float:
    """AP of one replicate: rank its own treatment's other replicates among them and the controls, nearest
    first (cosine similarity, or Euclidean distance)."""
    unit = values / np.linalg.norm(values, axis=1, keepdims=True)
    candidates = [i for i in range(len(labels)) if i != query and labels[i] in (labels[query], control)]
    if distance == "euclidean":
        order = sorted(candidates, key=lambda i: float(np.linalg.norm(values[query] - values[i])))
    else:
        order = sorted(candidates, key=lambda i: -float(unit[query] @ unit[i]))
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if labels[i] == labels[query]:
            hits += 1
            precisions.append(hits / rank)
    return float(np.mean(precisions))


def test_phenotypic_activity_is_copairs_map_and_equals_average_precision_by_hand(tmp_path, synthetic):
    root = tmp_path / "project"
    shutil.copytree(synthetic[0], root)
    code, text = run_cli("--root", str(root), "--config", synthetic[1], "evaluate")
    assert code == 0, text
    assert "phenotypic activity: " in text and "consistency: " in text
    activity = pd.read_parquet(root / "outputs/results/evaluation/phenotypic_activity.parquet")
    assert {"mean_average_precision", "p_value", "corrected_p_value", "below_corrected_p"} <= set(activity.columns)
    selected = pd.read_parquet(root / PROFILES / "wells_normalized_feature_select.parquet")
    values = selected[features_of(selected)].to_numpy(np.float64)
    labels = selected["Metadata_Treatment"].to_numpy()
    for treatment in ("drugA", "drugB"):
        queries = np.flatnonzero(labels == treatment)
        expected = np.mean([average_precision_by_hand(values, labels, q, "DMSO") for q in queries])
        got = activity.set_index("Metadata_Treatment").loc[treatment, "mean_average_precision"]
        assert got == pytest.approx(expected, abs=1e-6)
    significant = dict(zip(activity["Metadata_Treatment"], activity["below_corrected_p"]))
    assert significant["drugA"] and significant["drugA2"]  # shifted: distinguishable from DMSO
    consistency = pd.read_parquet(root / "outputs/results/evaluation/consistency.parquet")
    assert set(consistency["Metadata_moa"]) == {"mA", "mB"}
    plot = Image.open(root / "outputs/results/evaluation/phenotypic_activity.png")
    assert plot.size[0] >= 500
    assert json.loads((root / "outputs/results/evaluation/_manifest.json").read_text())["phenotypic_activity"][
        "treatments"] == 4


def test_every_evaluate_setting_reaches_copairs(tmp_path, synthetic):
    """Site profiles evaluated while aggregate.level says wells; Euclidean ranking; a null of 300 draws
    (copairs' p-value is (k + 1) / (null_size + 1)); the threshold; two seeds give two nulls."""
    root = tmp_path / "project"
    shutil.copytree(synthetic[0], root)
    config = json.loads((root / "inputs/config" / synthetic[1]).read_text())
    sites = write_config(root, {**config, "aggregate": {"level": "sites"}}, name="sites.json")
    assert run_cli("--root", str(root), "--config", sites, "aggregate")[0] == 0
    activity = {}
    for seed in (5, 6):
        settings = {"level": "sites", "distance": "euclidean", "null_size": 300, "threshold": 0.3, "seed": seed}
        name = write_config(root, {**config, "evaluate": settings}, name=f"seed{seed}.json")
        code, text = run_cli("--root", str(root), "--config", name, "evaluate")
        assert code == 0, text
        assert "evaluate: 48 sites profile(s)" in text and "(corrected p < 0.3)" in text
        activity[seed] = pd.read_parquet(root / "outputs/results/evaluation/phenotypic_activity.parquet")
    selected = pd.read_parquet(root / PROFILES / "sites_normalized_feature_select.parquet")
    values = selected[features_of(selected)].to_numpy(np.float64)
    labels = selected["Metadata_Treatment"].to_numpy()
    ours = activity[5].set_index("Metadata_Treatment")
    for treatment in ("drugA", "drugB"):
        queries = np.flatnonzero(labels == treatment)
        expected = np.mean([average_precision_by_hand(values, labels, q, "DMSO", "euclidean") for q in queries])
        assert ours.loc[treatment, "mean_average_precision"] == pytest.approx(expected, abs=1e-6)
    draws = ours["p_value"].to_numpy() * 301
    np.testing.assert_allclose(draws, np.round(draws), atol=1e-6)
    assert (ours["p_value"] < 1).any()
    np.testing.assert_array_equal(ours["below_corrected_p"].to_numpy(), ours["corrected_p_value"].to_numpy() < 0.3)
    other = activity[6].set_index("Metadata_Treatment").loc[ours.index]
    assert not np.array_equal(ours["p_value"].to_numpy(), other["p_value"].to_numpy())


def test_profiles_of_an_unfinished_aggregate_are_never_evaluated_or_reported(tmp_path, synthetic):
    root = tmp_path / "project"
    shutil.copytree(synthetic[0], root)
    (root / PROFILES / "_manifest.json").unlink()  # as after an aggregate that failed before its last step
    code, text = run_cli("--root", str(root), "--config", synthetic[1], "evaluate")
    assert code != 0 and "is not committed (no _manifest.json beside it" in text
    code, text = run_cli("--root", str(root), "--config", synthetic[1], "report")
    assert code == 0 and "plate maps" in text and "embedding" in text
    assert "No profiles yet: run dpbeam aggregate" in (root / "outputs/results/report/index.html").read_text()


def test_evaluate_says_what_is_missing(tmp_path, synthetic):
    root = tmp_path / "project"
    (root / "inputs/config").mkdir(parents=True)
    code, text = run_cli("--root", str(root), "--config", write_config(root, {"dataset": {}}), "evaluate")
    assert code != 0 and "wells_normalized_feature_select.parquet does not exist: run aggregate" in text


# ------------------------------------------------------------------ report
def test_report_of_a_synthetic_screen_loads_every_figure_in_a_browser(tmp_path, synthetic):
    root = tmp_path / "project"
    shutil.copytree(synthetic[0], root)
    assert run_cli("--root", str(root), "--config", synthetic[1], "evaluate")[0] == 0
    code, text = run_cli("--root", str(root), "--config", synthetic[1], "report")
    assert code == 0, text
    assert "sections without data yet: illumination functions, crop montage" in text
    page = root / "outputs/results/report/index.html"
    html = page.read_text()
    for heading in ("Cells per well", "Failures", "Profiles", "Phenotypic activity (mAP)", "Consistency (mAP)",
                    "Provenance"):
        assert f"<h2>{heading}</h2>" in html
    assert "drugA2" in html and "No crop montage yet: run dpbeam export-sc" in html
    check_report(page, tmp_path)


def test_an_unreadable_feature_file_goes_to_the_dead_letters_and_the_rest_is_aggregated(tmp_path):
    root = tmp_path / "project"
    name = write_config(root, write_synthetic_features(root))
    broken = root / "outputs/results/features/P1/B01-2.parquet"
    broken.write_bytes(b"not parquet")
    code, text = run_cli("--root", str(root), "--config", name, "aggregate")
    assert code == 1 and "B01-2.parquet" in text
    failures = [json.loads(line) for line in (root / PROFILES / "_failed/aggregate-failures.jsonl").open()]
    assert len(failures) == 1 and failures[0]["item"].endswith("P1/B01-2.parquet")
    wells = pd.read_parquet(root / PROFILES / "wells.parquet")
    assert len(wells) == 16  # B01 of P1 still has its two other sites
    manifest = json.loads((root / PROFILES / "_manifest.json").read_text())
    assert manifest["failures"] == 1


def test_validate_names_a_wrong_aggregate_or_evaluate_key(tmp_path):
    root = tmp_path / "project"
    config = write_synthetic_features(root)
    config["aggregate"] = {"operation": "mode", "normalize": {"method": "zscore"}}
    config["evaluate"] = {"null_size": 5}
    code, text = run_cli("--root", str(root), "--config", write_config(root, config), "validate")
    assert code != 0
    for expected in ('aggregate.operation must be one of "median", "mean"',
                     'aggregate.normalize.method must be one of "standardize", "mad_robustize"',
                     "evaluate.null_size must be an integer >= 100"):
        assert expected in text


def test_strata_that_files_do_not_tell_are_reduced_through_a_shuffle_of_cells(tmp_path):
    """Treatments per plate (several wells per group): the path that groups cells, not files."""
    root = tmp_path / "project"
    config = write_synthetic_features(root)
    strata = ["Metadata_Plate", "Metadata_Treatment"]
    config["aggregate"] = {"level": "plate_treatments", "strata": strata, "normalize": {"samples": "all"}}
    code, text = run_cli("--root", str(root), "--config", write_config(root, config), "aggregate")
    assert code == 0, text
    ours = pd.read_parquet(root / PROFILES / "plate_treatments.parquet")
    cells = all_cells(root)
    features = features_of(cells)
    reference = pycytominer_aggregate(cells, strata=strata, features=features, operation="median", output_type=None)
    reference = reference.sort_values(strata).reset_index(drop=True)
    assert len(ours) == 10 and list(ours[strata].itertuples(index=False)) == list(
        reference[strata].itertuples(index=False))
    np.testing.assert_allclose(ours[features].to_numpy(), reference[features].to_numpy(), atol=1e-6)
    assert "Metadata_Well" not in ours  # several wells per group: not a group property
