"""Reading one site's channel images as an ``(H, W, C)`` stack.

The same reader serves prepare (raw images), export-sc and profile (the
compressed PNGs when ``prepare.compression.implement`` is true, DeepProfiler's
rule, the originals otherwise). Channel order is the config's.
"""

from __future__ import annotations

import numpy as np

from dpcore.compression import output_shape
from dpcore.config import Config
from dpcore.images import read_image
from dpcore.layout import ProjectLayout
from dpcore.metadata import Site
from dpcore.storage import StoragePath


def raw_image_paths(layout: ProjectLayout, site: Site) -> list[StoragePath]:
    return [layout.image_file(relative) for relative in site.channel_files]


def compressed_image_paths(layout: ProjectLayout, site: Site) -> list[StoragePath]:
    return [layout.compressed_image_file(site.plate, relative) for relative in site.channel_files]


def read_stack(paths: list[StoragePath], expected_shape: tuple[int, int]) -> np.ndarray:
    """Read and stack channel images; raises ImageReadError naming the file."""
    return np.stack([read_image(path, expected_shape) for path in paths], axis=-1)


def read_site_for_analysis(layout: ProjectLayout, site: Site, config: Config) -> np.ndarray:
    """The images later commands work on: compressed PNGs or the originals."""
    images = config.dataset.images
    raw_shape = (images.height, images.width)
    if config.prepare.compression.implement:
        shape = output_shape(raw_shape, config.prepare.compression.scaling_factor)
        return read_stack(compressed_image_paths(layout, site), shape)
    return read_stack(raw_image_paths(layout, site), raw_shape)
