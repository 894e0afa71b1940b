"""A Cell Painting Gallery plate profiled where it lies: ``s3://`` images, LoadData CSVs, CellProfiler functions.

A local S3 server (moto's, from PyPI, in this process on a free port) holds a Gallery-shaped bucket
built from the real BBBC022 images: ``images/<batch>/images/<plate>/`` TIFFs, ``illum/<plate>/``
CellProfiler functions (``.npy``), ``load_data_with_illum.csv`` and a platemap. The chain
``import-loaddata`` -> ``prepare --illumination cellprofiler`` -> ``export-sc`` -> ``profile`` runs with the
project root in a second bucket, and again on local copies of the same files: the features must be equal.
s3fs reaches the server through ``AWS_ENDPOINT_URL``, the variable users set for MinIO or Ceph.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import moto.server  # noqa: E402  (a test dependency: fail if missing)

from dpcore.storage import StoragePath  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.gallery_fixtures import (BATCH, GALLERY, PLATE, SITES, TREATMENTS, build_gallery,  # noqa: E402
                                    project_files)

# One xdist worker runs the whole module: its S3 server (a module fixture) starts once (scripts/test.sh).
pytestmark = [pytest.mark.pipeline, pytest.mark.xdist_group("gallery")]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 server with the Gallery bucket and an empty project bucket; the environment points at it."""
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    patch = pytest.MonkeyPatch()
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        patch.setenv(name, value)
    client = boto3.client("s3")
    for bucket in ("gallery", "project"):
        client.create_bucket(Bucket=bucket)
    local = tmp_path_factory.mktemp("gallery")
    build_gallery(local)
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "gallery", f"cpg0000-test/broad/{path.relative_to(local)}")
    try:
        yield local
    finally:
        patch.undo()
        server.stop()


class ImageReads:
    """Wraps ``read_image`` where the stages call it: images in a bucket take ``latency`` seconds more (a real bucket's
    round trip, which a server on localhost lacks), and every read is recorded per command."""

    def __init__(self, monkeypatch, latency: float = 0.05):
        import beam_pipelines.locate
        import dpcore.sites

        self.latency, self.command = latency, ""
        self.reads: list[tuple[str, str, float, float]] = []  # command, file name, start, end
        self.lock = threading.Lock()
        original = dpcore.sites.read_image

        def read_image(path, expected_shape=None):
            start = time.perf_counter()
            if not path.is_local:
                time.sleep(self.latency)
            image = original(path, expected_shape)
            with self.lock:
                self.reads.append((self.command, path.name, start, time.perf_counter()))
            return image

        monkeypatch.setattr(dpcore.sites, "read_image", read_image)  # prepare, export-sc, profile
        monkeypatch.setattr(beam_pipelines.locate, "read_image", read_image)

    def most_sites_at_once(self, command: str, nth_read: int = 1) -> int:
        """The most sites whose images were being read at the same moment during ``command`` (counting each
        file's ``nth_read``-th read: prepare reads every image twice, statistics then compression)."""
        seen: dict[str, int] = {}
        spans = []
        for name, start, end in sorted((r[1:] for r in self.reads if r[0] == command), key=lambda r: r[1]):
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == nth_read:
                spans.append((re.sub(r"_w\d.*$", "", name), start, end))  # IXMtest_A01_s1_w1…: site A01 s1
        return max((len({site for site, start, end in spans if start <= moment < end})
                    for _, moment, _ in spans), default=0)


def run_chain(root: str, gallery: str, reads: ImageReads | None = None) -> list[str]:
    """The four commands a user runs on a Gallery plate; returns their output for the assertions."""
    common = ("--root", root, "--config", "gallery.json")
    outputs = []
    for command in (
        ("import-loaddata", f"{gallery}/workspace/load_data_csv/{BATCH}/{PLATE}/load_data_with_illum.csv",
         "--platemap", f"{gallery}/workspace/metadata/platemap.csv", "--join", "Metadata_Plate", "Metadata_Well"),
        ("prepare", "--illumination", "cellprofiler", "--direct_num_workers", "1"),
        # Two shards of three sites: a shard's next sites are read while one is cut (the default floor of 16
        # shards, capped at the sites, would give each of the 6 sites a shard of its own, with none to read ahead).
        ("export-sc", "--direct_num_workers", "1", "--min-shards", "2"),
        ("profile", "--direct_num_workers", "1"),
    ):
        if reads is not None:
            reads.command = command[0]
        code, text = run_cli(*common, *command)
        assert code == 0, f"{command[0]}: {text}"
        outputs.append(text)
    return outputs


