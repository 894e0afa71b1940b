"""Reading one site's channel images as an ``(H, W, C)`` stack.

The same reader serves prepare (raw images) and, through
:class:`dpcore.single_cells.CellSource`, export-sc and profile (the compressed
PNGs when ``prepare.compression.implement`` is true, the originals otherwise).
Channel order is the config's.
"""

from __future__ import annotations

import numpy as np

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
