"""``dpbeam profile`` end to end: features equal a direct Keras call, schema, resume, faults."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import keras  # noqa: E402  (required: the suite fails, never skips, without it)

from dpcore import models  # noqa: E402
from dpcore.checkpoints import load_weights_by_name, save_weights  # noqa: E402
from dpcore.config import parse_config  # noqa: E402
from dpcore.layout import ProjectLayout  # noqa: E402
from dpcore.metadata import load_sites  # noqa: E402
from dpcore.single_cells import CellSource  # noqa: E402
from dpcore.storage import StoragePath  # noqa: E402
from tests import reference  # noqa: E402
from tests.conftest import EXAMPLE, built_once_per_run, run_cli, write_config  # noqa: E402

pytestmark = pytest.mark.pipeline
BOX = 64
CHANNELS = ("DNA", "RNA", "ER", "AGP", "Mito")
SITES = [("A01", "1"), ("A01", "7"), ("A13", "1"), ("A13", "7")]


@pytest.fixture(scope="session")
def seeded_efficientnet(tmp_path_factory) -> Path:
    """An EfficientNet-B0 checkpoint (64-pixel crops, 5 channels, 2 classes, seed 3), written once per run:
    building and saving it is ~3.5 s of CPU, and a dozen tests start from the same one."""
    def build(folder: Path) -> str:
        keras.utils.set_random_seed(3)
        save_weights(models.classifier("efficientnet", (BOX, BOX, 5), 2), StoragePath(str(folder / "b0.hdf5")))
        return "built"

    return built_once_per_run(tmp_path_factory, "seeded-efficientnet", build)[0] / "b0.hdf5"


@pytest.fixture()
def small(tmp_path, example_config_dict, seeded_efficientnet):
    """Four real sites, original TIFFs, 64-pixel boxes, an EfficientNet-B0 checkpoint of our own."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root)
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    keep = index[[(w, s) in SITES for w, s in zip(index["Metadata_Well"], index["Metadata_Site"])]]
    keep.to_csv(root / "inputs/metadata/index.csv", index=False)
    data = json.loads(json.dumps(example_config_dict))
    data["prepare"]["compression"]["implement"] = False
    data["dataset"]["locations"]["box_size"] = BOX
    data["profile"]["batch_size"] = 16
    name = write_config(root, data)
    keras.utils.set_random_seed(3)  # what follows in the test draws as it did when the model was built here
    (root / "outputs/results/checkpoint").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(seeded_efficientnet, root / "outputs/results/checkpoint/checkpoint_0003.hdf5")
    return root, name, data


@pytest.fixture()
def small_cnn(small):
    """The same four sites with DeepProfiler's small ``cnn`` (seconds per run): for tests of the pipeline's
    behaviour (resume, parts, faults, workers) rather than of a particular network."""
    root, _, data = small
    data = json.loads(json.dumps(data))
    data["train"]["model"]["name"] = "cnn"
    data["train"]["model"]["params"]["conv_blocks"] = 3
    data["profile"].update({"feature_layer": "features", "checkpoint": "cnn.hdf5"})
    keras.utils.set_random_seed(4)
    save_weights(models.classifier("cnn", (BOX, BOX, 5), 2, conv_blocks=3),
                 StoragePath(str(root / "outputs/results/checkpoint/cnn.hdf5")))
    return root, write_config(root, data, "cnn.json"), data


def profile(root: Path, config: str, *extra: str) -> tuple[int, str]:
    return run_cli("--root", str(root), "--config", config, "profile", *extra)


