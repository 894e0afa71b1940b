"""Plain numpy/scipy/scikit-image versions of DeepProfiler's formulas.

Written from the definitions in the prepare issue, independently of dpcore, so
tests compare the pipeline against a second computation rather than itself.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import skimage.exposure
import skimage.morphology
import skimage.transform
import skimage.util
import tifffile


def read_stack(paths) -> np.ndarray:
    return np.stack([tifffile.imread(p) for p in paths], axis=-1).astype(np.float64)


def median_filter(image: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """DeepProfiler's median filter (scikit-image's, i.e. scipy's with edges extended), straight from scipy."""
    return scipy.ndimage.median_filter(image, footprint=footprint, mode="nearest")


def plate_statistics(stacks: list[np.ndarray], bits: int, down_scale_factor: float, median_filter_size: int) -> dict:
    depth = 2 ** bits
    channels = stacks[0].shape[-1]
    histogram = np.zeros((channels, depth))
    mean_image = None
    for stack in stacks:
        for c in range(channels):
            histogram[c] += np.histogram(stack[:, :, c], bins=depth, range=(0, depth))[0]
        shape = (stack.shape[0] / down_scale_factor, stack.shape[1] / down_scale_factor)
        thumb = skimage.transform.resize(stack, shape, mode="reflect", anti_aliasing=True, preserve_range=True)
        mean_image = thumb if mean_image is None else mean_image + thumb
    mean_image = mean_image / len(stacks)
    bins = np.arange(depth, dtype=np.float64)
    probabilities = histogram / histogram.sum(axis=1, keepdims=True)
    cumulative = np.cumsum(probabilities, axis=1)
    lower = np.array([np.flatnonzero(cumulative[c] > 0.0001)[0] for c in range(channels)], dtype=np.float64)
    upper = np.array([np.flatnonzero(cumulative[c] > 0.9999)[0] for c in range(channels)], dtype=np.float64)
    footprint = skimage.morphology.disk(median_filter_size / 2)
    functions = []
    for c in range(channels):
        filtered = median_filter(mean_image[:, :, c].astype(np.uint16), footprint)
        full = skimage.transform.resize(filtered, stacks[0].shape[:2], mode="reflect", anti_aliasing=True,
                                        preserve_range=True)
        robust_minimum = np.percentile(full, 2)
        functions.append(np.maximum(full, robust_minimum) / robust_minimum)
    return {
        "histogram": histogram, "mean_image": mean_image, "lower_percentiles": lower, "upper_percentiles": upper,
        "mean_values": (probabilities * bins).sum(axis=1), "illum_correction_function": np.stack(functions, -1),
    }


def compress(image: np.ndarray, function: np.ndarray, scaling_factor: float, plate_upper: float) -> np.ndarray:
    corrected = image.astype(np.float64) / function
    shape = (int(scaling_factor * corrected.shape[0]), int(scaling_factor * corrected.shape[1]))
    corrected = skimage.transform.resize(corrected, shape, mode="reflect", anti_aliasing=True)
    low = np.percentile(corrected, 0.05)
    high = min(np.percentile(corrected, 99.95), plate_upper)
    clipped = np.clip(corrected, low, high)
    return skimage.util.img_as_ubyte(skimage.exposure.rescale_intensity(clipped, out_range=(0.0, 1.0)))


def resample_box(image: np.ndarray, box: tuple[float, float, float, float], size: int,
                 extrapolation: float = 0.0) -> np.ndarray:
    """``tf.image.crop_and_resize`` of one normalised ``(y1, x1, y2, x2)`` box, sample by sample.

    Sample k of n spans y1*(H-1) .. y2*(H-1) (one sample: the box's middle); samples outside
    [0, H-1] (or [0, W-1]) take ``extrapolation``; bilinear between the four neighbours.
    """
    height, width, channels = image.shape
    y1, x1, y2, x2 = box

    def position(start: float, end: float, extent: int, k: int) -> float:
        if size == 1:
            return 0.5 * (start + end) * (extent - 1)
        return start * (extent - 1) + k * (end - start) * (extent - 1) / (size - 1)

    out = np.full((size, size, channels), extrapolation, dtype=np.float64)
    for i in range(size):
        sy = position(y1, y2, height, i)
        if sy < 0 or sy > height - 1:
            continue
        y0, dy = int(np.floor(sy)), sy - np.floor(sy)
        y_next = min(y0 + 1, height - 1) if dy > 0 else y0
        for j in range(size):
            sx = position(x1, x2, width, j)
            if sx < 0 or sx > width - 1:
                continue
            x0, dx = int(np.floor(sx)), sx - np.floor(sx)
            x_next = min(x0 + 1, width - 1) if dx > 0 else x0
            top = image[y0, x0] * (1 - dx) + image[y0, x_next] * dx
            bottom = image[y_next, x0] * (1 - dx) + image[y_next, x_next] * dx
            out[i, j] = top * (1 - dy) + bottom * dy
    return out


def crop_cell(image: np.ndarray, x: float, y: float, box: int) -> np.ndarray:
    """One DeepProfiler crop from the definition: the box centre +- box/2, normalised by the image size,
    resampled (``resample_box``), then (x - min) / (max - min + 1e-6) per channel."""
    height, width, _ = image.shape
    out = resample_box(image.astype(np.float64), ((y - box / 2) / height, (x - box / 2) / width,
                                                  (y + box / 2) / height, (x + box / 2) / width), box)
    low = out.min(axis=(0, 1))
    high = out.max(axis=(0, 1))
    return (out - low) / (high - low + 1e-6)
