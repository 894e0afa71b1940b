"""profile's engines: OpenVINO on CPUs gives Keras' own features for every model of the zoo; the choice."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import keras  # required: an import error fails the module, never skips it

from dpcore import models
from dpcore.acceleration import Acceleration
from dpcore.inference_engines import (EngineError, check_engine, load_openvino, openvino_predictor, predictor,
                                      resolve_engine)

load_openvino()  # required (profile's default engine on CPUs), and loaded as profile loads it: without telemetry

# One xdist worker runs the whole module: the models are built once there.
pytestmark = pytest.mark.xdist_group("inference-engines")
SHAPE = (64, 64, 5)


def zoo_model(name: str) -> keras.Model:
    """A feature model of each kind profile builds, small inputs, seeded random weights."""
    keras.utils.set_random_seed(5)
    if name == "efficientnet":
        return models.feature_extractor(models.classifier("efficientnet", SHAPE, 3), "block6a_activation")
    if name == "resnet":
        return models.feature_extractor(models.classifier("resnet", SHAPE, 3, 50), "pool5")
    if name == "inception_resnet_v2":  # needs at least 75 pixels
        return models.feature_extractor(models.classifier("inception_resnet_v2", (80, 80, 5), 3), "pool5")
    if name == "cnn":
        return models.feature_extractor(models.classifier("cnn", SHAPE, 3, conv_blocks=3), "features")
    if name == "classifier probabilities":  # the softmax head (on the small cnn: the head is what is tested)
        return models.feature_extractor(models.classifier("cnn", SHAPE, 3, conv_blocks=3), "ClassProb")
    # DeepProfiler's ImageNet baseline: channels repeated to RGB, resized, through an RGB network.
    per_image = models.feature_extractor(models.backbone("efficientnet", (72, 72, 3)), "top_activation")
    return models.repeat_channel_extractor(per_image, models.RepeatChannelSpec(5, 72), SHAPE[:2])


@pytest.mark.parametrize("name", ["efficientnet", "resnet", "inception_resnet_v2", "cnn",
                                  "classifier probabilities", "repeat_channel"])
def test_openvino_gives_keras_features_for_every_model_of_the_zoo(name):
    """Keras' own predict_on_batch is the reference. In float32: this machine's CPU has bfloat16 units, where
    OpenVINO would otherwise compute in bfloat16 (differences of ~1e-2 of the largest feature)."""
    model = zoo_model(name)
    crops = np.random.default_rng(0).random((11,) + tuple(model.input.shape[1:]), dtype=np.float32)
    expected = model.predict_on_batch(crops)
    found = openvino_predictor(model, batch_size=4)(crops)  # two full batches and a padded one
    assert found.dtype == np.float32 and found.shape == expected.shape
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_openvino_and_tensorflow_agree_and_a_cell_does_not_depend_on_its_batch():
    model = zoo_model("efficientnet")
    crops = np.random.default_rng(1).random((13, *SHAPE), dtype=np.float32)
    on_openvino = predictor(model, 8, "openvino")
    on_tensorflow = predictor(model, 8, "tensorflow")
    assert (on_openvino.engine, on_tensorflow.engine) == ("openvino", "tensorflow")
    assert "OpenVINO" in on_openvino.description and "float32" in on_openvino.description
    together = on_openvino(crops)
    np.testing.assert_allclose(together, on_tensorflow(crops), rtol=1e-4, atol=1e-5 * np.abs(together).max())
    alone = np.concatenate([on_openvino(crops[i:i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())
    assert on_openvino(crops[:0]).size == 0


def test_openvino_predictor_is_safe_to_call_from_several_threads():
    """Beam's local threads share one model per process: their calls take turns on the infer requests."""
    model = zoo_model("cnn")
    crops = np.random.default_rng(2).random((4, 10, *SHAPE), dtype=np.float32)
    predict = openvino_predictor(model, batch_size=4)
    alone = [predict(part) for part in crops]
    together: list = [None] * len(crops)

    def work(index: int) -> None:
        for _ in range(5):
            together[index] = predict(crops[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(crops))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for expected, found in zip(alone, together):
        np.testing.assert_array_equal(found, expected)


def test_auto_picks_openvino_on_a_cpu_and_tensorflow_for_its_own_options():
    import tensorflow as tf

    assert tf.config.list_physical_devices("GPU") == []  # this test's premise: a machine without a GPU
    assert resolve_engine("auto", Acceleration()) == "openvino"
    assert resolve_engine("auto", Acceleration(xla=True)) == "tensorflow"
    assert resolve_engine("auto", Acceleration("mixed_bfloat16")) == "tensorflow"
    assert resolve_engine("tensorflow", Acceleration()) == "tensorflow"
    assert resolve_engine("openvino", Acceleration()) == "openvino"


def test_openvino_refuses_tensorflows_options_and_unknown_engines_are_named():
    with pytest.raises(EngineError, match="--inference-engine tensorflow"):
        check_engine("openvino", Acceleration(xla=True))
    with pytest.raises(EngineError, match="precision mixed_float16"):
        check_engine("openvino", Acceleration("mixed_float16"))
    with pytest.raises(EngineError, match="'onnx' is not one of auto, tensorflow, openvino"):
        check_engine("onnx", Acceleration())


TELEMETRY_PROBE = """
import json, os, sys
forks = []
os.register_at_fork(before=lambda: forks.append(1))
if sys.argv[1] == "profile":
    from dpcore.inference_engines import openvino_predictor
    from tests.test_inference_engines import zoo_model
    import numpy as np
    predict = openvino_predictor(zoo_model("cnn"), batch_size=2)
    predict(np.zeros((3, 64, 64, 5), np.float32))
else:
    import openvino  # as any program would
utils = sys.modules["openvino.tools.ovc.telemetry_utils"]
print(json.dumps({"reporter": utils.tm.__name__, "forks": len(forks)}))
"""


def telemetry_probe(how: str, tmp_path) -> dict:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {key: value for key, value in os.environ.items() if key not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)  # no opt-out file of the user's: OpenVINO's default (report) applies
    if how != "profile":
        env["CI"] = "true"  # the control imports the real reporter: kept from sending by OpenVINO's CI rule
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", TELEMETRY_PROBE, how], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_profile_loads_openvino_without_its_usage_reports_to_intel(tmp_path):
    """``import openvino`` loads its converter, which reports the import to Google Analytics for Intel (in a
    forked child) unless the user opted out; profile's engine loads OpenVINO with the converter's no-op stub.
    The control, a plain ``import openvino``, gets the real reporter: the probe can tell them apart."""
    assert telemetry_probe("plain", tmp_path) == {"reporter": "openvino_telemetry", "forks": 0}  # CI=true there
    assert telemetry_probe("profile", tmp_path) == {"reporter": "openvino.tools.ovc.telemetry_stub", "forks": 0}


def test_a_network_openvino_cannot_read_runs_on_tensorflow_under_auto_and_fails_clearly_when_asked_for(
        monkeypatch, caplog):
    import dpcore.inference_engines as engines

    def unreadable(*args, **kwargs):
        raise RuntimeError("Cannot create SomeNewOp layer")  # what OpenVINO's front end raises for an unknown op

    monkeypatch.setattr(engines, "openvino_predictor", unreadable)
    model = zoo_model("cnn")
    crops = np.random.default_rng(3).random((3, *SHAPE), dtype=np.float32)
    with caplog.at_level("WARNING", logger="dpcore.inference_engines"):
        fallback = predictor(model, 2, "auto")
    assert fallback.engine == "tensorflow" and "SomeNewOp" in caplog.text
    np.testing.assert_allclose(fallback(crops), model.predict_on_batch(crops), rtol=1e-4, atol=1e-6)
    with pytest.raises(EngineError, match="OpenVINO cannot run this network.*SomeNewOp.*--inference-engine tensorflow"):
        predictor(model, 2, "openvino")


def test_profiles_model_handler_loads_the_engine_and_cpu_share_it_was_given():
    """What the command decides (engine, streams per process) is what each worker builds."""
    from beam_pipelines.profile import FeatureModelHandler
    from dpcore.inference_engines import CpuShare
    from dpcore.profiling import FeatureModelSpec

    spec = FeatureModelSpec("cnn", 3, "features", SHAPE)  # random weights: profile.checkpoint None
    on_openvino = FeatureModelHandler(spec, 4, "openvino", CpuShare(streams=2)).load_model()
    assert on_openvino.engine == "openvino" and "2 stream(s)" in on_openvino.description
    on_tensorflow = FeatureModelHandler(spec, 4, "tensorflow").load_model()
    assert on_tensorflow.engine == "tensorflow"
    crops = np.random.default_rng(4).random((5, *SHAPE), dtype=np.float32)
    assert on_openvino(crops).shape == on_tensorflow(crops).shape == (5, 256)


class FakeRequest:
    """An infer request whose output is its input doubled; it notes how many requests run at once."""

    def __init__(self, log: dict, lock: threading.Lock, fail_on_part: float | None = None):
        self.log, self.lock, self.fail_on_part = log, lock, fail_on_part
        self.output = None

    def start_async(self, inputs: dict, share_inputs: bool = False) -> None:  # OpenVINO's default
        part = inputs[0]
        with self.lock:
            self.log["shared"] |= share_inputs
            self.log["running"] += 1
            self.log["most"] = max(self.log["most"], self.log["running"])
            self.log["used"].add(id(self))
        self.output = None if part[0, 0] == self.fail_on_part else part * 2

    def wait(self) -> None:
        with self.lock:
            self.log["running"] -= 1
        if self.output is None:
            raise RuntimeError("the part failed")

    def get_output_tensor(self, index: int):
        return type("Tensor", (), {"data": self.output})()


def fake_pool(requests: int, fail_on_part: float | None = None):
    from dpcore.inference_engines import RequestPool

    log, lock = {"running": 0, "most": 0, "used": set(), "shared": False}, threading.Lock()
    return RequestPool([FakeRequest(log, lock, fail_on_part) for _ in range(requests)]), log


def test_a_calls_parts_run_on_every_free_request_at_once_and_come_back_in_order():
    """One thread alone (the other cutting cells, or done) still keeps every stream busy."""
    pool, log = fake_pool(requests=3)
    batch = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    found = pool.run(models.padded_parts(batch, 2), len(batch))
    np.testing.assert_array_equal(found, batch * 2)  # four parts, the last padded and cut off
    assert log["most"] == 3 and len(log["used"]) == 3 and log["running"] == 0
    assert pool.run([], 0).size == 0
    # Parts are copied into the requests, never lent: a run with lent inputs hung (RequestPool's docstring).
    assert not log["shared"]


def test_request_pool_shared_by_threads_gives_each_its_own_rows_and_every_request_back():
    pool, log = fake_pool(requests=2)
    batches = [np.full((9, 3), i, np.float32) + np.arange(9, dtype=np.float32)[:, None] for i in range(4)]
    found: list = [None] * len(batches)

    def work(index: int) -> None:
        for _ in range(20):
            found[index] = pool.run(models.padded_parts(batches[index], 4), 9)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "calls waited on each other for ever"
    for batch, result in zip(batches, found):
        np.testing.assert_array_equal(result, batch * 2)
    assert log["running"] == 0 and pool._free.qsize() == 2


def test_a_failed_part_fails_its_call_and_gives_every_request_back():
    pool, log = fake_pool(requests=2, fail_on_part=4.0)
    batch = np.arange(8, dtype=np.float32).reshape(8, 1)  # parts of 2 start with 0, 2, 4 (fails), 6
    with pytest.raises(RuntimeError, match="the part failed"):
        pool.run(models.padded_parts(batch, 2), len(batch))
    assert log["running"] == 0 and pool._free.qsize() == 2
    np.testing.assert_array_equal(pool.run(models.padded_parts(batch[:4], 2), 4), batch[:4] * 2)


def test_openvino_has_two_requests_per_stream_and_a_lone_caller_uses_them_together(monkeypatch):
    from dpcore import inference_engines as engines
    from dpcore.inference_engines import CpuShare

    pools = []
    real_pool = engines.RequestPool

    def keep(requests):
        pools.append(real_pool(requests))
        return pools[-1]

    monkeypatch.setattr(engines, "RequestPool", keep)
    model = zoo_model("cnn")
    predict = openvino_predictor(model, batch_size=4, share=CpuShare(streams=2))
    assert pools[0]._free.qsize() == 4  # two streams, a running and a waiting request each
    crops = np.random.default_rng(6).random((10, *SHAPE), dtype=np.float32)
    np.testing.assert_allclose(predict(crops), model.predict_on_batch(crops), rtol=1e-4,
                               atol=1e-5 * np.abs(model.predict_on_batch(crops)).max())
    assert pools[0]._free.qsize() == 4  # every request back after the call
