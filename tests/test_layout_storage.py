"""Project layout, path safety and the storage abstraction."""

from __future__ import annotations

import os

import pytest

from dpcore.layout import ProjectLayout, UnsafePathError, resolve_inside
from dpcore.storage import StoragePath


def test_default_layout_matches_deepprofiler(tmp_path):
    layout = ProjectLayout.create(tmp_path, experiment="exp1", single_cells="sc")
    root = str(tmp_path)
    assert str(layout.images_dir) == f"{root}/inputs/images"
    assert str(layout.index_file) == f"{root}/inputs/metadata/index.csv"
    assert str(layout.intensities_file("P1")) == f"{root}/outputs/intensities/P1/P1.npz"
    assert str(layout.compressed_image_file("P1", "w1/a_b.tif")) == f"{root}/outputs/compressed/images/P1/a_b.png"
    assert str(layout.locations_file("P1", "A01", "3")) == f"{root}/inputs/locations/P1/A01-3-Nuclei.csv"
    assert str(layout.single_cells_dir) == f"{root}/outputs/sc"
    assert str(layout.checkpoint_dir) == f"{root}/outputs/exp1/checkpoint"
    assert str(layout.features_dir) == f"{root}/outputs/exp1/features"
    assert str(layout.split_index_file(7)) == f"{root}/inputs/metadata/index-007.csv"


def test_gs_root_keeps_its_scheme():
    layout = ProjectLayout.create("gs://bucket/project/", experiment="e")
    assert str(layout.images_dir) == "gs://bucket/project/inputs/images"
    assert str(layout.image_file("w1/x.tif")) == "gs://bucket/project/inputs/images/w1/x.tif"
    assert str(layout.checkpoint_dir) == "gs://bucket/project/outputs/e/checkpoint"
    assert not layout.root.is_local


def test_paths_overrides_are_honoured(tmp_path):
    layout = ProjectLayout.create(tmp_path, overrides={"images": "/data/raw", "locations": "segmentation/nuclei",
                                                       "checkpoints": "gs://b/ckpt"})
    assert str(layout.images_dir) == "/data/raw"
    assert str(layout.locations_dir) == f"{tmp_path}/segmentation/nuclei"
    assert str(layout.checkpoint_dir) == "gs://b/ckpt"


def test_metadata_option_and_config_name_resolution(tmp_path):
    layout = ProjectLayout.create(tmp_path, metadata_file="other.csv")
    assert str(layout.index_file) == f"{tmp_path}/inputs/metadata/other.csv"
    assert str(layout.config_file("x.json")) == f"{tmp_path}/inputs/config/x.json"
    assert str(layout.config_file("gs://b/c.json")) == "gs://b/c.json"
    assert str(layout.config_file("/abs/c.json")) == "/abs/c.json"


@pytest.mark.parametrize("relative", ["../secret.tif", "w1/../../x.tif", "/etc/passwd", "file:///etc/passwd", ""])
def test_paths_escaping_the_images_folder_are_refused(tmp_path, relative):
    layout = ProjectLayout.create(tmp_path)
    with pytest.raises(UnsafePathError):
        layout.image_file(relative)


def test_object_store_urls_name_images_where_they_lie(tmp_path):
    # The Cell Painting Gallery's images are read in place (issue #14); outputs stay under ROOT.
    layout = ProjectLayout.create(tmp_path)
    url = "s3://cellpainting-gallery/cpg0016-jump/source_4/images/B1/images/P1/r01c01f01p01-ch1sk1fk1fl1.tiff"
    assert str(layout.image_file(url)) == url
    assert str(layout.image_file("gs://other/x.tif")) == "gs://other/x.tif"


def test_absolute_paths_inside_root_are_accepted(tmp_path):
    layout = ProjectLayout.create(tmp_path)
    inside = f"{tmp_path}/inputs/images/w1/a.tif"
    assert str(layout.image_file(inside)) == inside
    assert str(resolve_inside(layout.images_dir, "w1/./b.tif")) == f"{tmp_path}/inputs/images/w1/b.tif"


@pytest.mark.parametrize("bad", ["", "a/b", "..", "."])
def test_experiment_names_must_be_plain(tmp_path, bad):
    with pytest.raises(ValueError, match="--exp"):
        ProjectLayout.create(tmp_path, experiment=bad)


def test_storage_path_joins_without_string_concatenation():
    base = StoragePath("gs://bucket//a/")
    assert str(base / "b" / "c.txt") == "gs://bucket/a/b/c.txt"
    assert (base / "b").parent == StoragePath("gs://bucket/a")
    assert StoragePath("gs://bucket/a/b.tif").with_suffix(".png").name == "b.png"
    with pytest.raises(ValueError):
        base / "/etc"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = StoragePath(str(tmp_path / "out" / "file.bin"))
    with pytest.raises(RuntimeError):
        with target.atomic_writer() as handle:
            handle.write(b"partial")
            raise RuntimeError("crash in the middle")
    assert not target.exists()
    assert os.listdir(tmp_path / "out") == []
    target.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert os.listdir(tmp_path / "out") == ["file.bin"]


def test_stale_temporaries_are_removed_and_real_files_kept(tmp_path):
    from dpcore.storage import remove_stale_temporaries

    (tmp_path / "a").mkdir()
    (tmp_path / "a/.x.png.1234abcd.tmp").write_bytes(b"partial")
    (tmp_path / "a/x.png").write_bytes(b"complete")
    (tmp_path / "a/.hidden").write_bytes(b"not ours")
    assert remove_stale_temporaries(StoragePath(str(tmp_path))) == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".hidden", "x.png"]
