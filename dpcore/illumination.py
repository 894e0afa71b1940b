"""Per-plate illumination statistics and correction functions.

DeepProfiler's definitions (``deepprofiler/dataset/illumination_statistics.py``
and ``illumination_correction.py``), split into pure accumulator functions so a
Beam ``CombineFn`` can run them on any number of workers:

- :func:`site_contribution` turns one site's ``(H, W, C)`` image stack into an
  accumulator (histograms, down-scaled image, count);
- :func:`merge_accumulators` adds accumulators: associative, commutative and
  *exact*, because the down-scaled images are summed in 2**-24 fixed point as
  int64 (floating-point sums would depend on the merge order in the last bits,
  and outputs would differ between runs with different bundle splits);
- :func:`compute_statistics` derives the plate's mean intensities, percentiles,
  mean image and illumination correction function.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
import skimage.filters
import skimage.transform

logger = logging.getLogger(__name__)

# Mean-image sums are kept as int64 multiples of 2**-24: exact to ~6e-8 grey
# levels per image, and room for 8 million 16-bit images per plate.
FIXED_POINT_SCALE = 2.0 ** 24
MAX_IMAGES_PER_PLATE = int(np.iinfo(np.int64).max // (65536 * FIXED_POINT_SCALE))

LOWER_PERCENTILE_PROBABILITY = 0.0001
UPPER_PERCENTILE_PROBABILITY = 0.9999
ROBUST_MINIMUM_PERCENTILE = 2
# The function is a median-filtered mean image: averaged over few images, the cells themselves survive the
# mean and the function is blotchy (the 12-site example shows it). Plates of a screen have hundreds to
# thousands of images per channel; below this many, prepare warns in its output, its log and the pictures.
MIN_IMAGES_FOR_A_SMOOTH_FUNCTION = 50
# Below this many grey levels the median filter keeps a running histogram of the disk (scikit-image's rank
# filter), which costs little per level; above it scipy's per-pixel selection is as fast or faster (a
# 130x174 mean image, disk of radius 12: 20 ms against 120 ms at ~600 levels, even at ~5,000, 3x slower at
# ~11,000). Both give the same values; 1024 is also where scikit-image starts warning about slow rank filters.
RANK_MEDIAN_MAX_LEVELS = 1024


def few_images_warning(plate: str, images: int) -> str | None:
    """The warning for a plate whose function averages too few images, or None."""
    if images >= MIN_IMAGES_FOR_A_SMOOTH_FUNCTION:
        return None
    return (f"only {images} image(s) per channel in plate {plate}: an illumination function needs about "
            f"{MIN_IMAGES_FOR_A_SMOOTH_FUNCTION} or more to be smooth; this one keeps the cells' own pattern")


class PlateShapeError(ValueError):
    """Images of one plate do not share one shape."""


@dataclass
class PlateAccumulator:
    """Mergeable partial statistics of some of a plate's sites."""

    # (C, n) int64 pixel counts of grey levels 0 .. n-1, n <= depth: bins above the brightest pixel seen are
    # left out. 12-bit images leave 15/16 of a 16-bit histogram empty, and accumulators travel between workers
    # (combiner lifting, the per-plate shuffle) and sit in combine tables: ~0.2 MB instead of 2.6 MB.
    histogram: np.ndarray | None = None
    mean_sum: np.ndarray | None = None    # (h, w, C) int64, sum of down-scaled images in fixed point
    count: int = 0
    shape: tuple[int, ...] | None = None  # (H, W, C) of the full-size images
    sources: tuple[str, ...] = field(default_factory=tuple)  # one example file, for error messages
    depth: int = 0                        # 2**bits: the full histogram's number of bins

    @property
    def empty(self) -> bool:
        return self.count == 0

    def full_histogram(self) -> np.ndarray:
        """``(C, depth)`` counts: the stored bins, then zeros up to ``depth``."""
        full = np.zeros((self.histogram.shape[0], self.depth), dtype=np.int64)
        full[:, : self.histogram.shape[1]] = self.histogram
        return full