def features_of(root: Path) -> pd.DataFrame:
    files = sorted((root / "outputs/results/features").glob("*/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def site_crops(root: Path, data: dict, well: str, site: str):
    config = parse_config(data)
    layout = ProjectLayout.create(root)
    chosen = [s for s in load_sites(layout.index_file, config, "profile") if (s.well, s.site) == (well, site)][0]
    return CellSource.from_config(layout, config).cut(chosen)


def deepprofiler_efficientnet(classes: int) -> keras.Model:
    """DeepProfiler's efficientnet plugin rebuilt apart from dpcore: B0 without top (``keras.applications``,
    the layer names of the ``efficientnet.tfkeras`` B0 DeepProfiler uses), ``pool5``, softmax ``ClassProb``.
    keras' B0 adds an input Rescaling(1/255) and an (identity until adapted) Normalization that
    DeepProfiler's has not: callers feed it crops x 255."""
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(BOX, BOX, 5))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool5")(base.output)
    return keras.Model(base.input, keras.layers.Dense(classes, activation="softmax", name="ClassProb")(pooled))


def keras_features(model_file: Path, classes: int, layer: str, crops: np.ndarray) -> np.ndarray:
    """The reference features: :func:`deepprofiler_efficientnet` with the checkpoint loaded by layer name,
    the layer's output averaged over space."""
    network = deepprofiler_efficientnet(classes)
    network.load_weights(str(model_file), by_name=True, skip_mismatch=True)
    output = keras.Model(network.input, network.get_layer(layer).output)(crops * 255.0, training=False)
    return np.asarray(output).mean(axis=(1, 2))


def reference_crops(root: Path, well: str, site: str, cells: np.ndarray) -> np.ndarray:
    """The cells' crops from tests/reference.crop_cell (the definition, pixel by pixel) on the raw TIFFs."""
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str)
    row = index[(index["Metadata_Well"] == well) & (index["Metadata_Site"] == site)].iloc[0]
    stack = reference.read_stack([root / "inputs/images" / row[channel] for channel in CHANNELS])
    centres = pd.read_csv(root / f"inputs/locations/{row['Metadata_Plate']}/{well}-{site}-Nuclei.csv").to_numpy()
    return np.stack([reference.crop_cell(stack, x, y, BOX) for x, y in centres[cells]]).astype(np.float32)


def test_features_equal_an_independent_network_on_independent_crops(small):
    root, name, _ = small
    code, text = profile(root, name)
    assert code == 0, text
    frame = features_of(root)
    rows = frame[(frame["Metadata_Well"] == "A13") & (frame["Metadata_Site"] == "7")].sort_values(
        "Metadata_Cell_Index")
    crops = reference_crops(root, "A13", "7", rows["Metadata_Cell_Index"].to_numpy())
    expected = keras_features(root / "outputs/results/checkpoint/checkpoint_0003.hdf5", 2, "block6a_activation", crops)
    ours = rows[[c for c in frame.columns if c.startswith("efficientnet_")]].to_numpy()
    assert ours.shape == expected.shape == (len(rows), 672) and len(rows) > 20
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def _write_deepprofiler_checkpoint(model, path: Path) -> None:
    """A Keras-2 ``save_weights`` file as DeepProfiler wrote it, built directly with h5py (DeepProfiler's
    network has no input Rescaling/Normalization layers: they are left out)."""
    layers = [layer for layer in model.layers if not layer.name.startswith(("rescaling", "normalization"))]
    with h5py.File(path, "w") as f:
        names = ["input_1"] + [layer.name for layer in layers if layer.weights]
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.4.0"
        f.create_group("input_1").attrs["weight_names"] = []
        for layer in layers:
            if not layer.weights:
                continue
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{v.path.split('/')[-1]}:0" for v in layer.weights]
            group.attrs["weight_names"] = [w.encode() for w in weight_names]
            for weight_name, variable in zip(weight_names, layer.weights):
                group.create_dataset(weight_name, data=np.asarray(variable))


