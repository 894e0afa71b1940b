"""Where profile's model time goes: the same truncated network called in different ways, in one run.

    .venv/bin/python bench/bench_model.py [--cells 1024] [--batch 32] [--tf-keras]

EfficientNet-B0 at 128x128x5 cut at ``block6a_activation`` and mean-pooled (profile's default network),
random weights, crops already in memory. Reports cells/s for:

- ``predict_on_batch``: Keras 3's own call, what the profile issue calls "the limit";
- ``tf.function`` (fixed batch), and the same graph frozen (weights as constants), what profile runs on
  TensorFlow (``dpcore.models.predict_function``);
- ``tf.function`` + XLA (``jit_compile=True``);
- the frozen graph called from two threads at once (what profile's two default workers did on TensorFlow);
- the same frozen graph on OpenVINO's CPU plugin (``dpcore.inference_engines``: profile's default on CPUs,
  in parts of ``OPENVINO_CPU_PART`` crops), called from one thread, and from two at once with one stream or
  two (a stream per calling thread);
- the same graph with other batch sizes;
- ``tf_keras`` (Keras 2, DeepProfiler's API) building the same backbone, when installed (``--tf-keras``);
- with oneDNN off (``TF_ENABLE_ONEDNN_OPTS=0``, a child process: it must be set before TensorFlow loads).

Numbers go to stdout and ``bench/results/model.json``. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench_model")
LAYER = "block6a_activation"
SHAPE = (128, 128, 5)


def rate(call, crops: np.ndarray, batch: int, repeats: int = 2) -> float:
    """Best of ``repeats`` passes over ``crops`` in batches of ``batch`` (the first call compiles)."""
    call(crops[:batch])
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for first in range(0, len(crops) - batch + 1, batch):
            call(crops[first:first + batch])
        best = max(best, (len(crops) // batch * batch) / (time.perf_counter() - start))
    return best


def concurrent_rate(call, crops: np.ndarray, batch: int, threads: int, repeats: int = 2) -> float:
    """Best of ``repeats``: ``threads`` Python threads each pass over ``crops`` at once (TF releases the GIL)."""
    import threading

    def work():
        for first in range(0, len(crops) - batch + 1, batch):
            call(crops[first:first + batch])

    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=work) for _ in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, threads * (len(crops) // batch * batch) / (time.perf_counter() - start))
    return best


def keras3_variants(crops: np.ndarray, batch: int) -> tuple[dict[str, float], object]:
    import tensorflow as tf

    from dpcore import models

    model = models.feature_extractor(models.classifier("efficientnet", SHAPE, 2), LAYER)
    results = {"keras3 predict_on_batch": rate(lambda b: model.predict_on_batch(b), crops, batch)}
    signature = [tf.TensorSpec((batch,) + SHAPE, tf.float32)]
    traced = tf.function(lambda b: model(b, training=False), input_signature=signature)
    results["keras3 tf.function, fixed batch"] = rate(lambda b: traced(b).numpy(), crops, batch)
    frozen = models.predict_function(model, batch)
    results["keras3 frozen graph, calls of 32 (profile's TensorFlow engine)"] = rate(frozen, crops, batch)
    xla = tf.function(lambda b: model(b, training=False), input_signature=signature, jit_compile=True)
    results["keras3 tf.function + XLA"] = rate(lambda b: xla(b).numpy(), crops, batch)
    results["keras3 frozen graph, 2 threads calling at once (profile's 2 workers on TensorFlow)"] = \
        concurrent_rate(frozen, crops, batch, threads=2)
    for other in (16, 64, 128):
        call = models.predict_function(model, other)
        results[f"keras3 frozen graph, batch {other}"] = rate(call, crops, other)
    return results, model


def openvino_variants(model, crops: np.ndarray, batch: int) -> dict[str, float]:
    from dpcore.inference_engines import CpuShare, openvino_predictor

    call = openvino_predictor(model, batch)
    two_streams = openvino_predictor(model, batch, CpuShare(streams=2))
    return {"OpenVINO, frozen graph, parts of 8 (profile on CPUs, one worker)": rate(call, crops, batch),
            "OpenVINO, one stream, 2 threads calling at once": concurrent_rate(call, crops, batch, threads=2),
            "OpenVINO, 2 streams, 2 threads calling at once (profile's 2 default workers)":
                concurrent_rate(two_streams, crops, batch, threads=2)}


def tf_keras_variant(crops: np.ndarray, batch: int) -> dict[str, float]:
    import tensorflow as tf
    import tf_keras

    base = tf_keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=SHAPE)
    cut = tf_keras.Model(base.input, tf_keras.layers.GlobalAveragePooling2D()(base.get_layer(LAYER).output))
    signature = [tf.TensorSpec((batch,) + SHAPE, tf.float32)]
    call = tf.function(lambda b: cut(b, training=False), input_signature=signature)
    return {"tf_keras (Keras 2) predict_on_batch": rate(lambda b: cut.predict_on_batch(b), crops, batch),
            "tf_keras (Keras 2) tf.function, fixed batch": rate(lambda b: call(b).numpy(), crops, batch)}


def onednn_off(cells: int, batch: int) -> dict[str, float]:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, __file__, "--cells", str(cells), "--batch", str(batch), "--child"],
                         env=env, capture_output=True, text=True, check=True).stdout
    child = json.loads(out.strip().splitlines()[-1])
    return {f"{name}, oneDNN off": value for name, value in child.items()
            if name.startswith("keras3 frozen graph") and ", batch " not in name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tf-keras", action="store_true", help="also time tf_keras (pip install tf-keras)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    crops = np.random.default_rng(0).random((args.cells,) + SHAPE, dtype=np.float32)
    results, model = keras3_variants(crops, args.batch)
    if args.child:
        print(json.dumps(results))
        return
    results.update(openvino_variants(model, crops, args.batch))  # not in the oneDNN-off child: it would be dropped
    if args.tf_keras:
        results.update(tf_keras_variant(crops, args.batch))
    results.update(onednn_off(args.cells, args.batch))
    reference = results["keras3 predict_on_batch"]
    width = max(len(name) for name in results)
    for name, value in results.items():
        print(f"{name:<{width}}  {value:7.1f} cells/s  ({value / reference:.2f} x predict_on_batch)")
    target = REPO / "bench/results/model.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"cells": args.cells, "batch": args.batch, "cells_per_s": results,
                                  "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
