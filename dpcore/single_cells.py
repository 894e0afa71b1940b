"""From a site to its single-cell crops: the logic export-sc and profile share.

A :class:`CellSource` holds the config fields that decide which image is read
(compressed PNGs or originals), where the cells are (locations files, or
DeepProfiler's full-image grid) and how they are cut.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np

from dpcore.compression import output_shape
from dpcore.config import Config, ConfigError
from dpcore.crops import CropBatch, cell_boxes, cut_crops, full_image_centres
from dpcore.layout import ProjectLayout
from dpcore.locations import read_locations
from dpcore.metadata import Site
from dpcore.sites import compressed_image_paths, raw_image_paths, read_stack

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteCells:
    site: Site
    centres: np.ndarray      # (M, 2) x, y of every location, original pixels
    batch: CropBatch         # crops of the usable ones; batch.kept indexes centres


@dataclass(frozen=True)
class CellSource:
    layout: ProjectLayout
    channels: tuple[str, ...]
    width: int
    height: int
    box_size: int
    view_size: int
    mode: str
    use_compressed: bool
    scaling_factor: float

    @classmethod
    def from_config(cls, layout: ProjectLayout, config: Config) -> "CellSource":
        locations = config.dataset.locations
        if locations.mask_objects:
            raise ConfigError(config.source, [
                "dataset.locations.mask_objects is true, but masking cells with outlines is not supported "
                "by this version of dpbeam; set it to false (DeepProfiler's recommended value)"])
        return cls(layout=layout, channels=config.channels, width=config.dataset.images.width,
                   height=config.dataset.images.height, box_size=locations.box_size,
                   view_size=locations.effective_view_size, mode=locations.mode,
                   use_compressed=config.prepare.compression.implement,
                   scaling_factor=config.prepare.compression.scaling_factor)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the images read: compressed PNGs may be rescaled."""
        if self.use_compressed:
            return output_shape((self.height, self.width), self.scaling_factor)
        return self.height, self.width

    def read_image(self, site: Site) -> np.ndarray:
        paths = (compressed_image_paths if self.use_compressed else raw_image_paths)(self.layout, site)
        return read_stack(paths, self.image_shape)

    def centres(self, site: Site) -> np.ndarray:
        """Cell centres in original pixels; raises LocationsError/LocationsMissing."""
        if self.mode == "full_image":
            return full_image_centres(self.height, self.width, self.view_size)
        return read_locations(self.layout.locations_file(site.plate, site.well, site.site))

    def cut(self, site: Site, centres: np.ndarray | None = None) -> SiteCells:
        centres = self.centres(site) if centres is None else centres
        image = self.read_image(site)
        # Full-image tiles cover view_size pixels and are resized to box_size, as in DeepProfiler.
        extent = self.view_size if self.mode == "full_image" else self.box_size
        boxes = cell_boxes(centres, extent * self.image_shape[0] / self.height, self.image_shape,
                           (self.height, self.width))
        batch = cut_crops(image.astype(np.float32), boxes, self.box_size)
        return SiteCells(site=site, centres=centres, batch=batch)


def stable_fraction(key: str) -> float:
    """A deterministic pseudo-random number in [0, 1) for a key (same on every worker and run)."""
    return zlib.crc32(key.encode("utf-8")) / 2**32