def test_deepprofiler_checkpoint_with_other_classes_loads_all_but_the_classifier(small):
    root, name, data = small
    keras.utils.set_random_seed(11)
    deepprofiler_model = deepprofiler_efficientnet(10)  # a Cell Painting CNN-like head
    legacy = root / "outputs/results/checkpoint/Cell_Painting_CNN_v1.hdf5"
    _write_deepprofiler_checkpoint(deepprofiler_model, legacy)

    # By name into a 2-class model: everything but ClassProb loads.
    two_classes = models.classifier("efficientnet", (BOX, BOX, 5), 2)
    report = load_weights_by_name(two_classes, StoragePath(str(legacy)))
    assert list(report.skipped) == ["ClassProb"] and len(report.loaded) == len(
        [layer for layer in two_classes.layers if layer.weights]) - 1

    data = json.loads(json.dumps(data))
    data["profile"]["checkpoint"] = "Cell_Painting_CNN_v1.hdf5"
    name = write_config(root, data, "legacy.json")
    code, text = profile(root, name)
    assert code == 0, text
    frame = features_of(root)
    rows = frame[(frame["Metadata_Well"] == "A01") & (frame["Metadata_Site"] == "1")].sort_values(
        "Metadata_Cell_Index")
    crops = reference_crops(root, "A01", "1", rows["Metadata_Cell_Index"].to_numpy())
    expected = keras_features(legacy, 10, "block6a_activation", crops)
    np.testing.assert_allclose(rows.filter(like="efficientnet_").to_numpy(), expected, atol=1e-4, rtol=0)
    manifest = json.loads((root / "outputs/results/features/_manifest.json").read_text())
    assert manifest["checkpoint"].endswith("Cell_Painting_CNN_v1.hdf5") and len(manifest["checkpoint_sha256"]) == 64


def test_repeat_channel_imagenet_baseline(small):
    root, _, data = small
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str, keep_default_na=False)
    # One site: each cell is five ImageNet passes, and the arithmetic is the same for every site.
    index[(index["Metadata_Well"] == "A13") & (index["Metadata_Site"] == "1")].to_csv(
        root / "inputs/metadata/index.csv", index=False)
    size = 64
    keras.utils.set_random_seed(5)
    base = models.backbone("efficientnet", (size, size, 3), 0)
    network = keras.Model(base.input, keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output))
    weights = root / "inputs/pretrained/efficientnetb0_notop.h5"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_weights(network, StoragePath(str(weights)))
    data = json.loads(json.dumps(data))
    data["train"]["model"]["crop_generator"] = "repeat_channel_crop_generator"
    data["profile"].update({"use_pretrained_input_size": size, "feature_layer": "avg_pool", "checkpoint": "None"})
    name = write_config(root, data, "imagenet.json")
    code, text = profile(root, name)
    assert code == 0, text
    frame = features_of(root)
    assert len(frame.filter(like="efficientnet_").columns) == 5 * 1280

    crops = site_crops(root, data, "A13", "1").batch.crops[:6]
    import tensorflow as tf
    # Each channel of each crop as a grey RGB image at the network's input size, in [-1, 1]: one batch of
    # 6 x 5 images through the very network whose weights profile loaded from the file.
    rgb = np.repeat(crops.transpose(0, 3, 1, 2)[..., None], 3, axis=-1).reshape(-1, *crops.shape[1:3], 3)
    images = tf.image.resize(rgb, (size, size), method="bilinear").numpy() * 2.0 - 1.0
    expected = np.asarray(network(images, training=False)).reshape(len(crops), -1)
    rows = frame[(frame["Metadata_Well"] == "A13") & (frame["Metadata_Site"] == "1")].sort_values(
        "Metadata_Cell_Index").head(6)
    np.testing.assert_allclose(rows.filter(like="efficientnet_").to_numpy(), np.array(expected), atol=1e-5, rtol=0)


def test_missing_imagenet_weights_fail_clearly(small):
    root, _, data = small
    data = json.loads(json.dumps(data))
    data["train"]["model"]["crop_generator"] = "repeat_channel_crop_generator"
    data["profile"].update({"use_pretrained_input_size": 224, "feature_layer": "avg_pool"})
    name = write_config(root, data, "imagenet.json")
    code, text = profile(root, name)
    assert code == 2 and "efficientnetb0_notop.h5" in text and "cannot be downloaded" in text


