"""``--root gs://...`` end to end, against a local GCS emulator the test starts itself.

The emulator is ``gcp-storage-emulator`` (PyPI), run in-process on a free
localhost port; gcsfs reaches it through ``STORAGE_EMULATOR_HOST``. No mock of
our own code: every command goes through the same ``StoragePath``/fsspec code
as on Google Cloud Storage. Credentials stay out of the config: here the
emulator takes anonymous access, in production gcsfs uses application
default credentials.

``train`` is not part of this chain: TensorFlow reads ``gs://`` with its own
client, which cannot be pointed at an emulator (it is tested on local shards).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading

import numpy as np
import pandas as pd
import pytest

import gcp_storage_emulator.server as gcp_storage_emulator  # noqa: E402  (a test dependency: fail if missing)

from dpcore import models  # noqa: E402
from dpcore.checkpoints import save_weights  # noqa: E402
from dpcore import features, sc_export  # noqa: E402
from dpcore.storage import StoragePath  # noqa: E402
from tests.conftest import load_npz, run_cli  # noqa: E402

# One xdist worker runs the whole module: its storage emulator (a module fixture) starts once (scripts/test.sh).
pytestmark = [pytest.mark.pipeline, pytest.mark.xdist_group("buckets")]
BUCKET = "dpbeam-test"
ROOT = f"gs://{BUCKET}/screen"


@pytest.fixture(scope="module")
def bucket():
    import fsspec

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = gcp_storage_emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    saved_conf = {k: fsspec.config.conf.get(k) for k in ("gs", "gcs")}
    for protocol in ("gs", "gcs"):
        fsspec.config.conf[protocol] = {"token": "anon"}  # the emulator's access; never in the dpbeam config
    fsspec.filesystem("gs").clear_instance_cache()
    try:
        yield ROOT
    finally:
        # The emulator serves one connection at a time, and its shutdown waits for the client to close its
        # kept-alive connection (~15 s): stop it in a daemon thread and wait at most 2 s. It listens on a port
        # of its own, so a late stop disturbs nothing.
        stopping = threading.Thread(target=server.stop, daemon=True)
        stopping.start()
        stopping.join(timeout=2)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for protocol, value in saved_conf.items():
            if value is None:
                fsspec.config.conf.pop(protocol, None)
            else:
                fsspec.config.conf[protocol] = value
        fsspec.filesystem("gs").clear_instance_cache()


def dpbeam(*argv: str) -> tuple[int, str]:
    return run_cli("--root", ROOT, "--config", "bbbc022.json", *argv)


def test_the_whole_chain_runs_on_a_bucket(bucket, prepared):
    code, text = run_cli("--root", ROOT, "example")
    assert code == 0 and "74 file(s) written" in text, text
    code, text = run_cli("--root", ROOT, "--config", "bbbc022.json", "validate", "--commands", "prepare,export-sc")
    assert code == 0 and "cells found: 808" in text, text

    code, text = dpbeam("prepare")
    assert code == 0, text
    npz = StoragePath(f"{ROOT}/outputs/intensities/20585/20585.npz")
    with np.load(io.BytesIO(npz.read_bytes()), allow_pickle=False) as arrays:
        local = load_npz(prepared[0])
        for key in ("upper_percentiles", "illum_correction_function", "controls_distribution"):
            np.testing.assert_array_equal(arrays[key], local[key])
    pngs = StoragePath(f"{ROOT}/outputs/compressed/images/20585").iterdir()
    assert len(pngs) == 60
    assert pngs[0].read_bytes() == (prepared[0] / "outputs/compressed/images/20585" / pngs[0].name).read_bytes()
    code, text = dpbeam("prepare")
    assert code == 0 and "already complete" in text

    code, text = dpbeam("export-sc", "--gzip")
    assert code == 0, text
    manifest = json.loads(StoragePath(f"{ROOT}/outputs/single-cells/manifest.json").read_text())
    assert sum(manifest["counts"].values()) == 808
    index = sc_export.index_dataset(StoragePath(f"{ROOT}/outputs/single-cells")).to_table()
    assert index.num_rows == 808

    # DeepProfiler's small cnn keeps this test short; the networks themselves are tested in test_profile_pipeline.
    config = json.loads(StoragePath(f"{ROOT}/inputs/config/bbbc022.json").read_text())
    config["train"]["model"]["name"] = "cnn"
    config["train"]["model"]["params"]["conv_blocks"] = 4
    config["profile"].update({"feature_layer": "features", "checkpoint": "cnn.hdf5"})
    StoragePath(f"{ROOT}/inputs/config/cnn.json").write_text(json.dumps(config))
    save_weights(models.classifier("cnn", (128, 128, 5), 2, conv_blocks=4), StoragePath(f"{ROOT}/outputs/results/checkpoint/cnn.hdf5"))
    code, text = run_cli("--root", ROOT, "--config", "cnn.json", "profile")
    assert code == 0, text
    files = StoragePath(f"{ROOT}/outputs/results/features").glob("*/*.parquet")
    assert len(files) == 12
    cells = sum(len(pd.read_parquet(io.BytesIO(f.read_bytes()), columns=["Metadata_Cell_Index"])) for f in files)
    assert cells == 808
    table = features.dataset(StoragePath(f"{ROOT}/outputs/results/features")).to_table(
        columns=["Metadata_Cell_Index"])
    assert table.num_rows == 808
    assert not StoragePath(f"{ROOT}/outputs/.intensities.dpbeam-lock").exists()