def _trim(histogram: np.ndarray) -> np.ndarray:
    used = np.flatnonzero(histogram.any(axis=0))
    return histogram[:, : int(used[-1]) + 1 if used.size else 0].copy()


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum of two trimmed histograms of different widths."""
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    total = a.copy()
    total[:, : b.shape[1]] += b
    return total


@dataclass(frozen=True)
class PlateStatistics:
    """What DeepProfiler pickled per plate, as plain arrays."""

    plate: str
    channels: tuple[str, ...]
    mean_values: np.ndarray               # (C,)
    lower_percentiles: np.ndarray         # (C,)
    upper_percentiles: np.ndarray         # (C,)
    histogram: np.ndarray                 # (C, 2**bits) float64 counts
    mean_image: np.ndarray                # (h, w, C) float64
    original_size: tuple[int, int, int]   # (H, W, C)
    illum_correction_function: np.ndarray  # (H, W, C) float64, >= 1
    image_count: int
    controls_distribution: np.ndarray | None = None  # (C, 256) float64, filled by compression

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays stored in ``<plate>.npz`` (no object arrays: loads with allow_pickle=False)."""
        controls = self.controls_distribution
        if controls is None:
            controls = np.zeros((len(self.channels), 256), dtype=np.float64)
        return {
            "plate": np.array(self.plate),
            "channels": np.array(self.channels, dtype=str),
            "mean_values": self.mean_values,
            "lower_percentiles": self.lower_percentiles,
            "upper_percentiles": self.upper_percentiles,
            "histogram": self.histogram,
            "mean_image": self.mean_image,
            "original_size": np.array(self.original_size, dtype=np.int64),
            "illum_correction_function": self.illum_correction_function,
            "image_count": np.array(self.image_count, dtype=np.int64),
            "controls_distribution": controls,
        }

    @classmethod
    def from_arrays(cls, arrays) -> "PlateStatistics":
        return cls(
            plate=str(arrays["plate"]),
            channels=tuple(str(c) for c in arrays["channels"]),
            mean_values=arrays["mean_values"],
            lower_percentiles=arrays["lower_percentiles"],
            upper_percentiles=arrays["upper_percentiles"],
            histogram=arrays["histogram"],
            mean_image=arrays["mean_image"],
            original_size=tuple(int(v) for v in arrays["original_size"]),
            illum_correction_function=arrays["illum_correction_function"],
            image_count=int(arrays["image_count"]),
            controls_distribution=arrays["controls_distribution"],
        )


def thumbnail_shape(height: int, width: int, down_scale_factor: float) -> tuple[float, float]:
    """DeepProfiler's (unrounded) down-scaled size; scikit-image rounds it."""
    return (height / down_scale_factor, width / down_scale_factor)


def channel_histograms(stack: np.ndarray, bits: int) -> np.ndarray:
    """Per-channel counts in ``2**bits`` unit bins over ``[0, 2**bits)``.

    Equal to ``np.histogram(channel, bins=2**bits, range=(0, 2**bits))`` for
    integer images -- values outside the range are not counted, and, numpy's
    last bin being closed, a value of exactly ``2**bits`` counts in the top
    bin -- but one ``bincount`` per channel instead of a sort.
    """
    depth = 2 ** bits
    counts = np.zeros((stack.shape[-1], depth), dtype=np.int64)
    for c in range(stack.shape[-1]):
        channel = stack[..., c]
        if np.issubdtype(channel.dtype, np.integer):
            values = channel.ravel().astype(np.int64, copy=False)
            if values.size and (values.max() >= depth or values.min() < 0):
                values = values[(values >= 0) & (values <= depth)]
                values = np.minimum(values, depth - 1)
            counts[c] = np.bincount(values, minlength=depth)[:depth]
        else:
            counts[c] = np.histogram(channel, bins=depth, range=(0, depth))[0]
    return counts