def features(root: StoragePath) -> pd.DataFrame:
    files = sorted((root / "outputs/results/features").glob("*/*.parquet"))
    frame = pd.concat([pd.read_parquet(io.BytesIO(path.read_bytes())) for path in files], ignore_index=True)
    return frame.sort_values(["Metadata_Well", "Metadata_Site", "Metadata_Cell_Index"]
                             if "Metadata_Cell_Index" in frame else list(frame.columns[:3])).reset_index(drop=True)


def test_a_gallery_plate_is_profiled_in_place_and_matches_local_files(s3, tmp_path, monkeypatch):
    remote = StoragePath("s3://project/screen")
    project_files(remote)
    started = time.perf_counter()
    reads = ImageReads(monkeypatch)
    imported, prepared, _, _ = run_chain(remote.url, GALLERY, reads)
    # One worker each, yet sites in a bucket were read while others were being worked on, in every stage
    # that reads them (prepare's two passes, export-sc, profile).
    at_once = {"prepare statistics": reads.most_sites_at_once("prepare", 1),
               "prepare compression": reads.most_sites_at_once("prepare", 2),
               "export-sc": reads.most_sites_at_once("export-sc"), "profile": reads.most_sites_at_once("profile")}
    assert all(sites >= 2 for sites in at_once.values()), at_once
    assert max(at_once.values()) <= 5, at_once  # one site worked on and at most 4 read ahead
    assert f"wrote {remote.url}/inputs/metadata/index.csv: 6 site(s) of 1 plate(s) from 6 row(s)" in imported
    assert "5 channel(s) with CellProfiler illumination functions" in imported
    index = pd.read_csv(io.BytesIO((remote / "inputs/metadata/index.csv").read_bytes()), dtype=str)
    assert index.loc[0, "DNA"].startswith(f"{GALLERY}/images/{BATCH}/images/{PLATE}/IXMtest_A01_s1_w1")
    assert index.loc[0, "Illum_DNA"] == f"{GALLERY}/images/{BATCH}/illum/{PLATE}/{PLATE}_IllumDNA.npy"
    assert dict(zip(index.Metadata_Well, index.Treatment)) == TREATMENTS
    # validate reads the images' headers where they lie, as it reads local ones.
    code, text = run_cli("--root", remote.url, "--config", "gallery.json", "validate", "--commands", "prepare")
    assert code == 0 and "config ready for: prepare" in text, text
    assert "illumination functions: CellProfiler" in prepared
    assert "images read for statistics: 30;" in prepared  # counted for sites read ahead in other threads too
    manifest = json.loads((remote / f"outputs/intensities/{PLATE}/prepare.json").read_text())
    assert manifest["cellprofiler_functions"]["Mito"].endswith(f"illum/{PLATE}/{PLATE}_IllumMito.npy")
    assert manifest["settings"]["functions"] == "cellprofiler"
    # Nothing was copied from the Gallery into the project.
    assert not (remote / "inputs/images").exists()

    # The same plate from local files: the same LoadData rows with local folders.
    local_gallery = tmp_path / "gallery"
    shutil.copytree(s3, local_gallery)
    csv = local_gallery / "workspace/load_data_csv" / BATCH / PLATE / "load_data_with_illum.csv"
    local_root = tmp_path / "project"
    rows = pd.read_csv(csv, dtype=str)
    images = local_root / "inputs/images"
    shutil.copytree(local_gallery / "images", images)
    for column in [c for c in rows.columns if c.startswith("PathName_")]:
        rows[column] = rows[column].str.replace(f"{GALLERY}/images/", f"{images}/", regex=False)
    rows.to_csv(csv, index=False)
    project_files(StoragePath(str(local_root)))
    run_chain(str(local_root), str(local_gallery))

    ours, reference = features(remote), features(StoragePath(str(local_root)))
    assert len(ours) == len(reference) > 300
    feature_columns = [c for c in ours.columns if c.startswith("cnn_")]
    np.testing.assert_array_equal(ours[feature_columns].to_numpy(), reference[feature_columns].to_numpy())

    # The commands after profile read and write the bucket too: split, aggregate, evaluate, report.
    common = ("--root", remote.url, "--config", "gallery.json")
    code, text = run_cli(*common, "split", "--parts", "2")
    assert code == 0, text
    parts = [pd.read_csv(io.BytesIO(path.read_bytes()), dtype=str)
             for path in sorted((remote / "inputs/metadata").glob("index-0*.csv"))]
    assert [sorted(set(part.Metadata_Well)) for part in parts] == [["A01"], ["A13"]]  # wells are never divided
    assert sorted(pd.concat(parts).Metadata_Well + pd.concat(parts).Metadata_Site) == sorted(
        index.Metadata_Well + index.Metadata_Site)
    for command in ("aggregate", "evaluate", "report"):
        code, text = run_cli(*common, command)
        assert code == 0, f"{command}: {text}"
    sites = pd.read_parquet(io.BytesIO((remote / "outputs/results/profiles/sites.parquet").read_bytes()))
    assert len(sites) == 6 and sites["Metadata_Object_Count"].sum() == len(ours)
    assert (remote / "outputs/results/evaluation/phenotypic_activity.parquet").exists()
    assert "<html" in (remote / "outputs/results/report/index.html").read_text().lower()
    print(f"gallery chain on s3:// in {time.perf_counter() - started:.0f} s")


