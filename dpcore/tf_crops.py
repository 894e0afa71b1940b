"""``dpcore.crops.cut_crops`` as one compiled TensorFlow function, for profile's workers.

Profile already runs TensorFlow on every worker, so it cuts cells with the op
DeepProfiler itself used (``tf.image.crop_and_resize``, one fused C++ kernel
for all boxes of a site) and normalises them in the same graph. Against the
numpy code this is ~2x less CPU per cell and runs outside the GIL, so another
thread's inference overlaps it. The numpy implementation stays the reference:
tests assert the two give the same crops (bit for bit on real images).

This module imports TensorFlow; ``dpcore.crops`` does not.
"""

from __future__ import annotations

import numpy as np

from dpcore.crops import NORMALISATION_EPSILON, CropBatch, boxes_outside
from dpcore.tensorflow_runtime import load_tensorflow

tf = load_tensorflow()

_COMPILED: dict[tuple[int, bool], object] = {}


def _compiled(box_size: int, masked: bool):
    """One traced function per crop size and masking; shapes of images and counts of boxes vary freely."""
    key = (box_size, masked)
    if key not in _COMPILED:
        def cut(image, boxes, labels, ids):
            indices = tf.zeros(tf.shape(boxes)[:1], tf.int32)
            crops = tf.image.crop_and_resize(image[None], boxes, indices, (box_size, box_size))
            if masked:
                cropped = tf.image.crop_and_resize(labels[None, :, :, None], boxes, indices, (box_size, box_size))
                crops = crops * tf.cast(tf.equal(cropped, ids[:, None, None, None]), tf.float32)
            finite = tf.reduce_all(tf.math.is_finite(crops), axis=(1, 2, 3))
            # Crops with NaN are normalised too and dropped by the caller, which rarely has any to drop:
            # a boolean_mask here copied every site's crops (~3 of ~30 ms a site of 67 cells, 1 thread).
            low = tf.reduce_min(crops, axis=(1, 2), keepdims=True)
            high = tf.reduce_max(crops, axis=(1, 2), keepdims=True)
            return (crops - low) / (high - low + NORMALISATION_EPSILON), finite

        _COMPILED[key] = tf.function(cut, input_signature=[
            tf.TensorSpec((None, None, None), tf.float32), tf.TensorSpec((None, 4), tf.float32),
            tf.TensorSpec((None, None), tf.float32), tf.TensorSpec((None,), tf.float32)])
    return _COMPILED[key]


def cut_crops(image: np.ndarray, boxes: np.ndarray, box_size: int, labels: np.ndarray | None = None,
              ids: np.ndarray | None = None) -> CropBatch:
    """Same contract and results as :func:`dpcore.crops.cut_crops`."""
    outside = boxes_outside(boxes)
    inside = np.flatnonzero(~outside)
    if not inside.size:
        return CropBatch(crops=np.zeros((0, box_size, box_size, image.shape[-1]), np.float32), kept=inside,
                         outside=int(outside.sum()), invalid=0)
    masked = labels is not None
    crops, finite = _compiled(box_size, masked)(
        tf.convert_to_tensor(image, tf.float32), tf.convert_to_tensor(boxes[inside], tf.float32),
        tf.convert_to_tensor(labels if masked else np.zeros((1, 1)), tf.float32),
        tf.convert_to_tensor(ids[inside] if masked else np.zeros(len(inside)), tf.float32))
    finite = finite.numpy()
    crops = crops.numpy() if finite.all() else crops.numpy()[finite]
    return CropBatch(crops=crops, kept=inside[finite], outside=int(outside.sum()), invalid=int((~finite).sum()))
