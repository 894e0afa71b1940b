"""DeepProfiler's profile on this machine, as near as it can run here: its network call, and its per-site steps.

    .venv/bin/python bench/bench_deepprofiler.py [--sites 16] [--repeats 3] [--project ROOT --config NAME]

DeepProfiler cannot be installed here (not on PyPI), but the library stack it profiled with in issue #13
can: TensorFlow 2.15 with its bundled Keras 2, ``efficientnet`` 1.1.1 (whose ``efficientnet.tfkeras`` builds
DeepProfiler's EfficientNet, ``plugins/models/efficientnet.py``) and scikit-image. This script puts them in
a side environment (``.venv-deepprofiler``, created with uv from PyPI the first time: TF 2.15 and our TF 2.21
cannot share one) and, in a child process there:

- **network**: the call DeepProfiler's profile makes for each site (``deepprofiler/learning/profiling.py``):
  the feature model cut at ``block6a_activation``, run in TF1 graph mode (DeepProfiler profiles through a
  ``tf.compat.v1`` session) as ``predict(site_crops, batch_size=32)``, then the spatial mean, on sites of 67
  random crops (the BBBC022 plate's average; speed does not depend on the values). The same crops then go
  through profile's own engines (``dpcore.inference_engines.predictor``), one call per site, in this process.
- **stage** (``--project``): DeepProfiler's per-site steps re-enacted on a prepared dpbeam project, one site
  after another as its ``--cores 1`` run does: read the site's compressed PNGs with ``skimage.io.imread``
  into a float64 stack (``dataset/pixels.py``), its locations with ``pandas.read_csv``, boxes of
  ``box_size`` around the centres (``imaging/boxes.py``), crops by a session running ``crop_and_resize`` and
  the per-crop min/max scaling (``imaging/cropping.py``), the network call above, and
  ``np.savez_compressed`` of features, metadata and locations. Its rate is cells over the time from the
  first site to the last (start-up excluded, as the marginal rates of ``bench/bench_all.py``).

The re-enactment is ours, written from DeepProfiler's code, not DeepProfiler: it leaves out what it does
besides (its metadata frames, per-site logging, checks), so it is no slower than DeepProfiler would be here;
a ratio of profile's rate to it understates profile's lead, if anything.

Numbers go to stdout and ``bench/results/deepprofiler.json``.
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
SIDE_PACKAGES = ["tensorflow-cpu==2.15.1", "efficientnet==1.1.1", "numpy<2", "pandas", "scikit-image"]
BOX, CHANNELS, CELLS_PER_SITE, BATCH, LAYER = 128, 5, 67, 32, "block6a_activation"

CHILD = r'''
import json, os, sys, time
import numpy as np
import tensorflow as tf
tf.compat.v1.disable_eager_execution()  # DeepProfiler's profile runs Keras in a TF1 session
import efficientnet.tfkeras as efn
settings = json.loads(sys.argv[1])
box, channels, batch, layer = settings["box"], settings["channels"], settings["batch"], settings["layer"]
keras = tf.compat.v1.keras
image_input = keras.layers.Input((box, box, channels))
base = efn.EfficientNetB0(input_tensor=image_input, include_top=False, weights=None)
pooled = keras.layers.GlobalAveragePooling2D(name="pool5")(base.layers[-1].output)
classes = keras.layers.Dense(2, activation="softmax", name="ClassProb")(pooled)
model = keras.models.Model(inputs=image_input, outputs=classes)
features = keras.Model(model.inputs, model.get_layer(layer).output)
session = tf.compat.v1.keras.backend.get_session()


def network(crops):
    vectors = features.predict(crops, batch_size=batch, verbose=0)
    while vectors.ndim > 2:  # the spatial mean
        vectors = vectors.mean(axis=1)
    return vectors


def timed(one_pass, repeats):
    one_pass()  # warm
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        cells = one_pass()
        rates.append(cells / (time.perf_counter() - start))
    return rates


result = {"tensorflow": tf.__version__}
rng = np.random.default_rng(0)
sites = [rng.random((settings["cells"], box, box, channels), dtype=np.float32) for _ in range(settings["sites"])]
result["network"] = timed(lambda: sum(len(network(crops)) for crops in sites), settings["repeats"])

if settings.get("project_sites"):
    import pandas as pd
    import skimage.io
    image_ph = tf.compat.v1.placeholder(tf.float32, (None, None, None, channels))
    boxes_ph = tf.compat.v1.placeholder(tf.float32, (None, 4))
    indices_ph = tf.compat.v1.placeholder(tf.int32, (None,))
    cropped = tf.image.crop_and_resize(image_ph, boxes_ph, indices_ph, tf.constant([box, box]))
    low = tf.math.reduce_min(cropped, axis=[1, 2], keepdims=True)
    high = tf.math.reduce_max(cropped, axis=[1, 2], keepdims=True)
    crop_op = (cropped - low) / high
    out_dir = settings["out_dir"]

    def one_site(site):
        planes = [skimage.io.imread(path) for path in site["pngs"]]
        image = np.zeros(planes[0].shape + (len(planes),))
        for c, plane in enumerate(planes):
            image[:, :, c] = plane
        locations = pd.read_csv(site["locations"])
        height, width = image.shape[:2]
        boxes = np.zeros((len(locations), 4), np.float32)
        boxes[:, 0] = (locations["Nuclei_Location_Center_Y"] - box / 2) / height
        boxes[:, 1] = (locations["Nuclei_Location_Center_X"] - box / 2) / width
        boxes[:, 2] = (locations["Nuclei_Location_Center_Y"] + box / 2) / height
        boxes[:, 3] = (locations["Nuclei_Location_Center_X"] + box / 2) / width
        crops = session.run(crop_op, {image_ph: image[np.newaxis], boxes_ph: boxes,
                                      indices_ph: np.zeros(len(locations), np.int32)})
        vectors = network(crops)
        np.savez_compressed(os.path.join(out_dir, site["name"] + ".npz"), features=vectors,
                            metadata=site["metadata"], locations=locations)
        return len(vectors)

    result["stage"] = timed(lambda: sum(one_site(site) for site in settings["project_sites"]), settings["repeats"])
    result["stage_sites"] = len(settings["project_sites"])
print(json.dumps(result))
'''


def side_python() -> Path:
    """The side environment's interpreter, with SIDE_PACKAGES (uv, PyPI; seconds once installed)."""
    python = SIDE_ENV / "bin/python"
    uv = REPO / ".venv/bin/uv"
    if not python.exists():
        print(f"creating {SIDE_ENV} with {' '.join(SIDE_PACKAGES)} (about a minute)", flush=True)
        subprocess.run([str(uv), "venv", "-q", "-p", "3.11", str(SIDE_ENV)], check=True)
    subprocess.run([str(uv), "pip", "install", "-q", "-p", str(python), *SIDE_PACKAGES], check=True)
    return python


