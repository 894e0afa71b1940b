"""Cutting and normalising single-cell crops in one compiled pass (numba): what export-sc and profile run.

``dpcore.crops`` holds the reference: ``crop_and_resize`` (``tf.image.crop_and_resize``'s bilinear
sampling, tested sample by sample and against TensorFlow) and ``normalise_crops``, in numpy. This kernel
computes the same float32 operations in the same order, so its crops equal the reference's bit for bit
(tests/test_crops.py), but per crop and in cache:

- the box's rows are interpolated along x once each (a source row serves ~2 output rows), then every
  output row is one interpolation along y over all its columns and channels, a loop the compiler
  vectorises;
- each channel's minimum and maximum are taken while the crop is written, and it is normalised while it
  is still in the core's cache.

numpy needs several passes over the whole site's crops in memory (22 MB for a site of 67 cells at 128 px):
on 2026-12-02, 67 cells of a 696x520x5 site took ~9.6 ms here, against ~27 ms for TensorFlow's
``crop_and_resize`` plus normalisation (what profile ran before) and more for numpy (what export-sc
ran). It runs outside the GIL, so several worker threads cut at once.

Compiled on first use per image type (uint8, uint16, float32; ~2 s each) and cached on disk by numba
(``__pycache__`` beside this file, or numba's user cache folder when that is read-only), so later
processes load it in milliseconds.
"""

from __future__ import annotations

import logging
from typing import Callable

import numba
import numpy as np

logger = logging.getLogger(__name__)

# The image types the kernel is compiled for; others are converted to float32 first (the reference's type).
COMPILED_TYPES = (np.uint8, np.uint16, np.float32)


def compiled(function: Callable) -> Callable:
    """``function`` compiled by numba outside the GIL, cached on disk where numba finds a writable folder.

    With none (a read-only install and no writable home; ``NUMBA_CACHE_DIR`` sets one), numba refuses to
    cache at all; then every process compiles it again (~2 s) rather than failing.
    """
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError as error:
        logger.warning("numba cannot cache %s (%s): it is compiled again in each process; set NUMBA_CACHE_DIR to "
                       "a writable folder to avoid that", function.__name__, error)
        return numba.njit(nogil=True)(function)


@compiled
def _positions(start, end, extent, crop_size):  # pragma: no cover -- compiled; tested through cut_and_normalise
    """Sample positions of one box side, in pixels, as tf.image.crop_and_resize computes them (float32)."""
    f32 = np.float32
    positions = np.empty(crop_size, np.float32)
    if crop_size == 1:
        positions[0] = f32(0.5) * (start + end) * f32(extent - 1)
        return positions
    scale = (end - start) * f32(extent - 1) / f32(crop_size - 1)
    for i in range(crop_size):
        positions[i] = start * f32(extent - 1) + f32(i) * scale
    return positions


