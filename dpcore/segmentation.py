"""Finding nuclei in a DNA-channel image: a classical, documented method (scikit-image).

The steps follow CellProfiler's ``IdentifyPrimaryObjects`` as Cell Painting pipelines configure it:

1. **Smooth** with a Gaussian of ``sigma`` px (default ``min_diameter / 3.5``, CellProfiler's
   automatic smoothing), so texture inside a nucleus does not fragment it.
2. **Threshold** the smoothed image globally: Otsu (``otsu``), minimum cross-entropy (``li``, the
   method of the JUMP CellProfiler pipelines), ``triangle`` or ``yen``; times ``threshold_correction``.
   Holes inside objects are filled.
3. **Split touching nuclei** (``split_touching``): a watershed of the smoothed intensity from its local
   maxima over-splits the foreground; neighbouring pieces are then merged unless their shared border is
   a *neck* (the distance to the background dips there) or a *dark line* (the intensity dips), each
   judged as a ratio to the pieces' peaks (``declump_ratio``, see :func:`_merge_regions`). This is
   CellProfiler's "declump by shape and intensity" written as a merge tree.
4. **Filter by size**: objects whose equivalent diameter is outside ``[min_diameter, max_diameter]`` are
   dropped (debris, clumps left unsplit); ``exclude_border`` drops objects touching the edge.

The centre written is the object's centroid, ``x`` = column, ``y`` = row (CellProfiler's
``Location_Center_X/Y``, 0-based pixels). Sizes are in pixels here; :mod:`dpcore.config` converts µm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from skimage import filters, measure, segmentation
from skimage.feature import peak_local_max

logger = logging.getLogger(__name__)

THRESHOLD_METHODS: dict[str, Callable[[np.ndarray], float]] = {
    "otsu": filters.threshold_otsu,
    "li": filters.threshold_li,
    "triangle": filters.threshold_triangle,
    "yen": filters.threshold_yen,
}


@dataclass(frozen=True)
class NucleusFinder:
    """Settings of :func:`find_nuclei`, in pixels (see the module docstring for each step)."""

    min_diameter: float = 8.0
    max_diameter: float = 80.0
    threshold: str = "otsu"
    threshold_correction: float = 1.0
    smoothing_sigma: float | None = None
    split_touching: bool = True
    declump_ratio: float = 0.8
    exclude_border: bool = False

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLD_METHODS:
            raise ValueError(f"threshold must be one of {', '.join(THRESHOLD_METHODS)}, got {self.threshold!r}")
        if not 0 < self.min_diameter < self.max_diameter:
            raise ValueError(f"need 0 < min_diameter < max_diameter, got {self.min_diameter} and {self.max_diameter}")
        if self.threshold_correction <= 0:
            raise ValueError(f"threshold_correction must be positive, got {self.threshold_correction}")
        if not 0 < self.declump_ratio <= 1:
            raise ValueError(f"declump_ratio must be in (0, 1], got {self.declump_ratio}")
        if self.smoothing_sigma is not None and self.smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma must be >= 0, got {self.smoothing_sigma}")

    @property
    def sigma(self) -> float:
        return self.min_diameter / 3.5 if self.smoothing_sigma is None else self.smoothing_sigma


@dataclass(frozen=True)
class Nuclei:
    """What :func:`find_nuclei` found in one image."""

    centres: np.ndarray  # (N, 2) float64: x (column), y (row)
    labels: np.ndarray  # (H, W) int32, 0 = background, nuclei numbered 1..N in centre order
    threshold: float  # on the smoothed image, after the correction
    dropped_small: int
    dropped_large: int
    dropped_border: int


def find_nuclei(image: np.ndarray, finder: NucleusFinder) -> Nuclei:
    """Nuclei of a 2-D image (any dtype; a flat image has none)."""
    if image.ndim != 2:
        raise ValueError(f"find_nuclei takes a 2-D image, got shape {image.shape}")
    smoothed = ndi.gaussian_filter(image.astype(np.float32), finder.sigma) if finder.sigma > 0 \
        else image.astype(np.float32)
    if float(smoothed.max()) <= float(smoothed.min()):
        return _no_nuclei(image.shape, float(smoothed.max()))
    threshold = float(THRESHOLD_METHODS[finder.threshold](smoothed)) * finder.threshold_correction
    foreground = ndi.binary_fill_holes(smoothed > threshold)
    if finder.split_touching:
        labels = _split(foreground, finder, np.clip(smoothed - threshold, 0, None))
    else:
        labels = measure.label(foreground)
    return _filtered(labels, threshold, finder)


def _split(foreground: np.ndarray, finder: NucleusFinder, height: np.ndarray) -> np.ndarray:
    """Over-split by a watershed of the intensity, then merge regions joined with no neck and no dip."""
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(foreground), 1.0)
    components = measure.label(foreground)
    seeds = peak_local_max(height, min_distance=2, labels=components, exclude_border=False)
    markers = np.zeros(foreground.shape, dtype=np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1, dtype=np.int32)
    # A component without a seed (its maximum is a plateau) still counts as one object.
    unseeded = np.setdiff1d(np.unique(components[foreground]), np.unique(components[markers > 0]))
    for number, component in enumerate(unseeded, start=len(seeds) + 1):
        markers[np.unravel_index(np.argmax(np.where(components == component, height, -1)), height.shape)] = number
    regions = segmentation.watershed(-height, markers, mask=foreground)
    return _merge_regions(regions, (distance, height), finder.declump_ratio)


def _saddles(regions: np.ndarray, landscape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neighbouring region pairs ``(a, b)``, a < b, and the highest value of ``landscape`` on their border."""
    pairs, values = [], []
    for a, b, va, vb in ((regions[:, :-1], regions[:, 1:], landscape[:, :-1], landscape[:, 1:]),
                         (regions[:-1, :], regions[1:, :], landscape[:-1, :], landscape[1:, :])):
        touching = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a, b)[touching], np.maximum(a, b)[touching]], axis=1))
        values.append(np.minimum(va, vb)[touching])
    pairs_all, values_all = np.concatenate(pairs), np.concatenate(values)
    unique, inverse = np.unique(pairs_all, axis=0, return_inverse=True)
    highest = np.full(len(unique), -np.inf)
    np.maximum.at(highest, inverse.ravel(), values_all)
    return unique, highest