def test_output_schema_follows_the_metadata_convention(small):
    root, name, _ = small
    assert profile(root, name)[0] == 0
    frame = features_of(root)
    cells = sum(len(pd.read_csv(root / f"inputs/locations/20585/{w}-{s}-Nuclei.csv")) for w, s in SITES)
    assert len(frame) == cells  # every BBBC022 centre is inside the image
    features = [c for c in frame.columns if c.startswith("efficientnet_")]
    assert features == [f"efficientnet_{i}" for i in range(672)]
    assert all(frame[c].dtype == np.float32 for c in features)
    metadata = [c for c in frame.columns if c not in features]
    assert all(c.startswith("Metadata_") for c in metadata), metadata
    for column in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Treatment", "Metadata_DNA",
                   "Metadata_Model", "Metadata_Cell_Index", "Metadata_Nuclei_Location_Center_X"):
        assert column in frame.columns
    assert set(frame["Metadata_Model"]) == {"efficientnet"}
    # Row-group statistics (for filters) on the metadata, none on the features (they only cost time).
    chunks = pq.ParquetFile(next((root / "outputs/results/features").glob("*/*.parquet"))).metadata.row_group(0)
    with_statistics = {chunks.column(i).path_in_schema: chunks.column(i).is_stats_set
                       for i in range(chunks.num_columns)}
    assert with_statistics["Metadata_Well"] and not with_statistics["efficientnet_0"]
    # No Arrow schema of every column in the footer (17% of a file): Parquet's types give the columns back.
    footer = pq.ParquetFile(next((root / "outputs/results/features").glob("*/*.parquet"))).metadata.metadata or {}
    assert b"ARROW:schema" not in footer
    # Aggregation by treatment works the way pycytominer.aggregate does it (median per group).
    profiles = frame.groupby("Metadata_Treatment")[features].median()
    assert profiles.shape == (2, 672) and np.isfinite(profiles.to_numpy()).all()


def test_resume_skips_committed_sites_and_overwrite_redoes_them(small_cnn):
    root, name, _ = small_cnn
    assert profile(root, name)[0] == 0
    before = features_of(root).sort_values(["Metadata_Well", "Metadata_Site", "Metadata_Cell_Index"])
    (root / "outputs/results/features/20585/A01-7.parquet").unlink()
    code, text = profile(root, name)
    assert code == 0 and "sites written this run: 1" in text and "committed by earlier runs and kept: 3" in text
    after = features_of(root).sort_values(["Metadata_Well", "Metadata_Site", "Metadata_Cell_Index"])
    # Fixed-shape inference batches: the resumed site's features are the same bits as before.
    np.testing.assert_array_equal(after.filter(like="cnn_").to_numpy(), before.filter(like="cnn_").to_numpy())
    code, text = profile(root, name, "--overwrite")
    assert code == 0 and "sites written this run: 4" in text
    # A site that fails under --overwrite loses its earlier features: a stale file never passes as current.
    (root / "inputs/locations/20585/A13-1-Nuclei.csv").write_text("Foo,Bar\n1,2\n")
    code, text = profile(root, name, "--overwrite")
    assert code == 1 and "sites written this run: 3" in text and "sites with features now: 3 of 4" in text
    assert "lost their features from an earlier run" in text
    assert not (root / "outputs/results/features/20585/A13-1.parquet").exists()
    record = json.loads((root / "outputs/results/features/_runs/index.json").read_text())
    assert record["sites_written"] == 3 and record["sites_committed"] == 3


def test_bad_sites_are_reported_and_the_rest_is_written(small_cnn):
    root, name, _ = small_cnn
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str)
    first = index.iloc[0]
    (root / "inputs/images" / first["Mito"]).write_bytes(b"II*\x00broken")
    (root / "inputs/locations/20585/A13-7-Nuclei.csv").unlink()
    code, text = profile(root, name)
    assert code == 1
    assert f"20585/{first['Metadata_Well']}-{first['Metadata_Site']}" in text and "corrupt" in text
    assert "1 site(s) without cells" in text and "20585/A13-7" in text
    written = sorted(p.name for p in (root / "outputs/results/features/20585").glob("*.parquet"))
    assert len(written) == 2