def deepprofiler(sites: int, repeats: int, project: Path | None = None, config: str | None = None) -> dict:
    """The child's rates: ``network`` and, with a project, ``stage`` (cells/s per pass)."""
    import tempfile

    settings = {"box": BOX, "channels": CHANNELS, "cells": CELLS_PER_SITE, "batch": BATCH, "layer": LAYER,
                "sites": sites, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="dpbeam-deepprofiler-") as out_dir:
        if project is not None:
            settings.update(project_sites=project_sites(project, config), out_dir=out_dir)
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run([str(side_python()), "-c", CHILD, json.dumps(settings)], capture_output=True,
                              text=True, env=environment)
    if done.returncode:
        raise SystemExit(f"DeepProfiler's steps failed in {SIDE_ENV}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def project_sites(root: Path, config_name: str | None) -> list[dict]:
    """Each site of a prepared project: its compressed PNGs, locations file and metadata (what DeepProfiler's
    profile reads), in index order."""
    from dpcore.config import load_config
    from dpcore.layout import ProjectLayout
    from dpcore.metadata import iter_sites
    from dpcore.sites import compressed_image_paths

    layout = ProjectLayout.create(str(root))
    config = load_config(layout.config_file(config_name or "config.json"))
    sites = []
    for site in iter_sites(layout.index_file, config.channels):
        sites.append({"name": f"{site.plate}_{site.well}_{site.site}",
                      "pngs": [os.fspath(path) for path in compressed_image_paths(layout, site)],
                      "locations": os.fspath(layout.locations_file(site.plate, site.well, site.site)),
                      "metadata": dict(site.metadata)})
    return sites


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
    parser.add_argument("--sites", type=int, default=16, help="random sites for the network call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--project", type=Path, help="a prepared project to re-enact DeepProfiler's profile on")
    parser.add_argument("--config", default=None, help="its config file name (inputs/config/)")
    args = parser.parse_args()
    theirs = deepprofiler(args.sites, args.repeats, args.project, args.config)
    ours = profile_engines(args.sites, args.repeats)
    baseline = max(theirs["network"])
    rows = {f"DeepProfiler's network call (TF {theirs['tensorflow']}, Keras 2, graph mode)": baseline,
            "profile's OpenVINO engine (its default on CPUs)": max(ours["openvino"]),
            "profile's TensorFlow engine (--inference-engine tensorflow)": max(ours["tensorflow"])}
    print(f"EfficientNet-B0 to {LAYER}, box {BOX}, {CHANNELS} channels, batch {BATCH}; network: sites of "
          f"{CELLS_PER_SITE} random crops, fastest of {args.repeats} passes over {args.sites} sites")
    for name, rate in rows.items():
        print(f"  {name:64s} {rate:7.0f} cells/s  {rate / baseline:5.2f}x")
    if "stage" in theirs:
        print(f"DeepProfiler's per-site steps re-enacted on {args.project} ({theirs['stage_sites']} sites): "
              f"{max(theirs['stage']):.0f} cells/s (fastest of {args.repeats} passes)")
    out = REPO / "bench/results/deepprofiler.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "sites": args.sites,
                               "cells_per_site": CELLS_PER_SITE, "deepprofiler": theirs, "profile": ours},
                              indent=2))


if __name__ == "__main__":
    main()
