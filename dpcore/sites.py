"""Reading one site's channel images as an ``(H, W, C)`` stack.

The same reader serves prepare (raw images) and, through
:class:`dpcore.single_cells.CellSource`, export-sc and profile (the compressed
PNGs when ``prepare.compression.implement`` is true, the originals otherwise).
Channel order is the config's.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from dpcore.images import read_image
from dpcore.layout import ProjectLayout, UnsafePathError
from dpcore.metadata import Site
from dpcore.storage import StoragePath


def raw_image_paths(layout: ProjectLayout, site: Site) -> list[StoragePath]:
    return [layout.image_file(relative) for relative in site.channel_files]


def compressed_image_paths(layout: ProjectLayout, site: Site) -> list[StoragePath]:
    return [layout.compressed_image_file(site.plate, relative) for relative in site.channel_files]


def in_a_bucket(paths: Callable[[], list[StoragePath]]) -> bool:
    """Whether any of a site's images lies in an object store (so is worth reading ahead). Paths that
    cannot be resolved count as local: the read that follows, in turn, reports them."""
    try:
        return any(not path.is_local for path in paths())
    except UnsafePathError:
        return False


# An object store answers each request after tens of milliseconds: a site's channels in a bucket are
# fetched at once, by at most FETCH_THREADS threads per process (shared by all its workers); local files
# are read in turn.
FETCH_THREADS = 16
_fetchers: ThreadPoolExecutor | None = None
_fetchers_lock = threading.Lock()


def _fetch_pool() -> ThreadPoolExecutor:
    global _fetchers
    with _fetchers_lock:
        if _fetchers is None:
            _fetchers = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="dpbeam-fetch")
        return _fetchers


def read_images(paths: list[StoragePath], expected_shape: tuple[int, int] | None) -> list[np.ndarray]:
    """The channel images, concurrently when any lies in an object store; ImageReadError names the file."""
    if all(path.is_local for path in paths) or len(paths) < 2:
        return [read_image(path, expected_shape) for path in paths]
    return list(_fetch_pool().map(lambda path: read_image(path, expected_shape), paths))


def read_stack(paths: list[StoragePath], expected_shape: tuple[int, int]) -> np.ndarray:
    """Read and stack channel images; raises ImageReadError naming the file."""
    return np.stack(read_images(paths, expected_shape), axis=-1)
