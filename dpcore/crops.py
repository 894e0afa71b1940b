"""Single-cell crops, exactly as DeepProfiler cuts them.

DeepProfiler builds boxes of ``box_size`` around each nucleus centre, normalises
them by the image size and cuts them with ``tf.image.crop_and_resize``
(bilinear, zero outside the image). :func:`crop_and_resize` reproduces that op
in numpy (same sampling grid, same interpolation, same extrapolation); tests
compare it with TF itself. Crops are then min-max normalised per crop and per
channel (:func:`normalise_crops`). These two are the reference; export-sc and
profile cut with :func:`cut_crops`, which runs the same arithmetic compiled
(``dpcore.crop_kernel``) and gives the same bits (tests/test_crops.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

NORMALISATION_EPSILON = 1e-6


@dataclass(frozen=True)
class CropBatch:
    """The crops of one site that survived, and what was skipped."""

    crops: np.ndarray          # (N, box, box, C) float32 in [0, 1], or uint8 (cut with as_bytes)
    kept: np.ndarray           # (N,) indices into the site's locations
    outside: int = 0           # boxes wholly outside the image
    invalid: int = 0           # crops containing NaN


def cell_boxes(centres: np.ndarray, box_size: float, image_shape: tuple[int, int],
               original_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Normalised ``[y1, x1, y2, x2]`` boxes of ``box_size`` pixels (of the image read) around centres.

    ``centres`` are (x, y) in the coordinates of the original image; when the
    image read has another size (compression ``scaling_factor``), the centres
    are scaled to it. Boxes are normalised by the real size of the image read,
    which avoids DeepProfiler's issue #355 (crops silently wrong when the
    configured size differed from the real one).
    """
    height, width = image_shape
    original = original_shape or image_shape
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    x = centres[:, 0] * (width / original[1])
    y = centres[:, 1] * (height / original[0])
    half = box_size / 2.0
    boxes = np.stack([y - half, x - half, y + half, x + half], axis=1)
    boxes[:, [0, 2]] /= height
    boxes[:, [1, 3]] /= width
    return boxes


def full_image_centres(height: int, width: int, view_size: int) -> np.ndarray:
    """DeepProfiler's full-image grid: ceil(size / view) evenly spread tile centres per axis."""
    if view_size > height or view_size > width:
        raise ValueError(f"view_size {view_size} exceeds the image ({width}x{height})")
    if view_size == width:
        return np.array([[width / 2, height / 2]])
    xs = np.linspace(view_size / 2, width - view_size / 2, int(np.ceil(width / view_size)))
    ys = np.linspace(view_size / 2, height - view_size / 2, int(np.ceil(height / view_size)))
    return np.array([[x, y] for x in xs for y in ys])


def boxes_outside(boxes: np.ndarray) -> np.ndarray:
    """True for boxes that do not overlap the image at all."""
    return (boxes[:, 2] < 0) | (boxes[:, 0] > 1) | (boxes[:, 3] < 0) | (boxes[:, 1] > 1)


def crop_and_resize(image: np.ndarray, boxes: np.ndarray, crop_size: int,
                    extrapolation_value: float = 0.0) -> np.ndarray:
    """``tf.image.crop_and_resize`` for one ``(H, W, C)`` image, bilinear.

    Sample ``i`` of a box spans ``y1*(H-1) .. y2*(H-1)`` in ``crop_size`` steps;
    rows or columns falling outside ``[0, H-1]`` take ``extrapolation_value``.
    Computed in float32 like TensorFlow's kernel.
    """
    image = np.asarray(image, dtype=np.float32)
    height, width, channels = image.shape
    boxes = np.asarray(boxes, dtype=np.float32)
    steps = np.arange(crop_size, dtype=np.float32)
    out = np.full((len(boxes), crop_size, crop_size, channels), extrapolation_value, dtype=np.float32)
    for n, (y1, x1, y2, x2) in enumerate(boxes):
        ys = _sample_positions(y1, y2, height, crop_size, steps)
        xs = _sample_positions(x1, x2, width, crop_size, steps)
        valid_y = (ys >= 0) & (ys <= height - 1)
        valid_x = (xs >= 0) & (xs <= width - 1)
        if not valid_y.any() or not valid_x.any():
            continue
        ys_v, xs_v = ys[valid_y], xs[valid_x]
        top = np.floor(ys_v).astype(np.intp)
        bottom = np.ceil(ys_v).astype(np.intp)
        left = np.floor(xs_v).astype(np.intp)
        right = np.ceil(xs_v).astype(np.intp)
        y_lerp = (ys_v - top).astype(np.float32)[:, None, None]
        x_lerp = (xs_v - left).astype(np.float32)[None, :, None]
        # Gather rows first, then columns, from the box's own window of the image: the same
        # arithmetic as TF's kernel (so the same bits), ~2x faster than one 2-D fancy index.
        window = image[top[0]:bottom[-1] + 1, left[0]:right[-1] + 1]
        upper_rows, lower_rows = window[top - top[0]], window[bottom - top[0]]
        left, right = left - left[0], right - left[0]
        top_left, bottom_left = upper_rows[:, left], lower_rows[:, left]
        upper = top_left + (upper_rows[:, right] - top_left) * x_lerp
        lower = bottom_left + (lower_rows[:, right] - bottom_left) * x_lerp
        if valid_y.all() and valid_x.all():
            out[n] = upper + (lower - upper) * y_lerp
        else:
            out[n][np.ix_(valid_y, valid_x)] = upper + (lower - upper) * y_lerp
    return out


