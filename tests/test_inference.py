"""profile's compiled inference against Keras' own call of the same model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dpcore import models  # a required dependency: an import error fails the module
from dpcore.tensorflow_runtime import INTRA_OP_VARIABLE, cores_shared

# One xdist worker runs the whole module: its EfficientNet (a module fixture) is built once (scripts/test.sh).
pytestmark = pytest.mark.xdist_group("inference")


@pytest.fixture(scope="module")
def efficientnet_cut():
    import keras

    keras.utils.set_random_seed(3)
    return models.feature_extractor(models.classifier("efficientnet", (64, 64, 5), 3), "block6a_activation")


def test_frozen_inference_equals_keras_predict(efficientnet_cut):
    """Weights folded into the graph change no feature: Keras' predict_on_batch is the reference."""
    crops = np.random.default_rng(0).random((45, 64, 64, 5), dtype=np.float32)
    expected = efficientnet_cut.predict_on_batch(crops)
    for batch_size in (16, None):  # 45 cells: two full batches and a padded one; then any batch shape
        found = models.predict_function(efficientnet_cut, batch_size)(crops)
        assert found.shape == expected.shape == (45, 672)
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_a_cells_features_do_not_depend_on_its_batch(efficientnet_cut):
    """Within float32 rounding: on some CPUs the matrix kernels give a row's last bits by its position in
    the batch (AMD EPYC here: 2e-10 on features of 1e-4), never more."""
    crops = np.random.default_rng(1).random((20, 64, 64, 5), dtype=np.float32)
    predict = models.predict_function(efficientnet_cut, 8)
    alone = np.concatenate([predict(crops[i:i + 1]) for i in range(len(crops))])
    together = predict(crops)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())
    np.testing.assert_array_equal(predict(crops), together)  # the same call twice: the same bits


def test_local_threads_share_the_cores_and_the_setting_does_not_leak(monkeypatch):
    monkeypatch.delenv(INTRA_OP_VARIABLE, raising=False)
    with cores_shared(2) as per_call:
        assert per_call == max(1, (os.cpu_count() or 1) // 2)
        assert os.environ[INTRA_OP_VARIABLE] == str(per_call)
    assert INTRA_OP_VARIABLE not in os.environ
    with cores_shared(1) as per_call:
        assert per_call is None and INTRA_OP_VARIABLE not in os.environ
    monkeypatch.setenv(INTRA_OP_VARIABLE, "3")  # the user's choice wins
    with cores_shared(2) as per_call:
        assert per_call == 3
    assert os.environ[INTRA_OP_VARIABLE] == "3"


def test_only_local_workers_count_as_concurrent_model_callers():
    from beam_pipelines.profile import local_model_callers
    from beam_pipelines.context import local_parallelism

    assert local_model_callers(local_parallelism(())) == (os.cpu_count() or 1)
    assert local_model_callers(("--direct_num_workers", "3", "--direct_running_mode", "multi_processing")) == 3
    assert local_model_callers(("--runner=FlinkRunner", "--direct_num_workers=4")) == 1
    assert local_model_callers(()) == 1


def test_openvino_gets_a_stream_per_local_thread_and_a_share_of_the_cores_per_local_process():
    from beam_pipelines.context import local_parallelism
    from beam_pipelines.profile import local_cpu_share
    from dpcore.inference_engines import CpuShare

    assert local_cpu_share(local_parallelism(()), 1) == CpuShare(streams=os.cpu_count() or 1)
    processes = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    assert local_cpu_share(processes, 3) == CpuShare(threads=3, streams=1)
    assert local_cpu_share(("--direct_num_workers", "1", "--direct_running_mode", "multi_processing"), None) \
        == CpuShare()
    assert local_cpu_share(("--runner=FlinkRunner", "--direct_num_workers=4"), None) == CpuShare()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_reduced_precision_features_are_float32_and_close(efficientnet_cut, precision):
    import keras

    from dpcore.acceleration import Acceleration

    # Cut at block 3a, not 6a: XLA compiles a third of the network (5 s of CPU less per precision here), and
    # the reduced-precision path is the same (convolutions, batch norms, activations in float16/bfloat16).
    layer = "block3a_activation"
    crops = np.random.default_rng(2).random((12, 64, 64, 5), dtype=np.float32)
    float32_cut = models.feature_extractor(efficientnet_cut, layer)
    expected = float32_cut.predict_on_batch(crops)
    with Acceleration(precision).building():
        reduced = models.feature_extractor(models.classifier("efficientnet", (64, 64, 5), 3), layer)
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the global policy is restored
    reduced.set_weights(float32_cut.get_weights())
    found = models.predict_function(reduced, 8, xla=True)(crops)
    assert found.dtype == np.float32
    assert not np.array_equal(found, expected)
    np.testing.assert_allclose(found, expected, rtol=0, atol=0.02 * np.abs(expected).max())


def test_unknown_precision_is_refused():
    from dpcore.acceleration import Acceleration, AccelerationError

    with pytest.raises(AccelerationError, match="float64"):
        Acceleration("float64")