def site_contribution(stack: np.ndarray, bits: int, down_scale_factor: float, source: str = "") -> PlateAccumulator:
    """The accumulator of one site's ``(H, W, C)`` stack."""
    if stack.ndim != 3:
        raise ValueError(f"{source}: expected an (H, W, C) stack, got shape {stack.shape}")
    height, width, _ = stack.shape
    thumb = skimage.transform.resize(stack.astype(np.float64, copy=False),
                                     thumbnail_shape(height, width, down_scale_factor),
                                     mode="reflect", anti_aliasing=True, preserve_range=True)
    return PlateAccumulator(
        histogram=_trim(channel_histograms(stack, bits)),
        mean_sum=np.rint(thumb * FIXED_POINT_SCALE).astype(np.int64),
        count=1,
        shape=tuple(stack.shape),
        sources=(source,) if source else (),
        depth=2 ** bits,
    )


def merge_accumulators(accumulators) -> PlateAccumulator:
    """Add accumulators; the result does not depend on grouping or order."""
    merged = PlateAccumulator()
    for acc in accumulators:
        if acc is None or acc.empty:
            continue
        if merged.empty:
            merged = PlateAccumulator(acc.histogram.copy(), acc.mean_sum.copy(), acc.count, acc.shape, acc.sources,
                                      acc.depth)
            continue
        if acc.shape != merged.shape:
            raise PlateShapeError(
                f"images of one plate differ in shape: {merged.shape} (e.g. {', '.join(merged.sources) or '?'}) "
                f"and {acc.shape} (e.g. {', '.join(acc.sources) or '?'})")
        merged.histogram = _add(merged.histogram, acc.histogram)
        merged.depth = max(merged.depth, acc.depth)
        merged.mean_sum += acc.mean_sum
        merged.count += acc.count
        if merged.count > MAX_IMAGES_PER_PLATE:
            raise OverflowError(f"more than {MAX_IMAGES_PER_PLATE} images in one plate")
        merged.sources = tuple(sorted(set(merged.sources + acc.sources)))[:1]
    return merged


def percentile_bin(probabilities: np.ndarray, p: float) -> int:
    """DeepProfiler's percentile: the first bin whose cumulative probability exceeds ``p``."""
    return int(np.argmax(np.cumsum(probabilities) > p))


def score_at_percentile(values: np.ndarray, percent: float) -> float:
    """``scipy.stats.scoreatpercentile(values, percent)`` (DeepProfiler's robust minimum), bit for bit.

    The same arithmetic as scipy's default "fraction" interpolation between the two neighbouring order
    statistics, with numpy's partition instead of a full sort. Written here because importing
    ``scipy.stats`` took 1.2 s of every prepare and locate start-up, for this one call.
    """
    flat = np.asarray(values).ravel()
    position = percent / 100.0 * (flat.size - 1)
    below = int(position)
    if below == position:
        return float(np.partition(flat, below)[below]) / 1.0
    ordered = np.partition(flat, (below, below + 1))
    weights = np.array([below + 1 - position, position - below], dtype=float)
    return float(np.add.reduce(ordered[below:below + 2] * weights) / weights.sum())