def _sample_positions(start: np.float32, end: np.float32, size: int, crop_size: int,
                      steps: np.ndarray) -> np.ndarray:
    if crop_size > 1:
        scale = (end - start) * np.float32(size - 1) / np.float32(crop_size - 1)
        return start * np.float32(size - 1) + steps * scale
    return np.full(1, 0.5 * (start + end) * np.float32(size - 1), dtype=np.float32)


def normalise_crops(crops: np.ndarray) -> np.ndarray:
    """Per crop and per channel: ``(x - min) / (max - min + eps)``, in [0, 1]."""
    count, height, width, channels = crops.shape
    # Reducing over (H, W) with 5 channels innermost is a strided loop numpy runs ~4x slower
    # than reducing contiguous planes; one transposed copy pays for itself. Same values.
    planes = np.ascontiguousarray(crops.reshape(count, height * width, channels).transpose(0, 2, 1))
    low = planes.min(axis=2)[:, None, None, :]
    high = planes.max(axis=2)[:, None, None, :]
    normalised = np.subtract(crops, low, dtype=np.float32)
    np.divide(normalised, high - low + np.float32(NORMALISATION_EPSILON), out=normalised)
    return normalised


def object_ids(labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """DeepProfiler's object id of each cell: the median label in a 10x10 patch at its centre."""
    ids = np.zeros(len(centres), dtype=np.int64)
    for n, (x, y) in enumerate(np.asarray(centres)):
        patch = labels[max(int(y) - 5, 0):int(y) + 5, max(int(x) - 5, 0):int(x) + 5]
        if patch.size:
            ids[n] = int(np.median(patch))
    return ids


def cut_crops(image: np.ndarray, boxes: np.ndarray, box_size: int, labels: np.ndarray | None = None,
              ids: np.ndarray | None = None, as_bytes: bool = False) -> CropBatch:
    """Crop, drop what DeepProfiler could not use, normalise. ``image`` is ``(H, W, C)``, of any numeric type.

    With an outline label image (``labels``, same size) and each cell's object id, every crop
    keeps only its own object's pixels (``mask_objects``): the label image is cropped with the
    same box and pixels whose label differs from the cell's id become 0 before normalisation.
    The compiled kernel (``dpcore.crop_kernel``); :func:`cut_crops_reference` is the same in numpy.
    ``as_bytes``: the crops :func:`quantise`\ d (uint8, what export-sc writes), in the same pass.
    """
    from dpcore.crop_kernel import cut_and_normalise  # noqa: PLC0415 -- numba loads where cells are cut

    outside = boxes_outside(boxes)
    inside = np.flatnonzero(~outside)
    crops, finite = cut_and_normalise(image, boxes[inside], box_size, NORMALISATION_EPSILON, labels,
                                      ids[inside] if labels is not None else None, as_bytes=as_bytes)
    if not finite.all():
        crops = crops[finite]
    return CropBatch(crops=crops, kept=inside[finite], outside=int(outside.sum()), invalid=int((~finite).sum()))


def cut_crops_reference(image: np.ndarray, boxes: np.ndarray, box_size: int, labels: np.ndarray | None = None,
                        ids: np.ndarray | None = None) -> CropBatch:
    """:func:`cut_crops` in numpy: :func:`crop_and_resize`, the mask, :func:`normalise_crops`."""
    outside = boxes_outside(boxes)
    inside = np.flatnonzero(~outside)
    crops = crop_and_resize(image, boxes[inside], box_size) if inside.size else np.zeros(
        (0, box_size, box_size, image.shape[-1]), np.float32)
    if labels is not None and inside.size:
        cropped_labels = crop_and_resize(labels[:, :, None].astype(np.float32), boxes[inside], box_size)
        crops = crops * (cropped_labels == ids[inside, None, None, None].astype(np.float32))
    finite = np.isfinite(crops).all(axis=(1, 2, 3))
    crops = normalise_crops(crops[finite]) if finite.any() else crops[:0]
    return CropBatch(crops=crops, kept=inside[finite], outside=int(outside.sum()), invalid=int((~finite).sum()))


def quantise(crops: np.ndarray) -> np.ndarray:
    """Normalised crops as uint8 (x 255, rounded to nearest), DeepProfiler's PNG export precision."""
    return np.rint(np.clip(crops, 0.0, 1.0) * 255.0).astype(np.uint8)