def test_cellprofiler_functions_change_the_images_and_a_switch_needs_overwrite(s3, tmp_path):
    root = StoragePath("s3://project/switch")
    project_files(root)
    common = ("--root", root.url, "--config", "gallery.json")
    csv = f"{GALLERY}/workspace/load_data_csv/{BATCH}/{PLATE}/load_data_with_illum.csv"
    assert run_cli(*common, "import-loaddata", csv, "--platemap", f"{GALLERY}/workspace/metadata/platemap.csv",
                   "--join", "Metadata_Plate", "Metadata_Well")[0] == 0
    assert run_cli(*common, "prepare")[0] == 0  # dpbeam's own functions
    first = pd.read_csv(io.BytesIO((root / "inputs/metadata/index.csv").read_bytes())).DNA[0]
    png = f"outputs/compressed/images/{PLATE}/{Path(first).stem}.png"
    computed = (root / png).read_bytes()
    code, text = run_cli(*common, "prepare", "--illumination", "cellprofiler")
    assert code == 2 and f"plate {PLATE}" in text and "'deepprofiler' -> 'cellprofiler'" in text and "--overwrite" in text
    assert run_cli(*common, "prepare", "--illumination", "cellprofiler", "--overwrite")[0] == 0
    assert (root / png).read_bytes() != computed

    # A function of the wrong shape, and a missing one: errors naming the file.
    bad = f"{GALLERY}/images/{BATCH}/illum/{PLATE}/{PLATE}_IllumRNA.npy"
    good = StoragePath(bad).read_bytes()
    buffer = io.BytesIO()
    np.save(buffer, np.ones((10, 10)))
    StoragePath(bad).write_bytes(buffer.getvalue())
    try:
        code, text = run_cli(*common, "prepare", "--illumination", "cellprofiler", "--overwrite")
        assert code == 1 and f"{bad}: CellProfiler illumination function is 10x10, the images are 520x696" in text
        StoragePath(bad).remove()
        code, text = run_cli(*common, "prepare", "--illumination", "cellprofiler", "--overwrite")
        assert code == 2 and f"CellProfiler illumination function not found: {bad}" in text
    finally:
        StoragePath(bad).write_bytes(good)