def test_unknown_layer_or_foreign_checkpoint_fail_before_the_pipeline(small):
    root, _, data = small
    bad = json.loads(json.dumps(data))
    bad["profile"]["feature_layer"] = "block6a_activaton"
    code, text = profile(root, write_config(root, bad, "typo.json"))
    assert code == 2 and "close matches: block6a_activation" in text
    keras.utils.set_random_seed(1)
    save_weights(models.classifier("cnn", (BOX, BOX, 5), 2, conv_blocks=3),
                 StoragePath(str(root / "outputs/results/checkpoint/cnn.hdf5")))
    other = json.loads(json.dumps(data))
    other["profile"]["checkpoint"] = "cnn.hdf5"
    code, text = profile(root, write_config(root, other, "foreign.json"))
    assert code == 2 and "another architecture" in text
    assert not list((root / "outputs/results/features").glob("*/*.parquet"))


def test_part_profiles_one_split_of_the_index(small_cnn):
    root, name, _ = small_cnn
    assert run_cli("--root", str(root), "split", "--parts", "2")[0] == 0
    code, text = profile(root, name, "--part", "1", "--overwrite")  # as the README shows it
    assert code == 0, text
    written = sorted(p.name for p in (root / "outputs/results/features/20585").glob("*.parquet"))
    assert written == ["A13-1.parquet", "A13-7.parquet"]
    # Parts add up: each keeps its own run record, and the folder reads as one Parquet dataset.
    assert profile(root, name, "--part", "0")[0] == 0
    runs = sorted(p.name for p in (root / "outputs/results/features/_runs").glob("*.json"))
    assert runs == ["index-000.json", "index-001.json"]
    assert len(pd.read_parquet(root / "outputs/results/features")) == len(features_of(root))


def test_two_worker_processes_give_the_same_features(small_cnn):
    root, name, _ = small_cnn
    assert profile(root, name, "--direct_num_workers", "1")[0] == 0
    one = features_of(root).sort_values(["Metadata_Well", "Metadata_Site", "Metadata_Cell_Index"])
    code, text = profile(root, name, "--overwrite", "--direct_num_workers", "2",
                         "--direct_running_mode", "multi_processing")
    assert code == 0, text
    two = features_of(root).sort_values(["Metadata_Well", "Metadata_Site", "Metadata_Cell_Index"])
    pd.testing.assert_frame_equal(one.drop(columns=one.filter(like="cnn_").columns).reset_index(drop=True),
                                  two.drop(columns=two.filter(like="cnn_").columns).reset_index(drop=True))
    # To float32 rounding (see conftest.assert_same_features): the batches are filled in another order.
    np.testing.assert_allclose(two.filter(like="cnn_").to_numpy(), one.filter(like="cnn_").to_numpy(),
                               rtol=1e-5, atol=1e-6)


