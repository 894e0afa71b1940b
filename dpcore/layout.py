"""DeepProfiler's project folder layout, local or in a bucket.

::

    ROOT/inputs/config/            JSON configs
    ROOT/inputs/images/            raw images (paths in the index are relative to here)
    ROOT/inputs/metadata/          index.csv (and split parts index-000.csv ...)
    ROOT/inputs/locations/         <plate>/<well>-<site>-Nuclei.csv
    ROOT/inputs/outlines/          cell outlines for mask_objects
    ROOT/inputs/pretrained/        local pretrained weights (ImageNet) -- never downloaded
    ROOT/outputs/intensities/      <plate>/<plate>.npz illumination statistics
    ROOT/outputs/compressed/images/<plate>/<image>.png
    ROOT/outputs/<single-cells>/   exported crops (TFRecord shards, index)
    ROOT/outputs/<exp>/checkpoint|logs|summaries|features

A config's ``paths`` section may override any folder, as in DeepProfiler;
relative overrides are taken relative to ROOT.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Mapping

from dpcore.storage import StoragePath, as_storage_path

logger = logging.getLogger(__name__)

LOCATIONS_SUFFIX = "-Nuclei.csv"


class UnsafePathError(ValueError):
    """A path from the index would leave the folder it must stay in."""


@dataclass(frozen=True)
class ProjectLayout:
    root: StoragePath
    experiment: str = "results"
    single_cells: str = "single-cells"
    metadata_file: str = "index.csv"
    overrides: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: "StoragePath | str", experiment: str = "results", single_cells: str = "single-cells",
               metadata_file: str = "index.csv", overrides: Mapping[str, str] | None = None) -> "ProjectLayout":
        for label, value in (("--exp", experiment), ("--single-cells", single_cells)):
            if not value or "/" in value or value in (".", ".."):
                raise ValueError(f"{label} must be a plain folder name, got {value!r}")
        return cls(root=as_storage_path(root), experiment=experiment, single_cells=single_cells,
                   metadata_file=metadata_file, overrides=dict(overrides or {}))

    def _folder(self, key: str, default: StoragePath) -> StoragePath:
        override = self.overrides.get(key)
        if override is None:
            return default
        if "://" in override or override.startswith("/"):
            return as_storage_path(override)
        return self.root.joinpath(*posixpath.normpath(override).split("/"))

    # ----------------------------------------------------------------- inputs
    @property
    def inputs(self) -> StoragePath:
        return self.root / "inputs"

    @property
    def config_dir(self) -> StoragePath:
        return self._folder("config", self.inputs / "config")

    @property
    def images_dir(self) -> StoragePath:
        return self._folder("images", self.inputs / "images")

    @property
    def metadata_dir(self) -> StoragePath:
        return self._folder("metadata", self.inputs / "metadata")

    @property
    def locations_dir(self) -> StoragePath:
        return self._folder("locations", self.inputs / "locations")

    @property
    def outlines_dir(self) -> StoragePath:
        return self._folder("outlines", self.inputs / "outlines")

    @property
    def pretrained_dir(self) -> StoragePath:
        return self._folder("pretrained", self.inputs / "pretrained")

    @property
    def index_file(self) -> StoragePath:
        """The index named by ``--metadata`` (a file in the metadata folder, or a path/URI)."""
        if "index" in self.overrides and self.metadata_file == "index.csv":
            return self._folder("index", self.metadata_dir / "index.csv")
        if "://" in self.metadata_file or self.metadata_file.startswith("/"):
            return as_storage_path(self.metadata_file)
        return self.metadata_dir.joinpath(*self.metadata_file.split("/"))

    # ---------------------------------------------------------------- outputs
    @property
    def outputs(self) -> StoragePath:
        return self.root / "outputs"

    @property
    def intensities_dir(self) -> StoragePath:
        return self._folder("intensities", self.outputs / "intensities")

    @property
    def prepare_failures_file(self) -> StoragePath:
        """prepare's dead letters; export-sc and profile point at it when a compressed PNG is missing."""
        return self.intensities_dir / "_failed" / "prepare-failures.jsonl"

    @property
    def compressed_images_dir(self) -> StoragePath:
        return self._folder("compressed_images", self.outputs / "compressed" / "images")

    @property
    def single_cells_dir(self) -> StoragePath:
        return self._folder("single_cell_set", self.outputs / self.single_cells)

    @property
    def experiment_dir(self) -> StoragePath:
        return self._folder("results", self.outputs / self.experiment)

    @property
    def checkpoint_dir(self) -> StoragePath:
        return self._folder("checkpoints", self.experiment_dir / "checkpoint")

    @property
    def logs_dir(self) -> StoragePath:
        return self._folder("logs", self.experiment_dir / "logs")

    @property
    def summaries_dir(self) -> StoragePath:
        return self._folder("summaries", self.experiment_dir / "summaries")

    @property
    def features_dir(self) -> StoragePath:
        return self._folder("features", self.experiment_dir / "features")

    def setup_folders(self) -> list[StoragePath]:
        """Every folder ``dpbeam setup`` creates, in a stable order."""
        return [
            self.config_dir, self.images_dir, self.metadata_dir, self.locations_dir, self.outlines_dir,
            self.pretrained_dir, self.intensities_dir, self.compressed_images_dir, self.single_cells_dir,
            self.checkpoint_dir, self.logs_dir, self.summaries_dir, self.features_dir,
        ]

    # ------------------------------------------------------------------ files
    def config_file(self, name: str) -> StoragePath:
        """``--config``: a name inside inputs/config, or a full path/URI."""
        if "://" in name or name.startswith("/"):
            return as_storage_path(name)
        local = as_storage_path(name)
        if local.is_local and "/" in name and local.is_file():
            return local  # a relative path from the working folder, e.g. configs/x.json
        return self.config_dir.joinpath(*name.split("/"))

    def image_file(self, relative: str) -> StoragePath:
        """An image named in the index.

        Paths in the index are relative to ``inputs/images`` (DeepProfiler's rule); an absolute local
        path is accepted only inside ROOT and anything escaping (``../``) is refused. A full object-store
        URL (``s3://...``, ``gs://...``) names an image where it lies, e.g. in the Cell Painting Gallery:
        it is only ever read, and outputs still go under ROOT.
        """
        return remote_url(relative) or resolve_inside(self.images_dir, relative, self.root)

    def locations_file(self, plate: str, well: str, site: str) -> StoragePath:
        return resolve_inside(self.locations_dir, f"{plate}/{well}-{site}{LOCATIONS_SUFFIX}", self.root)

    def intensities_file(self, plate: str) -> StoragePath:
        return resolve_inside(self.intensities_dir, f"{plate}/{plate}.npz", self.root)

    def compressed_image_file(self, plate: str, original_relative: str) -> StoragePath:
        """DeepProfiler's name: the original file name with its extension replaced by ``png``."""
        base = posixpath.basename(original_relative)
        stem, _ = posixpath.splitext(base)
        return resolve_inside(self.compressed_images_dir, f"{plate}/{stem}.png", self.root)

    def split_index_file(self, part: int) -> StoragePath:
        stem, ext = posixpath.splitext(self.index_file.name)
        return self.index_file.parent / f"{stem}-{part:03d}{ext or '.csv'}"


def remote_url(text: str) -> StoragePath | None:
    """``text`` as a path in an object store when it is a URL of one (``s3://``, ``gs://``), else None."""
    if not isinstance(text, str) or "://" not in text:
        return None
    path = as_storage_path(text.strip())
    return None if path.is_local else path


def resolve_inside(folder: StoragePath, relative: str, root: StoragePath | None = None) -> StoragePath:
    """Join ``relative`` onto ``folder``, refusing anything that escapes it.

    Absolute paths (or URIs) are accepted only when they lie inside ``root``.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise UnsafePathError(f"empty path (inside {folder})")
    text = relative.strip().replace("\\", "/")
    if "://" in text or text.startswith("/"):
        candidate = as_storage_path(text)
        allowed = root if root is not None else folder
        if not candidate.is_relative_to(allowed):
            raise UnsafePathError(f"{relative!r} is outside the project root {allowed}")
        return candidate
    normalised = posixpath.normpath(text)
    if normalised == ".." or normalised.startswith("../"):
        raise UnsafePathError(f"{relative!r} escapes {folder}")
    return folder.joinpath(*normalised.split("/"))
