"""DeepProfiler's own network call beside profile's, on this machine: an upper bound of DeepProfiler's profile.

    .venv/bin/python bench/bench_deepprofiler_network.py [--sites 16] [--repeats 3]    (about 2 minutes)

DeepProfiler cannot be installed here (not on PyPI), but the library stack it profiled with in issue #13
can: TensorFlow 2.15 with its bundled Keras 2 and ``efficientnet`` 1.1.1, whose ``efficientnet.tfkeras``
builds DeepProfiler's EfficientNet (``plugins/models/efficientnet.py``). This script puts them in a side
environment (``.venv-deepprofiler``, created with uv from PyPI the first time: TF 2.15 and our TF 2.21 cannot
share one) and times, in a child process there, the call DeepProfiler's profile makes for each site
(``deepprofiler/learning/profiling.py``): the feature model cut at ``block6a_activation``, run in TF1 graph
mode (DeepProfiler profiles through a ``tf.compat.v1`` session) as ``predict(site_crops, batch_size=32)``, then
the spatial mean. The same crops (EfficientNet-B0, box 128, 5 channels, sites of 67 cells as the BBBC022
plate's average, random weights and crops: speed does not depend on them) then go through what profile
calls, in this process: ``dpcore.inference_engines.predictor`` on each engine, one call per site.

DeepProfiler's profile also reads, crops and writes, one site after another, so its whole stage is slower
than its network call here: dividing profile's stage rate (``bench/bench_all.py``) by this figure
understates how much faster profile is than DeepProfiler on this machine.

Numbers go to stdout and ``bench/results/deepprofiler_network.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIDE_ENV = REPO / ".venv-deepprofiler"
# DeepProfiler's stack in issue #13's measurement (DeepProfiler 0.3.1 on TF 2.15, Keras 2).
SIDE_PACKAGES = ["tensorflow-cpu==2.15.1", "efficientnet==1.1.1", "numpy<2"]
BOX, CHANNELS, CELLS_PER_SITE, BATCH, LAYER = 128, 5, 67, 32, "block6a_activation"

CHILD = r'''
import json, sys, time
import numpy as np
import tensorflow as tf
tf.compat.v1.disable_eager_execution()  # DeepProfiler's profile runs Keras in a TF1 session
import efficientnet.tfkeras as efn
box, channels, cells, batch, layer, sites, repeats = json.loads(sys.argv[1])
keras = tf.compat.v1.keras
image = keras.layers.Input((box, box, channels))
base = efn.EfficientNetB0(input_tensor=image, include_top=False, weights=None)
pooled = keras.layers.GlobalAveragePooling2D(name="pool5")(base.layers[-1].output)
classes = keras.layers.Dense(2, activation="softmax", name="ClassProb")(pooled)
model = keras.models.Model(inputs=image, outputs=classes)
features = keras.Model(model.inputs, model.get_layer(layer).output)
rng = np.random.default_rng(0)
crops = [rng.random((cells, box, box, channels), dtype=np.float32) for _ in range(sites)]

def one_pass():
    for site in crops:
        vectors = features.predict(site, batch_size=batch, verbose=0)
        while vectors.ndim > 2:
            vectors = vectors.mean(axis=1)

one_pass()
rates = []
for _ in range(repeats):
    start = time.perf_counter()
    one_pass()
    rates.append(sites * cells / (time.perf_counter() - start))
print(json.dumps({"tensorflow": tf.__version__, "rates": rates}))
'''


def side_python() -> Path:
    """The side environment's interpreter, created the first time (uv, PyPI)."""
    python = SIDE_ENV / "bin/python"
    if not python.exists():
        uv = REPO / ".venv/bin/uv"
        print(f"creating {SIDE_ENV} with {' '.join(SIDE_PACKAGES)} (about a minute)", flush=True)
        subprocess.run([str(uv), "venv", "-q", "-p", "3.11", str(SIDE_ENV)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "-p", str(python), *SIDE_PACKAGES], check=True)
    return python


def deepprofiler_network(sites: int, repeats: int) -> dict:
    settings = json.dumps([BOX, CHANNELS, CELLS_PER_SITE, BATCH, LAYER, sites, repeats])
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([str(side_python()), "-c", CHILD, settings], capture_output=True, text=True,
                          env=environment)
    if done.returncode:
        raise SystemExit(f"DeepProfiler's network failed in {SIDE_ENV}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_engines(sites: int, repeats: int) -> dict[str, list[float]]:
    """profile's engines as its handler calls them: one call per site of CELLS_PER_SITE crops."""
    import keras

    from dpcore import models
    from dpcore.inference_engines import predictor

    keras.utils.set_random_seed(7)
    model = models.feature_extractor(models.classifier("efficientnet", (BOX, BOX, CHANNELS), 2), LAYER)
    rng = np.random.default_rng(0)
    crops = [rng.random((CELLS_PER_SITE, BOX, BOX, CHANNELS), dtype=np.float32) for _ in range(sites)]
    result = {}
    for engine in ("openvino", "tensorflow"):
        call = predictor(model, BATCH, engine)
        call(crops[0])
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for site in crops:
                call(site)
            rates.append(sites * CELLS_PER_SITE / (time.perf_counter() - start))
        result[engine] = rates
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    theirs = deepprofiler_network(args.sites, args.repeats)
    ours = profile_engines(args.sites, args.repeats)
    best = {"DeepProfiler's call (TF %s, Keras 2, graph mode)" % theirs["tensorflow"]: max(theirs["rates"]),
            "profile, OpenVINO (its default on CPUs)": max(ours["openvino"]),
            "profile, TensorFlow (--inference-engine tensorflow)": max(ours["tensorflow"])}
    baseline = max(theirs["rates"])
    print(f"EfficientNet-B0 to {LAYER}, box {BOX}, {CHANNELS} channels, sites of {CELLS_PER_SITE} cells, "
          f"batch {BATCH}; fastest of {args.repeats} passes over {args.sites} sites")
    for name, rate in best.items():
        print(f"  {name:58s} {rate:7.0f} cells/s  {rate / baseline:5.2f}x")
    out = REPO / "bench/results/deepprofiler_network.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "sites": args.sites,
                               "cells_per_site": CELLS_PER_SITE, "deepprofiler": theirs, "profile": ours,
                               "fastest": best}, indent=2))


if __name__ == "__main__":
    main()