def median_filter(image: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``skimage.filters.median(image, footprint)`` (scipy's median filter, edges extended), value for value.

    A mean image has few grey levels (a few hundred for 12-bit Cell Painting), and for those a running
    histogram (scikit-image's rank median) is ~6x faster than selecting each pixel's median afresh; it was
    a fifth of a small plate's prepare time. The rank filter only looks inside the image, so the image is
    first extended by the footprint's radius with its edge values, as scipy does ("nearest"), and the
    extension cut off again: every pixel's neighbourhood, and so its median, is then scipy's. Only footprints
    with odd sides (a centre pixel) and an odd number of pixels (one middle element) take that path: the
    disks of an even ``median_filter_size`` (24: 25x25); an odd size gives a disk with even sides (3: 4x4),
    which scipy filters.
    """
    footprint = np.asarray(footprint, dtype=bool)
    odd = footprint.ndim == 2 and all(size % 2 == 1 for size in footprint.shape) and footprint.sum() % 2 == 1
    if image.dtype != np.uint16 or not odd or image.size == 0 or int(image.max()) >= RANK_MEDIAN_MAX_LEVELS:
        return skimage.filters.median(image, footprint)
    # Imported here, not with the module: skimage.filters.rank loads scipy.ndimage's array-API layer (~0.6 s),
    # which only the workers that compute a plate's functions need, not every prepare and locate process.
    from skimage.filters import rank  # noqa: PLC0415

    rows, columns = footprint.shape[0] // 2, footprint.shape[1] // 2
    extended = np.pad(image, ((rows, rows), (columns, columns)), mode="edge")
    filtered = rank.median(extended, footprint)
    return filtered[rows:rows + image.shape[0], columns:columns + image.shape[1]]


def illumination_function(mean_channel: np.ndarray, median_filter_size: int,
                          target_shape: tuple[int, int]) -> np.ndarray:
    """One channel's correction function (Singh et al. 2014, as in DeepProfiler).

    Median filter of the mean image (cast to uint16 first, as DeepProfiler does)
    with a disk of radius ``median_filter_size / 2``, resized to full size,
    clipped below at its 2nd percentile and divided by it, so it is >= 1.
    """
    import skimage.morphology  # noqa: PLC0415 -- with skimage.filters.rank (see median_filter), ~0.2 s

    disk = skimage.morphology.disk(median_filter_size / 2)
    filtered = median_filter(mean_channel.astype(np.uint16), disk)
    filtered = skimage.transform.resize(filtered, target_shape, mode="reflect", anti_aliasing=True,
                                        preserve_range=True)
    robust_minimum = score_at_percentile(filtered, ROBUST_MINIMUM_PERCENTILE)
    if not robust_minimum > 0:
        # An (almost) black channel: DeepProfiler would divide by zero. No correction is the honest answer.
        logger.warning("illumination function: robust minimum is %s; using a flat function", robust_minimum)
        return np.ones(target_shape, dtype=np.float64)
    return np.maximum(filtered, robust_minimum) / robust_minimum


def compute_statistics(plate: str, channels: tuple[str, ...], accumulator: PlateAccumulator,
                       median_filter_size: int) -> PlateStatistics:
    if accumulator.empty:
        raise ValueError(f"plate {plate}: no readable image, no statistics")
    histogram = accumulator.full_histogram().astype(np.float64)
    depth = histogram.shape[1]
    bins = np.linspace(0, depth - 1, depth)
    mean_values = np.zeros(len(channels))
    lower = np.zeros(len(channels))
    upper = np.zeros(len(channels))
    for c in range(len(channels)):
        total = histogram[c].sum()
        if total == 0:
            raise ValueError(f"plate {plate}: channel {channels[c]} has no pixel inside [0, {depth}) "
                             f"(check dataset.images.bits)")
        probabilities = histogram[c] / total
        mean_values[c] = (bins * probabilities).sum()
        lower[c] = percentile_bin(probabilities, LOWER_PERCENTILE_PROBABILITY)
        upper[c] = percentile_bin(probabilities, UPPER_PERCENTILE_PROBABILITY)
    mean_image = accumulator.mean_sum.astype(np.float64) / FIXED_POINT_SCALE / accumulator.count
    height, width, _ = accumulator.shape
    function = np.stack([illumination_function(mean_image[:, :, c], median_filter_size, (height, width))
                         for c in range(len(channels))], axis=-1)
    return PlateStatistics(
        plate=plate, channels=tuple(channels), mean_values=mean_values, lower_percentiles=lower,
        upper_percentiles=upper, histogram=histogram, mean_image=mean_image,
        original_size=(height, width, len(channels)), illum_correction_function=function,
        image_count=accumulator.count,
    )


def write_statistics(path, statistics: PlateStatistics) -> None:
    """Save as ``.npz`` (atomically: readers never see a partial file).

    Uncompressed: zlib took ~0.5 s per plate and file (prepare writes it twice), a
    tenth of a small plate's time, to save a few MB. Compressed files still load.
    """
    buffer = io.BytesIO()
    np.savez(buffer, **statistics.to_arrays())
    path.write_bytes(buffer.getvalue())


def read_statistics(path) -> PlateStatistics:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as arrays:
        return PlateStatistics.from_arrays({key: arrays[key] for key in arrays.files})