def _merge_regions(regions: np.ndarray, landscapes: tuple[np.ndarray, ...], ratio: float) -> np.ndarray:
    """Merge neighbours whose border is high in every landscape: ``saddle >= ratio * min(peak_a, peak_b)``.

    In the distance transform a low saddle is a neck (two convex nuclei touching); in the intensity a
    low saddle is a dark line between two nuclei. A border with neither lies inside one nucleus (an
    elongated one, or one with textured chromatin), and its two sides are merged. Ratios, not
    distances, so the rule does not depend on the magnification or the exposure. Highest borders merge
    first, and merged regions keep the higher peak, as in a merge tree.
    """
    count = int(regions.max())
    if count < 2:
        return regions
    index = np.arange(1, count + 1)
    pairs = None
    saddles = []
    for landscape in landscapes:
        found, highest = _saddles(regions, landscape)
        pairs = found if pairs is None else pairs
        saddles.append(highest)
    if not len(pairs):
        return regions
    peaks = [np.concatenate([[0.0], ndi.maximum(landscape, regions, index)]) for landscape in landscapes]
    parent = np.arange(count + 1)

    def root(label: int) -> int:
        while parent[label] != label:
            parent[label] = parent[parent[label]]
            label = parent[label]
        return label

    order = np.argsort(-saddles[-1], kind="stable")
    merged = True
    while merged:  # a merge raises a region's peaks, which can allow or forbid later merges: repeat to a fixed point
        merged = False
        for edge in order:
            ra, rb = root(int(pairs[edge, 0])), root(int(pairs[edge, 1]))
            if ra == rb:
                continue
            if all(saddle[edge] >= ratio * min(peak[ra], peak[rb]) for saddle, peak in zip(saddles, peaks)):
                parent[rb] = ra
                for peak in peaks:
                    peak[ra] = max(peak[ra], peak[rb])
                merged = True
    mapping = np.array([root(label) for label in range(count + 1)], dtype=np.int32)
    return mapping[regions]


def _filtered(labels: np.ndarray, threshold: float, finder: NucleusFinder) -> Nuclei:
    kept = np.zeros(labels.shape, dtype=np.int32)
    centres, small, large, border = [], 0, 0, 0
    height, width = labels.shape
    for region in measure.regionprops(labels):
        diameter = region.equivalent_diameter_area
        if diameter < finder.min_diameter:
            small += 1
            continue
        if diameter > finder.max_diameter:
            large += 1
            continue
        top, left, bottom, right = region.bbox
        if finder.exclude_border and (top == 0 or left == 0 or bottom == height or right == width):
            border += 1
            continue
        row, column = region.centroid
        centres.append((column, row))
        kept[tuple(region.coords.T)] = len(centres)
    return Nuclei(np.asarray(centres, dtype=np.float64).reshape(-1, 2), kept, threshold, small, large, border)


def _no_nuclei(shape: tuple[int, ...], threshold: float) -> Nuclei:
    return Nuclei(np.zeros((0, 2)), np.zeros(shape, dtype=np.int32), threshold, 0, 0, 0)


# ---------------------------------------------------------------- quality
@dataclass(frozen=True)
class Agreement:
    """Centres found against reference centres, matched one-to-one within a distance."""

    found: int
    reference: int
    matched: int

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 1.0


def match_centres(found: np.ndarray, reference: np.ndarray, max_distance: float = 5.0) -> Agreement:
    """Hungarian matching of centres (minimum total distance); pairs farther than ``max_distance`` do not count."""
    found = np.asarray(found, dtype=np.float64).reshape(-1, 2)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    if not len(found) or not len(reference):
        return Agreement(len(found), len(reference), 0)
    distances = cdist(found, reference)
    # Pairs beyond reach cost more than any reachable set, so the assignment maximises matches first.
    cost = np.where(distances <= max_distance, distances, max_distance * (len(found) + len(reference) + 1))
    rows, columns = linear_sum_assignment(cost)
    return Agreement(len(found), len(reference), int((distances[rows, columns] <= max_distance).sum()))


def label_centres(labels: np.ndarray) -> np.ndarray:
    """(x, y) centroids of a label image's objects, in label order (a reference from annotations)."""
    return np.asarray([(r.centroid[1], r.centroid[0]) for r in measure.regionprops(labels)],
                      dtype=np.float64).reshape(-1, 2)
