"""s3:// against local disk, on a local S3 server: prepare's sites/s and train's crops/s (issue #14).

    .venv/bin/python bench/bench_s3.py [--repeats 2]    (about 7 minutes on 2 cores)

moto's S3 server (``moto_server``, PyPI) runs in its own process on a free localhost port; s3fs reaches it
through ``AWS_ENDPOINT_URL``. The 12 real BBBC022 sites of ``tests/data`` become a Gallery-shaped plate
(``tests/gallery_fixtures.py``) in the bucket and, byte for byte, in a local folder. Then, as ``dpbeam``
commands in their own processes, each the fastest of ``--repeats`` runs:

- prepare (``--illumination cellprofiler``, compression on, one worker) with the images read in place from
  ``s3://`` (root in a bucket), and the same on local files: sites/s and the ratio;
- export-sc's shards uploaded to the bucket, then ``train`` (cnn, ``--train-epochs`` epochs, 6 by default)
  from ``s3://`` and from local shards, interleaved: crops/s of the whole run (crops drawn / wall time, start-up
  included, fastest run) and, from train's "epoch E/N took …" lines, the training steps' crops/s of epochs 2
  on (median over runs and epochs): whether reading shards from the bucket starves the model.

A server on localhost has no network latency: this measures dpbeam's own S3 path (requests, fsspec,
the streamed shard reader), not a real bucket's distance. Numbers go to stdout and
``bench/results/s3.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpcore.training_data import cells_per_epoch  # noqa: E402
from tests.gallery_fixtures import BATCH, PLATE, build_gallery, project_files  # noqa: E402

BUCKET_GALLERY = "s3://gallery/cpg0000-test/broad"
WELLS_SITES = [(well, str(site)) for well in ("A01", "A13") for site in (1, 2, 3, 4, 7, 8)]  # tests/data's 12


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def dpbeam(*argv: str, log_level: str = "WARNING") -> tuple[float, str]:
    """Run a dpbeam command; (wall seconds, its output)."""
    command = [str(REPO / ".venv/bin/dpbeam") if (REPO / ".venv/bin/dpbeam").exists() else "dpbeam",
               "--log-level", log_level, *argv]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout + result.stderr


def epoch_rates(output: str) -> list[float]:
    """Each epoch's training-step crops/s, from train's "epoch E/N took …" lines."""
    return [float(rate) for rate in re.findall(r"epoch \d+/\d+ took .*?\(([\d.e+]+) crops/s\)", output)]


def upload(folder: Path, url: str) -> None:
    from dpcore.storage import StoragePath  # noqa: PLC0415

    for path in folder.rglob("*"):
        if path.is_file():
            (StoragePath(url) / str(path.relative_to(folder))).write_bytes(path.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=6,
                        help="epochs per train run; epochs 2 on give the steady training rate")
    args = parser.parse_args()
    server, endpoint = start_server()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    import boto3

    from dpcore.storage import StoragePath

    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "sites": len(WELLS_SITES)}
    try:
        for bucket in ("gallery", "project"):
            boto3.client("s3").create_bucket(Bucket=bucket)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            build_gallery(tmp / "gallery", WELLS_SITES, BUCKET_GALLERY)
            upload(tmp / "gallery", BUCKET_GALLERY)
            csv = f"workspace/load_data_csv/{BATCH}/{PLATE}/load_data_with_illum.csv"
            platemap = ("--platemap", "workspace/metadata/platemap.csv", "--join", "Metadata_Plate", "Metadata_Well")
            roots = {"s3": "s3://project/bench", "local": str(tmp / "project")}
            # The local twin: the same rows with local folders.
            local_csv = tmp / "gallery" / csv
            text = local_csv.read_text().replace(f"{BUCKET_GALLERY}/images/", f"{tmp}/project/inputs/images/")
            local_csv.write_text(text)
            shutil.copytree(tmp / "gallery/images", tmp / "project/inputs/images")
            for where, root in roots.items():
                project_files(StoragePath(root), WELLS_SITES)
                gallery = BUCKET_GALLERY if where == "s3" else str(tmp / "gallery")
                dpbeam("--root", root, "--config", "gallery.json", "import-loaddata", f"{gallery}/{csv}",
                       platemap[0], f"{gallery}/{platemap[1]}", *platemap[2:])
            prepare = {}
            for _ in range(args.repeats):
                for where, root in roots.items():
                    seconds, _ = dpbeam("--root", root, "--config", "gallery.json", "prepare", "--illumination",
                                        "cellprofiler", "--overwrite", "--direct_num_workers", "1")
                    prepare[where] = min(prepare.get(where, float("inf")), seconds)
            results["prepare_sites_per_s"] = {where: len(WELLS_SITES) / s for where, s in prepare.items()}
            # Train: both classes in training (sites 1-4 of each well) and validation (7-8); export once
            # locally, the shards then in the bucket too.
            index_csv = tmp / "project/inputs/metadata/index.csv"
            import pandas as pd  # noqa: PLC0415
            index = pd.read_csv(index_csv, dtype=str)
            index["Split"] = ["0" if int(site) <= 4 else "1" for site in index.Metadata_Site]
            index.to_csv(index_csv, index=False)
            dpbeam("--root", roots["local"], "--config", "gallery.json", "export-sc")
            upload(tmp / "project/outputs/single-cells", f"{roots['s3']}/outputs/single-cells")
            manifest = json.loads((tmp / "project/outputs/single-cells/manifest.json").read_text())
            cells = sum(manifest["counts_per_split_label"]["training"].values())
            config = json.loads((tmp / "project/inputs/config/gallery.json").read_text())
            per_label = manifest["counts_per_split_label"]["training"]
            # The crops train draws per epoch (the balanced sample), computed as train computes it.
            per_epoch = cells_per_epoch(dict(enumerate(per_label.values())), len(per_label), 1.0)
            config["train"]["model"].update({"epochs": args.train_epochs, "lr_schedule": None})
            for root in roots.values():
                (StoragePath(root) / "inputs/config/train.json").write_text(json.dumps(config))
            whole: dict[str, float] = {}
            steady: dict[str, list[float]] = {where: [] for where in roots}
            for _ in range(args.repeats):
                for where, root in roots.items():
                    seconds, output = dpbeam("--root", root, "--config", "train.json", "train", "--seed", "1",
                                             "--epoch", "1", log_level="INFO")
                    whole[where] = min(whole.get(where, float("inf")), seconds)
                    steady[where] += epoch_rates(output)[1:]  # epoch 1 pays for tracing the model
            # Whole runs include start-up (TensorFlow's import, tracing, every small upload); the epochs'
            # training-step rate is what "does reading from the bucket starve the model" asks about.
            results["train_crops_per_s"] = {where: args.train_epochs * per_epoch / s for where, s in whole.items()}
            results["train_epoch_crops_per_s"] = {where: statistics.median(r) for where, r in steady.items()}
            results["train_epoch_crops_per_s_all"] = steady
            results["train_epochs"] = args.train_epochs
            results["training_cells"] = cells
    finally:
        server.terminate()
    print(f"\ns3:// (local moto server) against local disk, {results['sites']} sites, {os.cpu_count()} cores")
    for name, unit in (("prepare_sites_per_s", "sites/s"), ("train_crops_per_s", "crops/s"),
                       ("train_epoch_crops_per_s", "crops/s")):
        values = results[name]
        label = {"prepare_sites_per_s": "prepare", "train_crops_per_s": "train (run)",
                 "train_epoch_crops_per_s": "train (epochs)"}[name]
        print(f"{label:<15} local {values['local']:7.2f} {unit}   s3 {values['s3']:7.2f} {unit}   "
              f"s3 / local {values['s3'] / values['local']:.2f}")
    target = REPO / "bench/results/s3.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
