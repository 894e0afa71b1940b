"""Illumination correction and 8-bit compression of channel images.

DeepProfiler's ``compression.py``, as the prepare issue defines it: divide by
the plate's illumination function, resize by ``scaling_factor``, clip to
[the image's own 0.05th percentile, min(its 99.95th percentile, the plate's
upper percentile)], stretch to 0..255 and save as PNG.
"""

from __future__ import annotations

import logging

import numpy as np
import skimage.transform

logger = logging.getLogger(__name__)

CLIP_LOW_PERCENTILE = 0.05
CLIP_HIGH_PERCENTILE = 99.95
CONTROL_BINS = 256


def output_shape(original_shape: tuple[int, int], scaling_factor: float) -> tuple[int, int]:
    """DeepProfiler's compressed size: ``int(factor * size)`` on each axis."""
    return int(scaling_factor * original_shape[0]), int(scaling_factor * original_shape[1])


def compress_channel(image: np.ndarray, illumination: np.ndarray, scaling_factor: float,
                     plate_upper_percentile: float) -> np.ndarray:
    """One corrected, resized, clipped and stretched channel as uint8."""
    corrected = image.astype(np.float64) / illumination
    target = output_shape(corrected.shape, scaling_factor)
    if target != corrected.shape:
        corrected = skimage.transform.resize(corrected, target, mode="reflect", anti_aliasing=True)
    low, high = np.percentile(corrected, (CLIP_LOW_PERCENTILE, CLIP_HIGH_PERCENTILE))
    high = min(high, plate_upper_percentile)
    if not high > low:
        # A flat image (or a plate ceiling below this image's floor): nothing to stretch.
        return np.zeros(target, dtype=np.uint8)
    stretched = (np.clip(corrected, low, high) - low) / (high - low)
    return np.rint(stretched * 255.0).astype(np.uint8)


def control_histogram(compressed: np.ndarray) -> np.ndarray:
    """256-bin histogram of one compressed (uint8) channel, as float64."""
    return np.bincount(compressed.ravel(), minlength=CONTROL_BINS).astype(np.float64)