def test_import_loaddata_reports_bad_rows_by_line_and_keeps_the_rest(s3, tmp_path):
    root = tmp_path / "project"
    project_files(StoragePath(str(root)))
    rows = pd.read_csv(s3 / "workspace/load_data_csv" / BATCH / PLATE / "load_data_with_illum.csv", dtype=str)
    rows.loc[1, "FileName_OrigER"] = ""
    rows.loc[4, "Metadata_Well"] = "B07"  # not in the platemap
    csv = tmp_path / "load_data.csv"
    rows.to_csv(csv, index=False)
    code, text = run_cli("--root", str(root), "--config", "gallery.json", "import-loaddata", str(csv),
                         "--platemap", str(s3 / "workspace/metadata/platemap.csv"), "--join", "Metadata_Plate",
                         "Metadata_Well")
    assert code == 1, text
    assert f"{csv}:3: no FileName_OrigER (channel ER)" in text
    assert f"{csv}:6: no row of {s3}/workspace/metadata/platemap.csv with Metadata_Plate={PLATE}, Metadata_Well=B07" in text
    index = pd.read_csv(root / "inputs/metadata/index.csv", dtype=str)
    assert len(index) == 4 and "wrote" in text
    rejected = [json.loads(line) for line in (root / "inputs/metadata/index-rejected.jsonl").read_text().splitlines()]
    assert [r["item"] for r in rejected] == [f"{csv}:3", f"{csv}:6"]
    code, text = run_cli("--root", str(root), "--config", "gallery.json", "import-loaddata", str(csv))
    assert code == 2 and "--overwrite" in text
    code, text = run_cli("--root", str(root), "--config", "gallery.json", "import-loaddata", str(csv), "--overwrite")
    assert code == 2 and "no column Treatment" in text and "--platemap" in text


def test_train_reads_its_shards_from_s3_as_from_local_files(s3, tmp_path):
    # TensorFlow has no S3 file system on this stack: shards are streamed through fsspec. Same seed,
    # same records in the same order: the same training, bit for bit.
    from tests.train_fixtures import synthetic_config, write_synthetic_export  # noqa: PLC0415

    local = tmp_path / "local"
    write_synthetic_export(local / "outputs/single-cells", {"training": (60, 60, 60), "validation": (10, 10, 10)})
    remote = StoragePath("s3://project/train")
    for path in (local / "outputs").rglob("*"):
        if path.is_file():
            (remote / str(path.relative_to(local))).write_bytes(path.read_bytes())
    data = synthetic_config(epochs=2, crop_generator="online_labels_cropgen")
    data["train"]["model"]["params"].update({"online_label_smoothing": 0.2, "online_lambda": 0.5})
    for root in (remote, StoragePath(str(local))):
        (root / "inputs/config/train.json").write_text(json.dumps(data))
        code, text = run_cli("--root", root.url, "--config", "train.json", "train", "--seed", "3")
        assert code == 0, text
    logs = [pd.read_csv(io.BytesIO((root / "outputs/results/logs/log.csv").read_bytes()))
            for root in (remote, StoragePath(str(local)))]
    pd.testing.assert_frame_equal(logs[0], logs[1])
    assert (remote / "outputs/results/checkpoint/checkpoint_0002.hdf5").exists()
    assert (remote / "outputs/results/logs/soft_labels/0002.parquet").exists()
    assert (remote / "outputs/results/summaries").glob("events.out.tfevents.*")  # uploaded from local staging


