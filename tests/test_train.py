"""``dpbeam train``: learning, every training option, resume, bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tensorflow  # noqa: E402,F401  (required: the suite fails, never skips, without it)

from dpcore import models, sc_export  # noqa: E402
from dpcore.checkpoints import load_weights_by_name, read_layer_weights, save_weights  # noqa: E402
from dpcore.config import StepSchedule  # noqa: E402
from dpcore.storage import StoragePath  # noqa: E402
from dpcore.training import EpochSums, PlateauController, scheduled_learning_rate  # noqa: E402
from dpcore.training_data import (ExportInfo, cells_per_epoch, draws_per_class, training_dataset,  # noqa: E402
                                  validation_dataset)
from tests.conftest import run_cli, write_config  # noqa: E402
from tests.train_fixtures import synthetic_config, write_synthetic_export  # noqa: E402

pytestmark = pytest.mark.pipeline


@pytest.fixture()
def synthetic(tmp_path):
    root = tmp_path / "project"
    write_synthetic_export(root / "outputs/single-cells", {"training": (160, 160, 160), "validation": (40, 40, 40)})
    return root


def train(root: Path, data: dict, *extra: str, name: str = "train.json") -> tuple[int, str]:
    config = write_config(root, data, name)
    return run_cli("--root", str(root), "--config", config, "train", "--seed", "7", *extra)


def log(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "outputs/results/logs/log.csv")


def checkpoints(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "outputs/results/checkpoint").glob("checkpoint_*.hdf5"))


def test_a_small_model_learns_the_synthetic_classes(tmp_path, monkeypatch, capsys):
    # Enough steps (~300) for BatchNorm's moving statistics (momentum 0.99) to settle.
    monkeypatch.setenv("DPBEAM_PROGRESS_SECONDS", "0")  # a progress line after every step
    synthetic = tmp_path / "project"
    write_synthetic_export(synthetic / "outputs/single-cells", {"training": (400, 400, 400),
                                                               "validation": (40, 40, 40)})
    data = synthetic_config(epochs=4)
    data["train"]["model"]["params"]["batch_size"] = 16
    drawn = count_curve_drawings(monkeypatch)
    from dpcore import trainer

    trainers, run = [], trainer.Trainer.run

    def recording(self, *args, **kwargs):
        trainers.append(self)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "run", recording)
    built, validation_dataset = [], trainer.validation_dataset

    def counting(*args, **kwargs):
        built.append(args)
        return validation_dataset(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_dataset", counting)
    code, text = train(synthetic, data)
    assert code == 0, text
    # 120 validation crops in batches of 32 end in a batch of 24: the forward pass is still traced once, and
    # so is the step that sums a batch's metrics; the validation input is built once for the 4 validations.
    assert trainers[0]._eval_step.experimental_get_tracing_count() == 1
    assert trainers[0]._validation_step.experimental_get_tracing_count() == 1
    assert len(built) == 1, built
    history = log(synthetic)
    assert list(history["epoch"]) == [1, 2, 3, 4]
    # Epochs of seconds: the picture is drawn once, at the end (its 0.4 s would be a tenth of the run).
    assert drawn == [4], drawn
    assert history["val_accuracy"].iloc[-1] > 0.8, history  # chance is 1/3
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert {"top_2", "average_class_precision", "val_top_2", "val_average_class_precision"} <= set(history.columns)
    assert checkpoints(synthetic) == [f"checkpoint_000{i}.hdf5" for i in range(1, 5)]
    out = synthetic / "outputs/results"
    printed = capsys.readouterr().err  # the command's log handler writes to standard error
    assert re.search(r"dpcore\.progress: epoch 2/4: 40 of 75 steps \(53%\), [\d.]+ steps/s, ETA \d+ s, loss \S+\n",
                     printed), printed[-3000:]
    # Where each epoch's time went: 75 steps of 16 crops, and the parts add up to the epoch.
    took = re.findall(r"epoch (\d)/4 took ([\d.]+) s: (\d+) crops in ([\d.]+) s of training steps "
                      r"\(([\d.]+) crops/s\), ([\d.]+) s validating, ([\d.]+) s saving", printed)
    assert [(epoch, crops) for epoch, _, crops, *_ in took] == [(str(e), "1200") for e in range(1, 5)], printed[-3000:]
    for _, total, crops, steps, rate, validating, saving in took:
        assert float(steps) + float(validating) + float(saving) <= float(total) + 0.15
        assert abs(int(crops) / float(steps) / float(rate) - 1) < 0.1
    curves = Image.open(out / "logs/training_curves.png")
    assert curves.size == (4 * 420, 360)  # loss, accuracy, top-k, average class precision
    assert list((out / "summaries").glob("events.out.tfevents.*"))
    assert json.loads((out / "classes.json").read_text())["classes"] == ["disk", "ring", "stripes"]
    # The checkpoint is what profile reads: DeepProfiler's head, by name.
    weights = read_layer_weights(StoragePath(str(out / "checkpoint/checkpoint_0004.hdf5")))
    assert weights["ClassProb"][0].shape == (256, 3)


def test_every_sampling_and_validation_setting_reaches_the_trainer(tmp_path, monkeypatch, capsys):
    """One seeded run with every train.sampling and train.validation setting away from its default, read
    from what the command does: the steps of an epoch (sampling.factor), the epochs validated (frequency),
    the crops validated (frame, sample_first_crops, batch_size); and two more runs that change only the
    shuffle buffer or only the shard readers: the order of the crops, hence the weights, changes (a seeded
    run repeats exactly: test_seed_makes_a_cpu_run_repeatable)."""
    monkeypatch.setenv("DPBEAM_PROGRESS_SECONDS", "0")  # a progress line after every step
    root = tmp_path / "project"
    # 15 training and 5 validation cells per site (4 sites per class), training cells over 3 shards.
    write_synthetic_export(root / "outputs/single-cells", {"training": (60, 60, 60), "validation": (20, 20, 20)},
                           shards=3)
    data = synthetic_config(epochs=2)
    data["train"]["model"]["params"]["batch_size"] = 16
    data["train"]["sampling"] = {"factor": 0.5, "cache_size": 16, "workers": 1}
    data["train"]["validation"] = {"frequency": 2, "top_k": 2, "batch_size": 3, "frame": "all",
                                   "sample_first_crops": True}
    code, text = train(root, data)
    assert code == 0, text
    printed = capsys.readouterr().err
    # factor 0.5: int(0.5 * 60) = 30 crops per class, 90 per epoch, 6 steps of 16 (180 and 12 at 1.0).
    assert "epoch 1/2: 5 of 6 steps" in printed, printed[-3000:]
    # frame "all", first 3 crops of each site: 3 classes x 4 sites x 3 crops in each of the two splits.
    assert "epoch 2/2: validated on 72 crops (frame all, the first 3 of each site)" in printed, printed[-3000:]
    assert "epoch 1/2: validated" not in printed  # frequency 2: epoch 1 is not validated
    history = log(root)
    assert history["val_loss"].isna().tolist() == [True, False]
    first = read_layer_weights(StoragePath(str(root / "outputs/results/checkpoint/checkpoint_0001.hdf5")))

    def first_epoch_weights(sampling: dict) -> dict:
        other = tmp_path / f"cache{sampling['cache_size']}-workers{sampling['workers']}"
        shutil.copytree(root / "outputs/single-cells", other / "outputs/single-cells")
        variant = json.loads(json.dumps(data))
        variant["train"]["sampling"].update(sampling)
        variant["train"]["model"]["epochs"] = 1  # epoch 1 is the same whatever the number of epochs
        assert train(other, variant)[0] == 0
        return read_layer_weights(StoragePath(str(other / "outputs/results/checkpoint/checkpoint_0001.hdf5")))

    def same(a: dict, b: dict) -> bool:
        return all(np.array_equal(x, y) for name in a for x, y in zip(a[name], b[name]))

    assert not same(first, first_epoch_weights({"cache_size": 10000, "workers": 1}))
    assert not same(first, first_epoch_weights({"cache_size": 16, "workers": 3}))


def test_step_schedule_sets_the_rate_of_each_epoch(synthetic, monkeypatch):
    # DeepProfiler's epochs are Keras' 0-based ones: issue #15's example, base 0.05 over 4 epochs.
    data = synthetic_config(epochs=4, lr_schedule={"epoch": [2, 3], "lr": [0.01, 0.001]})
    data["train"]["model"]["params"]["learning_rate"] = 0.05
    drawn = count_curve_drawings(monkeypatch, every_seconds=0)  # as if each epoch took longer than the period
    assert train(synthetic, data)[0] == 0
    np.testing.assert_allclose(log(synthetic)["learning_rate"], [0.05, 0.05, 0.01, 0.001])
    assert drawn == [1, 2, 3, 4], "epochs longer than CURVES_EVERY_SECONDS: the picture after each"


def count_curve_drawings(monkeypatch, every_seconds: float | None = None) -> list[int]:
    """The number of epochs in each training-curves picture the trainer draws from now on."""
    from dpcore import trainer

    drawn: list[int] = []
    draw = trainer.training_curves

    def counting(rows, *args, **kwargs):
        drawn.append(len(rows))
        return draw(rows, *args, **kwargs)

    monkeypatch.setattr(trainer, "training_curves", counting)
    if every_seconds is not None:
        monkeypatch.setattr(trainer, "CURVES_EVERY_SECONDS", every_seconds)
    return drawn


def test_cosine_schedule_is_deepprofilers():
    # Figures written out from DeepProfiler 0.3.1's formula (issue #15), not computed by the code under test.
    three = [scheduled_learning_rate(e, 0.1, "cosine", 3) for e in (1, 2, 3)]
    np.testing.assert_allclose(three, [0.02, 0.025, 0.1 / 3])
    ten = [scheduled_learning_rate(e, 0.1, "cosine", 10) for e in range(1, 11)]
    np.testing.assert_allclose(ten[:5], [0.02, 0.025, 0.1 / 3, 0.05, 0.1])
    assert ten[5] == pytest.approx(0.05)  # epoch 6 of 10: t = 5, cos(pi / 2) = 0
    assert ten[9] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))
    assert all(a > b for a, b in zip(ten[5:], ten[6:]))
    assert scheduled_learning_rate(7, 0.1, StepSchedule((3, 6), (0.01, 0.001)), 10) == 0.001
    assert scheduled_learning_rate(6, 0.1, StepSchedule((3, 6), (0.01, 0.001)), 10) == 0.01
    assert scheduled_learning_rate(3, 0.1, StepSchedule((3, 6), (0.01, 0.001)), 10) == 0.1
    assert scheduled_learning_rate(4, 0.1, None, 10) == 0.1


def test_plateau_reduces_after_patience():
    controller = PlateauController(0.1, patience=2)
    rates = [controller.update(loss) for loss in (1.0, 0.9, 0.95, 0.96, 0.97, 0.98)]
    assert rates == [0.1, 0.1, 0.1, pytest.approx(0.01), pytest.approx(0.01), pytest.approx(0.001)]


def test_checkpoints_only_every_n_epochs(synthetic):
    assert train(synthetic, synthetic_config(epochs=4, checkpoint_policy=2))[0] == 0
    assert checkpoints(synthetic) == ["checkpoint_0002.hdf5", "checkpoint_0004.hdf5"]


def test_best_policy_saves_only_improvements(synthetic):
    assert train(synthetic, synthetic_config(epochs=4, checkpoint_policy="best"))[0] == 0
    history = log(synthetic)
    losses = history["val_loss"].to_numpy()
    improved = [int(e) for i, e in enumerate(history["epoch"]) if i == 0 or losses[i] < losses[:i].min()]
    assert checkpoints(synthetic) == [f"checkpoint_{e:04d}.hdf5" for e in improved]


def test_augmentations_change_training_inputs_not_validation_ones(synthetic):
    info = ExportInfo.read(StoragePath(str(synthetic / "outputs/single-cells")))
    plain = next(iter(training_dataset(info, 64, 1, 1, 1.0, False, seed=1)))
    augmented = next(iter(training_dataset(info, 64, 1, 1, 1.0, True, seed=1)))
    np.testing.assert_array_equal(plain[2].numpy(), augmented[2].numpy())  # same cells, same order
    assert np.abs(plain[0].numpy() - augmented[0].numpy()).mean() > 0.01
    assert augmented[0].numpy().min() >= 0 and augmented[0].numpy().max() <= 1
    first = next(iter(validation_dataset(info, "val", 32, False, 1)))
    again = next(iter(validation_dataset(info, "val", 32, False, 1)))
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())


def test_the_command_trains_on_augmented_crops_when_the_config_asks(tmp_path):
    """train.model.augmentations through ``dpbeam train``: the same seeded run with and without them ends in
    other weights (a seeded CPU run is otherwise repeatable bit for bit: test_seed_makes_a_cpu_run_repeatable)."""
    weights = {}
    for augmentations in (False, True):
        root = tmp_path / str(augmentations)
        write_synthetic_export(root / "outputs/single-cells", {"training": (60, 60, 60), "validation": (10, 10, 10)})
        code, text = train(root, synthetic_config(epochs=1, augmentations=augmentations))
        assert code == 0, text
        weights[augmentations] = read_layer_weights(
            StoragePath(str(root / "outputs/results/checkpoint/checkpoint_0001.hdf5")))
    assert not np.array_equal(weights[True]["conv1"][0], weights[False]["conv1"][0])


def test_sampling_draws_every_class_to_the_median_with_replacement_as_deepprofiler(tmp_path):
    # DeepProfiler's balanced_sample: int(median) cells of every class per pass, with replacement from
    # smaller classes (issue #15: counts {600, 100, 60} -> 100/100/100).
    folder = tmp_path / "export"
    write_synthetic_export(folder, {"training": (600, 100, 60), "validation": (30, 10, 5)})
    info = ExportInfo.read(StoragePath(str(folder)))
    np.testing.assert_array_equal(draws_per_class({0: 600, 1: 100, 2: 60}, 3, 1.0), [100, 100, 100])
    assert cells_per_epoch({0: 600, 1: 100, 2: 60}, 3, 0.5) == 150  # sampling.factor scales the draw
    rows = info.first_rows("training")
    # A shuffle buffer of 1 keeps the passes apart: three passes, each exactly 100 per class.
    stream = training_dataset(info, 50, 1, 1, 1.0, False, 3, first_rows=rows).unbatch().take(900)
    drawn = np.array([(int(sample[2]), int(sample[3])) for sample in stream])
    labels = drawn[:, 0].reshape(3, 300)
    cells = drawn[:, 1].reshape(3, 300)
    for one_pass, pass_cells in zip(labels, cells):
        np.testing.assert_array_equal(np.bincount(one_pass, minlength=3), [100, 100, 100])
        unique = [len(set(pass_cells[one_pass == label])) for label in range(3)]
        assert unique[0] == 100 and unique[1] == 100  # without replacement: every cell once
        assert 35 <= unique[2] <= 60  # 100 draws with replacement from 60: ~49 distinct cells expected
    assert len({tuple(c) for c in cells}) == 3  # each pass a fresh sample
    # Validation: one balanced resample of the validation cells, the same every time.
    balanced = [np.concatenate([batch[2].numpy() for batch in validation_dataset(info, "val", 7, False, 1,
                                                                                 balanced=True, seed=5)])
                for _ in range(2)]
    np.testing.assert_array_equal(np.bincount(balanced[0]), [10, 10, 10])
    np.testing.assert_array_equal(balanced[0], balanced[1])
    every = np.concatenate([batch[2].numpy() for batch in validation_dataset(info, "val", 7, False, 1)])
    np.testing.assert_array_equal(np.bincount(every), [30, 10, 5])


def test_epoch_metrics_are_deepprofilers_and_keras_names():
    # Three classes, four samples; figures worked out by hand from Keras' definitions.
    probabilities = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 1, 1, 2])
    from types import SimpleNamespace  # noqa: PLC0415

    from dpcore.trainer import Trainer  # noqa: PLC0415
    holder = SimpleNamespace(tf=tensorflow, plan=SimpleNamespace(num_classes=3, top_k=2))
    reduced = Trainer._sums(holder, tensorflow.constant(probabilities), tensorflow.one_hot(labels, 3),
                            tensorflow.constant(labels, tensorflow.int64))
    sums = EpochSums(3)
    sums.add({**{k: v.numpy() for k, v in reduced.items()}, "loss": 2.0})
    names = ("accuracy", "categorical_accuracy", "top_k", "top_k_categorical_accuracy", "binary_accuracy",
             "average_class_precision", "sparse_categorical_accuracy")
    values = sums.metrics(names, 2, prefix="val_")
    assert values["val_loss"] == 0.5
    assert values["val_accuracy"] == values["val_categorical_accuracy"] == values["val_sparse_categorical_accuracy"] == 0.5
    assert values["val_top_2"] == 1.0 and values["val_top_k_categorical_accuracy"] == 1.0
    # binary (outputs on the right side of 0.5): sample 1 all 3; sample 2 one (0.6 says class 0, 0.3 misses
    # class 1); sample 3 two (nothing above 0.5, class 1 missed); sample 4 all 3.
    assert values["val_binary_accuracy"] == pytest.approx((1 + 1 / 3 + 2 / 3 + 1) / 4)
    # Precision over all three classes: class 0 predicted twice, right once (1/2); class 1 never (0);
    # class 2 once, right (1). DeepProfiler: (0.5 + 0 + 1) / 3; over predicted classes only it would be 0.75.
    assert values["val_average_class_precision"] == pytest.approx(0.5)


def test_the_cpu_alone_gets_plain_batches_and_several_replicas_distributed_ones(synthetic):
    """On the CPU's OneDeviceStrategy a tf.distribute dataset halved the training step rate (see the README's
    train benchmark): the trainer hands it the plain dataset; a strategy with replicas keeps the distributed one."""
    from types import SimpleNamespace  # noqa: PLC0415

    from dpcore.trainer import DataSettings, Trainer  # noqa: PLC0415
    info = ExportInfo.read(StoragePath(str(synthetic / "outputs/single-cells")))
    data = DataSettings(cache_size=64, workers=1, factor=1.0, augmentations=False, validation_frame="val",
                        validation_batch_size=8, sample_first_crops=False, seed=0)
    holder = SimpleNamespace(tf=tensorflow, info=info, plan=SimpleNamespace(batch_size=8), data=data, first_rows=None)
    holder.strategy = tensorflow.distribute.OneDeviceStrategy("/cpu:0")
    batches = Trainer._batches(holder, 1)
    assert not isinstance(batches, tensorflow.distribute.DistributedIterator)
    images = next(batches)[0]
    assert isinstance(images, tensorflow.Tensor) and tuple(images.shape)[0] == 8
    holder.strategy = tensorflow.distribute.MirroredStrategy(["/cpu:0"])
    batches = Trainer._batches(holder, 1)
    assert isinstance(batches, tensorflow.distribute.DistributedIterator)


def test_online_labels_are_per_cell_and_move_toward_the_models_predictions(synthetic):
    data = synthetic_config(epochs=2, crop_generator="online_labels_cropgen")
    data["train"]["model"]["params"].update({"online_label_smoothing": 0.2, "online_lambda": 0.5,
                                             "label_smoothing": 0.3})
    code, text = train(synthetic, data)
    assert code == 0, text
    logs = synthetic / "outputs/results/logs/soft_labels"
    start, first, second = (pd.read_parquet(logs / f"{epoch:04d}.parquet") for epoch in (0, 1, 2))
    export = synthetic / "outputs/single-cells"
    index = pd.read_parquet(export / sc_export.INDEX_DIR).query("Split_Set == 'training'")
    assert len(start) == len(index) == 480
    # DeepProfiler's start: 0.2 / 3 on every class, plus 0.8 on the cell's own.
    truth = start.merge(index, on=["Shard", "Record"])
    expected = np.full((480, 3), 0.2 / 3) + 0.8 * np.eye(3)[truth["Label"].to_numpy()]
    np.testing.assert_allclose(truth[["disk", "ring", "stripes"]].to_numpy(), expected, rtol=1e-6)
    # After epoch 2: halfway from epoch 1's labels to the predictions of the epoch-2 weights, cell by cell.
    model = models.classifier("cnn", (32, 32, 3), 3, 3)
    load_weights_by_name(model, StoragePath(str(synthetic / "outputs/results/checkpoint/checkpoint_0002.hdf5")))
    shard = export / second["Shard"].iloc[0]
    images = np.stack([np.frombuffer(tensorflow.train.Example.FromString(raw.numpy()).features.feature["image"]
                                     .bytes_list.value[0], np.uint8).reshape(32, 32, 3)
                       for raw in tensorflow.data.TFRecordDataset(str(shard))]).astype(np.float32) / 255
    predictions = model.predict_on_batch(images[second["Record"].to_numpy()])
    columns = ["disk", "ring", "stripes"]
    np.testing.assert_allclose(second[columns].to_numpy(), 0.5 * first[columns].to_numpy() + 0.5 * predictions,
                               atol=1e-5)
    assert not np.allclose(second[columns].to_numpy(), start[columns].to_numpy())


def test_resume_with_epoch_continues_the_log(synthetic):
    assert train(synthetic, synthetic_config(epochs=2))[0] == 0
    shutil.rmtree(synthetic / "outputs/results/checkpoint/backup")
    code, text = train(synthetic, synthetic_config(epochs=4), "--epoch", "3")
    assert code == 0, text
    assert list(log(synthetic)["epoch"]) == [1, 2, 3, 4]
    assert checkpoints(synthetic) == [f"checkpoint_000{i}.hdf5" for i in range(1, 5)]


def test_an_interrupted_run_continues_from_its_backup(synthetic, monkeypatch):
    assert train(synthetic, synthetic_config(epochs=2))[0] == 0  # as if killed after epoch 2 of 4
    code, text = train(synthetic, synthetic_config(epochs=4))
    assert code == 0 and "continuing an interrupted run after epoch 2" in text
    assert list(log(synthetic)["epoch"]) == [1, 2, 3, 4]
    code, text = train(synthetic, synthetic_config(epochs=4))
    # A finished run says so in one line: no "continuing", no plan for epochs 5..4.
    assert code == 0 and text.splitlines() == [
        f"train: all 4 epochs are done already ({synthetic}/outputs/results/checkpoint); nothing to train "
        f"(--epoch K trains again from epoch K; --epoch 1 starts over)"], text
    # An explicit --epoch 1 starts over: nothing of the earlier run is left to be taken for this one's.
    code, text = train(synthetic, synthetic_config(epochs=1), "--epoch", "1")
    assert code == 0 and "--epoch 1 starts over: removed 4 checkpoint(s) and the backup" in text, text
    assert "continuing" not in text and list(log(synthetic)["epoch"]) == [1]
    assert checkpoints(synthetic) == ["checkpoint_0001.hdf5"]
    # Starting over again, killed in its first epoch: no picture of the earlier run is left beside no log.
    from dpcore import trainer

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(synthetic, synthetic_config(epochs=1), "--epoch", "1")
    logs = synthetic / "outputs/results/logs"
    assert not (logs / "log.csv").exists() and not (logs / "training_curves.png").exists()


def test_seed_makes_a_cpu_run_repeatable(tmp_path):
    logs = []
    for run in range(2):
        root = tmp_path / f"run{run}"
        write_synthetic_export(root / "outputs/single-cells", {"training": (64, 64, 64), "validation": (16, 16, 16)})
        data = synthetic_config(epochs=2, augmentations=True)
        assert train(root, data)[0] == 0
        logs.append(log(root))
    pd.testing.assert_frame_equal(logs[0], logs[1])


def test_bad_inputs_fail_before_training(tmp_path, synthetic):
    empty = tmp_path / "empty"
    code, text = train(empty, synthetic_config())
    assert code == 2 and "run 'dpbeam ... export-sc' first" in text

    single = tmp_path / "single"
    write_synthetic_export(single / "outputs/single-cells", {"training": (50, 0, 0), "validation": (5, 5, 5)})
    code, text = train(single, synthetic_config())
    assert code == 2 and "single class ['disk']" in text

    no_training = tmp_path / "notrain"
    write_synthetic_export(no_training / "outputs/single-cells", {"training": (0, 0, 0), "validation": (5, 5, 5)})
    code, text = train(no_training, synthetic_config())
    assert code == 2 and "no cell of the training split" in text

    missing = json.loads((synthetic / "outputs/single-cells/manifest.json").read_text())["shards"]["training"][0]
    moved = synthetic / "elsewhere"
    moved.mkdir()
    shutil.move(str(synthetic / "outputs/single-cells" / missing), moved)
    code, text = train(synthetic, synthetic_config())
    assert code == 2 and "is missing" in text
    shutil.move(str(moved / missing), synthetic / "outputs/single-cells")

    save_weights(models.classifier("efficientnet", (32, 32, 3), 3),
                 StoragePath(str(synthetic / "outputs/results/checkpoint/checkpoint_0001.hdf5")))
    code, text = train(synthetic, synthetic_config(epochs=3), "--epoch", "2")
    assert code == 2 and "another architecture" in text

    data = synthetic_config(crop_generator="full_image_crop_generator")
    code, text = train(synthetic, data)
    assert code == 2 and "full_image" in text


def test_imagenet_initialisation_needs_a_local_file_and_replicates_rgb_filters(synthetic, tmp_path):
    data = synthetic_config(epochs=1, initialization="ImageNet")
    code, text = train(synthetic, data)
    assert code == 2 and "cannot be downloaded" in text
    rgb = models.backbone("cnn", (32, 32, 3), 3)
    weights = tmp_path / "cnn_rgb.h5"
    save_weights(rgb, StoragePath(str(weights)))
    code, text = train(synthetic, data, "--pretrained-weights", str(weights))
    assert code == 0, text
    from dpcore.trainer import imagenet_initialise  # noqa: PLC0415
    from dpcore.training import TrainingPlan  # noqa: PLC0415
    from dpcore.config import parse_config  # noqa: PLC0415
    plan = TrainingPlan.from_config(parse_config(data), 3, (32, 32, 5), str(weights))
    model = models.classifier("cnn", (32, 32, 5), 3, 3)
    imagenet_initialise(model, plan)
    kernel = np.asarray(model.get_layer("conv1").kernel)
    source = np.asarray(rgb.get_layer("conv1").kernel)
    np.testing.assert_allclose(kernel[:, :, 3], source[:, :, 0] * 3 / 5, rtol=1e-6)
    np.testing.assert_allclose(kernel[:, :, 4], source[:, :, 1] * 3 / 5, rtol=1e-6)


def test_two_workers_on_localhost_train_in_sync(synthetic):
    """MultiWorkerMirroredStrategy from TF_CONFIG: two processes, one model, the chief writes."""
    import os
    import socket
    import subprocess
    import sys

    config = write_config(synthetic, synthetic_config(epochs=2), "mw.json")
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "beam_pipelines", "--root", str(synthetic), "--config", config, "train",
             "--seed", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert all("2 replica(s)" in output for output in outputs)
    # Same synchronised training metrics on both workers.
    lines = [[line.split("epoch 2/2:")[1].split(", val_")[0] for line in output.splitlines() if "epoch 2/2:" in line]
             for output in outputs]
    assert lines[0] == lines[1] and lines[0]
    assert checkpoints(synthetic) == ["checkpoint_0001.hdf5", "checkpoint_0002.hdf5"]


def test_a_killed_training_run_continues_after_its_last_finished_epoch(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "project"
    cells = {"training": (160, 160, 160), "validation": (20, 20, 20)}
    write_synthetic_export(root / "outputs/single-cells", cells)
    config = write_config(root, synthetic_config(epochs=4), "kill.json")
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", config, "train", "--seed", "3"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = root / "outputs/results/checkpoint/backup/state.json"
    deadline = time.time() + 240
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # somewhere in epoch 2 or later
    run.wait()
    finished = json.loads(state.read_text())["epoch"]
    assert finished < 4, "killed too late to test resuming"
    twin = tmp_path / "twin"
    shutil.copytree(root, twin)
    resumed = {}
    for where in (root, twin):
        code, text = run_cli("--root", str(where), "--config", config, "train", "--seed", "3")
        assert code == 0 and f"continuing an interrupted run after epoch {finished}" in text, text
        assert list(log(where)["epoch"]) == [1, 2, 3, 4]
        assert checkpoints(where) == [f"checkpoint_000{i}.hdf5" for i in range(1, 5)]
        resumed[where] = [weights(where, epoch) for epoch in range(1, 5)]
    # Bit-equality with an uninterrupted run cannot hold: training draws from one endless shuffled stream
    # whose buffer (train.sampling.cache_size crops) spans epoch boundaries and is not saved, so a resumed
    # run takes its next batches from a fresh buffer. What holds instead, and is asserted:
    # (1) a resume is a function of the saved state alone: two resumes of the same backup agree bit for bit;
    assert all(max_difference(a, b) == 0 for a, b in zip(resumed[root], resumed[twin]))
    # (2) it continued from the saved weights and optimizer: its next epoch lies within a tenth of one epoch's
    # update of an uninterrupted run's (a restart from random weights lands a whole update away).
    clean = tmp_path / "uninterrupted"
    write_synthetic_export(clean / "outputs/single-cells", cells)
    code, text = run_cli("--root", str(clean), "--config", write_config(clean, synthetic_config(epochs=4), "kill.json"),
                         "train", "--seed", "3")
    assert code == 0, text
    uninterrupted = [weights(clean, epoch) for epoch in range(1, 5)]
    assert max_difference(resumed[root][finished - 1], uninterrupted[finished - 1]) == 0, "the epochs before the kill"
    one_update = max_difference(uninterrupted[finished], uninterrupted[finished - 1])
    assert max_difference(resumed[root][finished], uninterrupted[finished]) < one_update / 10, one_update


def weights(root: Path, epoch: int) -> dict[str, list[np.ndarray]]:
    return read_layer_weights(StoragePath(str(root / f"outputs/results/checkpoint/checkpoint_{epoch:04d}.hdf5")))


def max_difference(first: dict[str, list[np.ndarray]], second: dict[str, list[np.ndarray]]) -> float:
    assert first.keys() == second.keys()
    return max(float(np.abs(a - b).max()) for layer in first for a, b in zip(first[layer], second[layer], strict=True))


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_gpu_options_train_on_the_cpu_and_write_float32_checkpoints(synthetic, precision):
    # The GPU code path (reduced precision, loss scaling for float16, XLA, a batch size from the command
    # line) runs here on the CPU: a GPU run differs only in speed.
    config = write_config(synthetic, synthetic_config(epochs=3), "train.json")
    options = ("--precision", precision, "--xla", "--batch-size", "16")
    code, text = run_cli("--root", str(synthetic), "--config", config, "train", *options)
    assert code == 0, text
    assert f"global batch 16, 1 replica(s) (OneDeviceStrategy), precision {precision}, XLA on" in text, text
    history = log(synthetic)
    assert np.isfinite(history["loss"]).all(), history
    # The updates reach the weights (float16's loss scaling undone): it learns the training set (chance 1/3).
    assert history["loss"].iloc[-1] < history["loss"].iloc[0] and history["accuracy"].iloc[-1] > 0.9, history
    weights = read_layer_weights(StoragePath(str(synthetic / "outputs/results/checkpoint/checkpoint_0003.hdf5")))
    assert all(array.dtype == np.float32 for arrays in weights.values() for array in arrays)


def test_gpu_options_that_cannot_work_are_refused_before_training(synthetic):
    code, text = train(synthetic, synthetic_config(), "--batch-size", "0")
    assert code == 2 and "--batch-size must be at least 1" in text, text
    code, text = train(synthetic, synthetic_config(), "--xla")  # train() passes --seed
    assert code == 2 and "a repeatable run cannot use --xla" in text, text
    assert not (synthetic / "outputs/results/checkpoint").exists()


def test_traintf2_with_cores_trains(synthetic):
    # DeepProfiler 0.3.1's command name and its --cores flag (TensorFlow's thread pools here). Seed 0 is a
    # seed like any other: tf.data's shuffle once failed on it (a global seed of 0 with a per-pass tensor seed).
    config = write_config(synthetic, synthetic_config(epochs=1), "train.json")
    code, text = run_cli("--root", str(synthetic), "--config", config, "--cores", "1", "traintf2", "--seed", "0")
    assert code == 0 and "train: cnn (conv_blocks 3)" in text, text
    assert list(log(synthetic)["epoch"]) == [1]


def test_l2_reaches_every_kernel_of_the_sgd_models():
    # DeepProfiler's recipe: L2 1e-5 on every kernel (it rebuilds its model from JSON after setting them).
    # A regularizer set on an already built Keras layer would be ignored: count the penalties.
    model = models.classifier("efficientnet", (32, 32, 3), 3, 0, regularize=True)
    kernels = [layer for layer in model.layers if "kernel_regularizer" in layer.get_config()]
    assert len(kernels) > 60 and len(model.losses) == len(kernels)
    conv = model.get_layer("stem_conv")
    expected = 1e-5 * float(np.sum(np.square(np.asarray(conv.kernel))))
    assert any(abs(float(loss) - expected) < 1e-9 for loss in model.losses)
    assert not models.classifier("cnn", (32, 32, 3), 3, 3).losses  # the cnn trains with Adam, no L2


def test_label_smoothing_and_the_cnn_feature_width_reach_the_model(synthetic):
    """train.model.params.label_smoothing 0.2 with 3 classes: the loss can never fall below the entropy of
    the smoothed target, -(0.867 ln 0.867 + 2 x 0.067 ln 0.067) = 0.485 (without smoothing it falls to ~0);
    feature_dim 24: the cnn's ``features`` layer has 24 units."""
    data = synthetic_config(epochs=2)
    data["train"]["model"]["params"].update({"label_smoothing": 0.2, "feature_dim": 24})
    code, text = train(synthetic, data)
    assert code == 0, text
    smoothed = np.array([1 - 0.2 + 0.2 / 3, 0.2 / 3, 0.2 / 3])
    floor = float(-(smoothed * np.log(smoothed)).sum())
    assert abs(floor - 0.485) < 1e-3
    history = log(synthetic)
    assert (history["loss"] > floor - 1e-3).all() and (history["val_loss"] > floor - 1e-3).all(), history
    weights = read_layer_weights(StoragePath(str(synthetic / "outputs/results/checkpoint/checkpoint_0002.hdf5")))
    assert weights["features"][0].shape[-1] == 24 and weights["ClassProb"][0].shape == (24, 3)