@compiled
def _cut(image, boxes, crop_size, labels, ids, masked, check_finite, epsilon, as_bytes, out, out_bytes,
         finite):  # pragma: no cover
    """Fill ``out[n]`` with box n's normalised crop, or with ``as_bytes`` ``out_bytes[n]`` with it quantised
    (``out`` then holds one crop: the cell being cut); ``finite[n]`` False for a crop holding NaN or inf
    (left unnormalised: the caller drops it)."""
    height, width, channels = image.shape
    f32 = np.float32
    row_length = crop_size * channels  # an output row: crop_size samples of every channel
    left = np.empty(row_length, np.int64)
    right = np.empty(row_length, np.int64)
    x_lerp = np.empty(row_length, np.float32)
    x_valid = np.empty(row_length, np.bool_)
    label_left = np.empty(crop_size, np.int64)
    label_right = np.empty(crop_size, np.int64)
    flat = image.reshape(height, width * channels)
    low = np.empty(row_length, np.float32)
    high = np.empty(row_length, np.float32)
    channel_low = np.empty(channels, np.float32)
    channel_high = np.empty(channels, np.float32)
    for n in range(boxes.shape[0]):
        ys = _positions(boxes[n, 0], boxes[n, 2], height, crop_size)
        xs = _positions(boxes[n, 1], boxes[n, 3], width, crop_size)
        for j in range(crop_size):
            x = xs[j]
            valid = x >= 0 and x <= width - 1
            floor_x = np.floor(x)
            first_x = int(floor_x) if valid else 0
            last_x = int(np.ceil(x)) if valid else 0
            label_left[j] = first_x
            label_right[j] = last_x
            for c in range(channels):
                k = j * channels + c
                x_valid[k] = valid
                left[k] = first_x * channels + c
                right[k] = last_x * channels + c
                x_lerp[k] = x - floor_x
        top_row, bottom_row = height, -1
        for i in range(crop_size):
            y = ys[i]
            if y >= 0 and y <= height - 1:
                top_row = min(top_row, int(np.floor(y)))
                bottom_row = max(bottom_row, int(np.ceil(y)))
        rows = max(bottom_row - top_row + 1, 1)
        # The box's source rows interpolated along x: upper/lower rows of tf's kernel, computed once each.
        along_x = np.zeros((rows, row_length), np.float32)
        labels_along_x = np.zeros((rows if masked else 1, crop_size), np.float32)
        for r in range(top_row, bottom_row + 1):
            source = flat[r]
            target = along_x[r - top_row]
            for k in range(row_length):
                if x_valid[k]:
                    a = f32(source[left[k]])
                    target[k] = a + (f32(source[right[k]]) - a) * x_lerp[k]
            if masked:
                for j in range(crop_size):
                    if x_valid[j * channels]:
                        a = labels[r, label_left[j]]
                        labels_along_x[r - top_row, j] = a + (labels[r, label_right[j]] - a) * x_lerp[j * channels]
        low[:] = np.inf
        high[:] = -np.inf
        crop = out[0 if as_bytes else n].reshape(crop_size, row_length)
        cell = ids[n] if masked else f32(0)
        for i in range(crop_size):
            y = ys[i]
            output = crop[i]
            if y >= 0 and y <= height - 1:
                floor_y = np.floor(y)
                upper = along_x[int(floor_y) - top_row]
                lower = along_x[int(np.ceil(y)) - top_row]
                y_lerp = y - floor_y
                for k in range(row_length):
                    output[k] = upper[k] + (lower[k] - upper[k]) * y_lerp
                if masked:
                    label_upper = labels_along_x[int(floor_y) - top_row]
                    label_lower = labels_along_x[int(np.ceil(y)) - top_row]
                    for j in range(crop_size):
                        label = label_upper[j] + (label_lower[j] - label_upper[j]) * y_lerp
                        keep = f32(1) if label == cell else f32(0)
                        for c in range(channels):
                            output[j * channels + c] *= keep
            else:  # rows outside the image are 0, masked or not
                output[:] = 0
            for k in range(row_length):
                low[k] = min(low[k], output[k])
                high[k] = max(high[k], output[k])
        ok = True
        if check_finite:
            for i in range(crop_size):
                for k in range(row_length):
                    if not np.isfinite(crop[i, k]):
                        ok = False
        finite[n] = ok
        if not ok:
            continue
        channel_low[:] = np.inf
        channel_high[:] = -np.inf
        for k in range(row_length):
            c = k % channels
            channel_low[c] = min(channel_low[c], low[k])
            channel_high[c] = max(channel_high[c], high[k])
        for k in range(row_length):
            c = k % channels
            low[k] = channel_low[c]
            high[k] = channel_high[c] - channel_low[c] + epsilon
        if as_bytes:
            # dpcore.crops.quantise's float32 operations on the normalised value, before it leaves the cache.
            quantised = out_bytes[n].reshape(crop_size, row_length)
            for i in range(crop_size):
                output = crop[i]
                target = quantised[i]
                for k in range(row_length):
                    value = (output[k] - low[k]) / high[k]
                    target[k] = np.uint8(np.rint(min(max(value, f32(0)), f32(1)) * f32(255)))
        else:
            for i in range(crop_size):
                output = crop[i]
                for k in range(row_length):
                    output[k] = (output[k] - low[k]) / high[k]


def cut_and_normalise(image: np.ndarray, boxes: np.ndarray, crop_size: int, epsilon: float,
                      labels: np.ndarray | None = None, ids: np.ndarray | None = None, as_bytes: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(crops (N, crop_size, crop_size, C) float32, finite (N,) bool) of an ``(H, W, C)`` image's boxes.

    ``boxes`` are normalised ``[y1, x1, y2, x2]`` rows (``dpcore.crops.cell_boxes``); with ``labels``
    (an (H, W) object label image) and ``ids`` (each box's object id), pixels of other objects become 0
    before normalisation. Crops whose ``finite`` is False hold NaN or inf and are not normalised.
    ``as_bytes`` returns them as ``dpcore.crops.quantise`` would (uint8), equal byte for byte, each crop
    quantised while it is in the cache: ``quantise``'s passes over a site's float crops took 4 ms beside
    the kernel's 10.6 (70 cells of 128 px, 2026-12-03), and export-sc's shards of the 24-plate replica
    took 10.9 s to write on one worker instead of 14.8.
    """
    if image.dtype not in COMPILED_TYPES:
        image = image.astype(np.float32)
    image = np.ascontiguousarray(image)
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    shape = (len(boxes), crop_size, crop_size, image.shape[2])
    # Both buffers are always passed (one of them a placeholder) so numba compiles one kernel per image type.
    out = np.empty((1, *shape[1:]) if as_bytes else shape, np.float32)
    out_bytes = np.empty(shape if as_bytes else (1, 1, 1, 1), np.uint8)
    finite = np.ones(len(boxes), np.bool_)
    masked = labels is not None
    label_image = np.ascontiguousarray(labels, dtype=np.float32) if masked else np.zeros((1, 1), np.float32)
    cell_ids = np.asarray(ids, dtype=np.float32) if masked else np.zeros(len(boxes), np.float32)
    if len(boxes):
        _cut(image, boxes, crop_size, label_image, cell_ids, masked, image.dtype.kind == "f",
             np.float32(epsilon), as_bytes, out, out_bytes, finite)
    return (out_bytes if as_bytes else out), finite


def load_kernel(image_type: type = np.uint8) -> None:
    """Load (or, on the first run after an install, compile: ~2 s) the kernel for ``image_type`` now.

    ``dpcore.single_cells.warm_up_cutting`` runs this, and numba's import, in a background thread."""
    cut_and_normalise(np.zeros((2, 2, 1), image_type), np.array([[0.0, 0.0, 1.0, 1.0]]), 2, 1e-6)