class EngineLog(logging.Handler):
    """What ``dpcore.inference_engines`` logs while a command runs (the CLI replaces the root's handlers, so
    pytest's caplog sees nothing): a handler on that logger itself."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> "EngineLog":
        engines = logging.getLogger("dpcore.inference_engines")
        self.previous = engines.level
        engines.setLevel(logging.INFO)
        engines.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        engines = logging.getLogger("dpcore.inference_engines")
        engines.removeHandler(self)
        engines.setLevel(self.previous)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def test_openvino_by_default_and_tensorflow_on_request_give_the_same_features(small):
    """The default engine on a CPU is OpenVINO (the worker logs it); TensorFlow's features agree to float32
    rounding, so sites of both may share a features folder."""
    root, name, _ = small
    order = ["Metadata_Well", "Metadata_Site", "Metadata_Cell_Index"]
    with EngineLog() as log:
        code, text = profile(root, name)
    assert code == 0 and "engine auto (OpenVINO on CPUs, TensorFlow on GPUs)" in text, text
    assert "profile's network runs on OpenVINO" in log.text, log.text
    default = features_of(root).sort_values(order)
    with EngineLog() as log:
        code, text = profile(root, name, "--overwrite", "--inference-engine", "tensorflow")
    assert code == 0 and "engine tensorflow" in text, text
    assert "profile's network runs on TensorFlow" in log.text and "OpenVINO" not in log.text, log.text
    tensorflow = features_of(root).sort_values(order)
    pd.testing.assert_frame_equal(default.filter(like="Metadata_").reset_index(drop=True),
                                  tensorflow.filter(like="Metadata_").reset_index(drop=True))
    ours, theirs = default.filter(like="efficientnet_").to_numpy(), tensorflow.filter(like="efficientnet_").to_numpy()
    assert not np.array_equal(ours, theirs)  # two engines really ran
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    (root / "outputs/results/features/20585/A01-7.parquet").unlink()
    code, text = profile(root, name, "--inference-engine", "openvino")  # adds the missing site beside TensorFlow's
    assert code == 0 and len(features_of(root)) == len(default), text
    code, text = profile(root, name, "--inference-engine", "openvino", "--xla")
    assert code == 2 and "--inference-engine openvino runs the network in float32 on the CPU" in text, text


def test_gpu_options_give_close_features_that_never_mix_with_float32_ones(small_cnn):
    # The GPU code path (reduced precision, XLA, a batch size from the command line) runs on the CPU here.
    root, name, _ = small_cnn
    order = ["Metadata_Well", "Metadata_Site", "Metadata_Cell_Index"]
    assert profile(root, name)[0] == 0
    full = features_of(root).sort_values(order).filter(like="cnn_").to_numpy()
    code, text = profile(root, name, "--overwrite", "--precision", "mixed_bfloat16", "--xla", "--batch-size", "5")
    assert code == 0 and "batch 5, precision mixed_bfloat16, XLA on" in text, text
    reduced = features_of(root).sort_values(order).filter(like="cnn_").to_numpy()
    assert reduced.dtype == np.float32 and reduced.shape == full.shape
    assert not np.array_equal(reduced, full)  # bfloat16 really ran
    np.testing.assert_allclose(reduced, full, rtol=0, atol=0.02 * np.abs(full).max())  # 8-bit mantissa
    manifest = json.loads((root / "outputs/results/features/_manifest.json").read_text())
    assert manifest["precision"] == "mixed_bfloat16"
    (root / "outputs/results/features/20585/A01-7.parquet").unlink()
    code, text = profile(root, name)  # float32 features would join bfloat16 ones: refused
    assert code == 2 and "precision differ" in text, text
    code, text = profile(root, name, "--batch-size", "-3")
    assert code == 2 and "--batch-size must be at least 1" in text, text


def test_a_killed_profile_is_resumed_site_by_site(prepared, example_config_dict, tmp_path):
    """SIGKILL after some sites committed: the re-run profiles only the others, with a clean run's bytes."""
    import sys

    from tests.conftest import assert_same_features, cnn_profile_project, kill_after_files

    reference, name = cnn_profile_project(prepared[0], tmp_path / "reference", example_config_dict)
    code, text = run_cli("--root", str(reference), "--config", name, "profile")
    assert code == 0, text
    root, _ = cnn_profile_project(prepared[0], tmp_path / "killed", example_config_dict)
    folder = root / "outputs/results/features/20585"
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", name, "profile",
               "--direct_num_workers", "1"]
    committed = kill_after_files(command, folder, "*.parquet", 2)
    assert 2 <= committed < 12, f"killed too late to test resume ({committed} sites written)"
    code, text = run_cli("--root", str(root), "--config", name, "profile")
    assert code == 0, text
    assert f"sites written this run: {12 - committed};" in text and f"kept: {committed};" in text, text
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp*"))
    assert_same_features(root, reference, sites=12)