def test_public_buckets_read_without_credentials_and_refusals_are_one_clear_line(s3, tmp_path, monkeypatch):
    import boto3  # noqa: PLC0415

    csv = s3 / "workspace/load_data_csv" / BATCH / PLATE / "load_data_with_illum.csv"
    client = boto3.client("s3")
    client.create_bucket(Bucket="open-data")
    for path in (csv, s3 / "workspace/metadata/platemap.csv"):
        client.put_object(Bucket="open-data", Key=path.name, Body=path.read_bytes(), ACL="public-read")
    # No credentials anywhere: requests go unsigned, as `aws s3 --no-sign-request` sends them.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    root = tmp_path / "project"
    project_files(StoragePath(str(root)))
    common = ("--root", str(root), "--config", "gallery.json", "import-loaddata")
    code, text = run_cli(*common, "s3://open-data/load_data_with_illum.csv", "--platemap",
                         "s3://open-data/platemap.csv", "--join", "Metadata_Plate", "Metadata_Well")
    assert code == 0, text
    assert len(pd.read_csv(root / "inputs/metadata/index.csv")) == len(SITES)

    started = time.perf_counter()
    private = f"{GALLERY}/workspace/load_data_csv/{BATCH}/{PLATE}/load_data_with_illum.csv"
    code, text = run_cli(*common, private, "--overwrite")
    assert code == 2 and text.splitlines() == [f"dpbeam import-loaddata: error: {private}: access denied (Forbidden)"]
    code, text = run_cli("--root", "s3://no-such-bucket/screen", "--config", "gallery.json", "validate")
    assert code == 2 and len(text.splitlines()) == 1
    assert "s3://no-such-bucket/screen: the bucket s3://no-such-bucket does not exist" in text
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    code, text = run_cli("--root", "s3://project/screen", "--config", "gallery.json", "validate")
    assert code == 2 and len(text.splitlines()) == 1 and f"cannot reach S3 at 127.0.0.1:{closed}" in text, text
    assert time.perf_counter() - started < 30


def test_locate_reads_a_gallery_plate_ahead_and_a_missing_image_fails_only_its_site(s3, monkeypatch):
    """locate on images in a bucket: sites are read ahead of the one being segmented, each site's locations
    are those of its own image, and an image that is not there fails its site alone."""
    from dpcore.segmentation import NucleusFinder, find_nuclei

    root = StoragePath("s3://project/located")
    project_files(root)
    (root / "inputs/locations").remove(recursive=True)  # a screen without locations
    common = ("--root", root.url, "--config", "gallery.json")
    code, text = run_cli(*common, "import-loaddata",
                         f"{GALLERY}/workspace/load_data_csv/{BATCH}/{PLATE}/load_data_with_illum.csv",
                         "--platemap", f"{GALLERY}/workspace/metadata/platemap.csv",
                         "--join", "Metadata_Plate", "Metadata_Well")
    assert code == 0, text
    index_file = root / "inputs/metadata/index.csv"
    index = pd.read_csv(io.BytesIO(index_file.read_bytes()), dtype=str)
    missing = index.Metadata_Well.eq("A13") & index.Metadata_Site.eq("2")
    index.loc[missing, "DNA"] = index.loc[missing, "DNA"].str.replace(".tif", "-gone.tif", regex=False)
    index_file.write_text(index.to_csv(index=False))

    reads = ImageReads(monkeypatch)
    reads.command = "locate"
    code, text = run_cli(*common, "locate", "--direct_num_workers", "1")
    assert code == 1 and f"{PLATE}/A13-2" in text and "-gone.tif" in text, text
    assert 2 <= reads.most_sites_at_once("locate") <= 5, reads.reads
    # Each site's nuclei are found in its own DNA image (the Gallery's file, read here from the local copy).
    for _, row in index[~missing].iterrows():
        image = tifffile.imread(s3 / "images" / BATCH / "images" / PLATE / row.DNA.rsplit("/", 1)[1])
        expected = find_nuclei(image.astype(np.float32), NucleusFinder()).centres
        located = pd.read_csv(io.BytesIO((root / f"inputs/locations/{PLATE}/{row.Metadata_Well}-"
                                                 f"{row.Metadata_Site}-Nuclei.csv").read_bytes()))
        np.testing.assert_allclose(located[["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]].to_numpy(),
                                   expected, atol=5e-4)
    assert not (root / f"inputs/locations/{PLATE}/A13-2-Nuclei.csv").exists()
