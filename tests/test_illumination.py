"""Illumination statistics and compression arithmetic against an independent computation on real images."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpcore.compression import compress_channel, control_histogram, output_shape
from dpcore.illumination import (FIXED_POINT_SCALE, MIN_IMAGES_FOR_A_SMOOTH_FUNCTION, PlateAccumulator,
                                 PlateStatistics, channel_histograms, compute_statistics, few_images_warning,
                                 merge_accumulators, read_statistics, site_contribution, thumbnail_shape,
                                 write_statistics)
from dpcore.storage import StoragePath
from tests import reference

CHANNELS = ("DNA", "RNA", "ER", "AGP", "Mito")


@pytest.fixture(scope="session")
def real_stacks(example_root):
    index = pd.read_csv(example_root / "inputs/metadata/index.csv", dtype=str)
    return [reference.read_stack([example_root / "inputs/images" / row[c] for c in CHANNELS])
            for _, row in index.iterrows()]


@pytest.fixture(scope="session")
def real_reference(real_stacks):
    return reference.plate_statistics(real_stacks, bits=16, down_scale_factor=4, median_filter_size=24)


@pytest.fixture(scope="session")
def real_statistics(real_stacks):
    contributions = [site_contribution(s.astype(np.uint16), 16, 4) for s in real_stacks]
    return compute_statistics("20585", CHANNELS, merge_accumulators(contributions), 24)


def test_percentiles_and_histograms_are_exact(real_statistics, real_reference):
    np.testing.assert_array_equal(real_statistics.histogram, real_reference["histogram"])
    np.testing.assert_array_equal(real_statistics.lower_percentiles, real_reference["lower_percentiles"])
    np.testing.assert_array_equal(real_statistics.upper_percentiles, real_reference["upper_percentiles"])
    np.testing.assert_allclose(real_statistics.mean_values, real_reference["mean_values"], rtol=1e-12)


def test_mean_image_and_function_within_1e6_relative(real_statistics, real_reference):
    assert real_statistics.mean_image.shape == (130, 174, 5)
    np.testing.assert_allclose(real_statistics.mean_image, real_reference["mean_image"], rtol=1e-6)
    function = real_statistics.illum_correction_function
    assert function.shape == (520, 696, 5)
    np.testing.assert_allclose(function, real_reference["illum_correction_function"], rtol=1e-6)
    assert function.min() >= 1.0


def test_compressed_pixels_within_one_grey_level(real_stacks, real_statistics):
    for c in range(5):
        for scaling in (1.0, 0.5):
            ours = compress_channel(real_stacks[0][:, :, c], real_statistics.illum_correction_function[:, :, c],
                                    scaling, float(real_statistics.upper_percentiles[c]))
            theirs = reference.compress(real_stacks[0][:, :, c], real_statistics.illum_correction_function[:, :, c],
                                        scaling, float(real_statistics.upper_percentiles[c]))
            assert ours.dtype == np.uint8 and ours.shape == output_shape((520, 696), scaling)
            assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_control_histogram_counts_every_pixel():
    image = np.array([[0, 255], [255, 7]], dtype=np.uint8)
    histogram = control_histogram(image)
    assert histogram.shape == (256,) and histogram.sum() == 4 and histogram[255] == 2 and histogram[7] == 1
    dim = control_histogram(np.array([[3, 9]], dtype=np.uint8))  # no bright pixel: still all 256 bins
    assert dim.shape == (256,) and dim.dtype == np.float64 and dim[3] == dim[9] == 1


@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_a_flat_channel_compresses_to_black_of_the_output_size(scaling):
    """Nothing to stretch (the 0.05th and 99.95th percentiles are equal): zeros, never a division by zero."""
    import warnings

    flat = np.full((40, 60), 1000, dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 would warn (and cast NaN to a platform-dependent grey)
        compressed = compress_channel(flat, np.ones((40, 60)), scaling, plate_upper_percentile=5000.0)
    assert compressed.dtype == np.uint8 and compressed.shape == output_shape((40, 60), scaling)
    assert not compressed.any()


def test_histograms_match_numpy_including_out_of_range_values():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 400, size=(20, 30, 2), dtype=np.uint16)
    ours = channel_histograms(stack, bits=8)
    for c in range(2):
        np.testing.assert_array_equal(ours[c], np.histogram(stack[:, :, c], bins=256, range=(0, 256))[0])


def test_merge_is_exact_under_any_split_of_real_images(real_stacks, real_statistics):
    contributions = [site_contribution(s.astype(np.uint16), 16, 4) for s in real_stacks]
    rng = np.random.default_rng(7)
    for _ in range(3):
        order = rng.permutation(len(contributions))
        cut = sorted(rng.choice(np.arange(1, len(contributions)), size=3, replace=False))
        groups = np.split(order, cut)
        partials = [merge_accumulators([contributions[i] for i in group]) for group in groups]
        merged = merge_accumulators(partials[::-1])
        np.testing.assert_array_equal(merged.mean_sum, merge_accumulators(contributions).mean_sum)
        np.testing.assert_array_equal(merged.full_histogram(), real_statistics.histogram.astype(np.int64))
        assert merged.count == 12


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), groups=st.lists(st.integers(0, 4), min_size=6, max_size=6))
def test_merge_property_any_grouping_any_order(seed, groups):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 4096, size=(24, 32, 2), dtype=np.uint16) for _ in range(6)]
    contributions = [site_contribution(image, 12, 4) for image in images]
    buckets = [[c for c, g in zip(contributions, groups) if g == k] for k in range(5)]
    partials = [merge_accumulators(bucket) for bucket in buckets]
    partials.insert(int(rng.integers(0, 5)), PlateAccumulator())  # empty accumulators are neutral
    merged = merge_accumulators(rng.permutation(np.array(partials, dtype=object)).tolist())
    direct = merge_accumulators(contributions)
    np.testing.assert_array_equal(merged.full_histogram(), direct.full_histogram())
    assert merged.full_histogram().shape == (2, 4096)
    np.testing.assert_array_equal(merged.mean_sum, direct.mean_sum)
    assert merged.count == direct.count == 6


def test_images_of_different_shapes_cannot_merge():
    a = site_contribution(np.zeros((8, 8, 1), np.uint16), 16, 2, source="a.tif")
    b = site_contribution(np.zeros((8, 6, 1), np.uint16), 16, 2, source="b.tif")
    with pytest.raises(ValueError, match=r"differ in shape.*a\.tif.*b\.tif"):
        merge_accumulators([a, b])


def test_statistics_round_trip_without_pickle(tmp_path, real_statistics):
    path = StoragePath(str(tmp_path / "20585" / "20585.npz"))
    write_statistics(path, real_statistics)
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as arrays:
        assert set(arrays.files) >= {"mean_values", "upper_percentiles", "lower_percentiles", "histogram",
                                     "mean_image", "channels", "original_size", "illum_correction_function",
                                     "controls_distribution"}
    loaded = read_statistics(path)
    assert loaded.channels == CHANNELS and loaded.original_size == (520, 696, 5)
    np.testing.assert_array_equal(loaded.illum_correction_function, real_statistics.illum_correction_function)


def test_an_all_black_channel_gets_a_flat_function():
    contribution = site_contribution(np.zeros((16, 16, 1), np.uint16), 16, 2)
    stats = compute_statistics("p", ("DNA",), contribution, 4)
    np.testing.assert_array_equal(stats.illum_correction_function, np.ones((16, 16, 1)))


def test_a_small_synthetic_plate_equals_the_reference_in_every_statistic():
    """A 12-bit, 3-channel plate of odd size and a non-default down-scale and filter size, against
    tests/reference.plate_statistics (scipy's median filter, numpy's histogram and percentiles)."""
    rng = np.random.default_rng(5)
    ramp = np.linspace(200, 3000, 45)[None, :, None]
    stacks = [(rng.normal(0, 40, (37, 45, 3)) + ramp * np.array([1.0, 0.7, 1.3])).clip(0, 4095).astype(np.uint16)
              for _ in range(4)]
    expected = reference.plate_statistics([s.astype(np.float64) for s in stacks], bits=12, down_scale_factor=3,
                                          median_filter_size=6)
    found = compute_statistics("p", ("A", "B", "C"),
                               merge_accumulators([site_contribution(s, 12, 3, source=f"s{i}.tif")
                                                   for i, s in enumerate(stacks)]), 6)
    assert found.histogram.shape == (3, 4096) and found.image_count == 4 and found.original_size == (37, 45, 3)
    np.testing.assert_array_equal(found.histogram, expected["histogram"])
    np.testing.assert_array_equal(found.lower_percentiles, expected["lower_percentiles"])
    np.testing.assert_array_equal(found.upper_percentiles, expected["upper_percentiles"])
    np.testing.assert_allclose(found.mean_values, expected["mean_values"], rtol=1e-12)
    assert found.mean_image.shape == (12, 15, 3)
    np.testing.assert_allclose(found.mean_image, expected["mean_image"], rtol=1e-6)
    np.testing.assert_allclose(found.illum_correction_function, expected["illum_correction_function"], rtol=1e-6)


def test_a_channel_without_pixels_in_range_names_the_bits_key():
    contribution = site_contribution(np.full((8, 8, 2), 300, np.uint16), 8, 2)  # 300 > 255: nothing counted
    with pytest.raises(ValueError, match=r"plate p: channel B has no pixel inside \[0, 256\).*dataset.images.bits"):
        compute_statistics("p", ("B", "C"), contribution, 4)
    with pytest.raises(ValueError, match="plate q: no readable image"):
        compute_statistics("q", ("B",), PlateAccumulator(), 4)


def test_few_images_warn_below_the_threshold_only():
    assert few_images_warning("p", MIN_IMAGES_FOR_A_SMOOTH_FUNCTION) is None
    text = few_images_warning("p", MIN_IMAGES_FOR_A_SMOOTH_FUNCTION - 1)
    assert text.startswith(f"only {MIN_IMAGES_FOR_A_SMOOTH_FUNCTION - 1} image(s) per channel in plate p")


def test_histograms_of_every_input_kind():
    """Signed, out-of-range (negative, exactly 2**bits, above), float and many-channel inputs all count as
    np.histogram over [0, 2**bits) with its closed last bin."""
    rng = np.random.default_rng(2)
    signed = rng.integers(-50, 300, size=(9, 11, 3)).astype(np.int32)
    signed[0, 0, 1] = 256  # exactly 2**bits: numpy's last bin is closed
    floats = rng.uniform(-5, 270, size=(9, 11, 3))
    for stack in (signed, floats, signed.astype(np.uint16).clip(0, 255)):
        found = channel_histograms(stack, bits=8)
        assert found.shape == (3, 256) and found.dtype == np.int64
        for c in range(3):
            np.testing.assert_array_equal(found[c], np.histogram(stack[:, :, c], bins=256, range=(0, 256))[0])


def test_a_site_contribution_holds_the_trimmed_histogram_and_the_fixed_point_thumbnail():
    stack = np.zeros((12, 16, 2), np.uint16)
    stack[:, :, 0] = 7
    stack[3, 4, 1] = 100
    found = site_contribution(stack, 12, 4, source="site.tif")
    assert (found.count, found.shape, found.sources, found.depth) == (1, (12, 16, 2), ("site.tif",), 4096)
    assert found.histogram.shape == (2, 101), "bins above the brightest pixel are left out"
    assert found.histogram[0, 7] == 192 and found.histogram[1, 100] == 1 and found.histogram[1, 0] == 191
    assert found.full_histogram().shape == (2, 4096) and found.full_histogram()[:, 101:].sum() == 0
    assert found.histogram.dtype == found.full_histogram().dtype == np.int64
    assert site_contribution(np.full((4, 4, 2), 300, np.uint16), 8, 2).histogram.shape == (2, 0), "nothing in range"
    assert thumbnail_shape(12, 16, 4) == (3.0, 4.0) and found.mean_sum.shape == (3, 4, 2)
    np.testing.assert_array_equal(found.mean_sum[:, :, 0], np.full((3, 4), 7 * FIXED_POINT_SCALE, np.int64))
    assert site_contribution(stack, 12, 4).sources == ()
    black = site_contribution(np.zeros((4, 4, 1), np.uint16), 8, 2)
    assert black.histogram.shape == (1, 1) and black.full_histogram().shape == (1, 256)
    with pytest.raises(ValueError, match=r"a\.tif: expected an \(H, W, C\) stack, got shape \(4, 4\)"):
        site_contribution(np.zeros((4, 4), np.uint16), 8, 2, source="a.tif")


def test_merging_keeps_one_source_the_widest_histogram_and_skips_nothing_else():
    dim = site_contribution(np.full((8, 8, 1), 3, np.uint16), 16, 2, source="b.tif")
    bright = site_contribution(np.full((8, 8, 1), 900, np.uint16), 16, 2, source="a.tif")
    for parts in ([dim, bright], [bright, None, dim], [PlateAccumulator(), dim, bright]):
        merged = merge_accumulators(parts)
        assert merged.count == 2 and merged.sources == ("a.tif",) and merged.depth == 65536
        assert merged.histogram.shape == (1, 901) and merged.histogram[0, 3] == 64 and merged.histogram[0, 900] == 64
        np.testing.assert_array_equal(merged.mean_sum, dim.mean_sum + bright.mean_sum)
    assert dim.histogram.shape == (1, 4), "merging never changes its inputs"


def test_every_statistic_survives_the_npz_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    statistics = PlateStatistics(
        plate="P1", channels=("DNA", "ER"), mean_values=rng.random(2), lower_percentiles=rng.random(2),
        upper_percentiles=rng.random(2), histogram=rng.random((2, 256)), mean_image=rng.random((3, 4, 2)),
        original_size=(12, 16, 2), illum_correction_function=1 + rng.random((12, 16, 2)), image_count=9)
    path = StoragePath(str(tmp_path / "P1.npz"))
    for controls in (None, rng.random((2, 256))):
        write_statistics(path, PlateStatistics(**{**statistics.__dict__, "controls_distribution": controls}))
        loaded = read_statistics(path)
        assert (loaded.plate, loaded.channels, loaded.original_size, loaded.image_count) == \
            ("P1", ("DNA", "ER"), (12, 16, 2), 9)
        for name in ("mean_values", "lower_percentiles", "upper_percentiles", "histogram", "mean_image",
                     "illum_correction_function"):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(statistics, name), err_msg=name)
        expected = np.zeros((2, 256)) if controls is None else controls
        np.testing.assert_array_equal(loaded.controls_distribution, expected)


def test_the_robust_minimum_is_scipys_scoreatpercentile_bit_for_bit():
    """DeepProfiler takes the function's robust minimum with ``scipy.stats.scoreatpercentile``; dpbeam's numpy
    version (no scipy.stats import at start-up) must give the very same float, interpolated or exact."""
    import scipy.stats

    from dpcore.illumination import score_at_percentile

    rng = np.random.default_rng(3)
    for size in (1, 2, 3, 100, 1001, 520 * 696):
        for dtype in (np.float64, np.float32, np.uint16):
            values = (rng.random(size) * 4000).astype(dtype)
            for percent in (0, 2, 2.5, 33.3333, 50, 99.95, 100):
                assert score_at_percentile(values, percent) == scipy.stats.scoreatpercentile(values, percent), \
                    (size, dtype, percent)
    image = rng.random((52, 69)) * 1000  # 2-D, as the filtered mean image
    assert score_at_percentile(image, 2) == scipy.stats.scoreatpercentile(image, 2)


def test_the_median_filter_is_scipys_value_for_value_on_both_paths(real_reference, monkeypatch):
    """The function's median filter takes a running-histogram path below RANK_MEDIAN_MAX_LEVELS grey levels
    and scipy's selection above (and for footprints without one middle element); both must equal
    ``scipy.ndimage.median_filter`` with DeepProfiler's disk and extended edges, on the real mean image and
    on images smaller than the disk. The real plate must take the fast path: it is the point of it."""
    import skimage.filters
    import skimage.morphology

    from dpcore.illumination import RANK_MEDIAN_MAX_LEVELS, median_filter

    selections = []  # images that went to scikit-image's median (scipy's selection)
    selection = skimage.filters.median
    monkeypatch.setattr(skimage.filters, "median", lambda image, footprint: selections.append(image) or
                        selection(image, footprint))

    real = real_reference["mean_image"].astype(np.uint16)
    rng = np.random.default_rng(11)
    images = [real[:, :, c] for c in range(real.shape[2])]
    for levels in (2, 300, RANK_MEDIAN_MAX_LEVELS - 1, RANK_MEDIAN_MAX_LEVELS, 4096, 65536):
        for shape in ((1, 1), (3, 40), (37, 45), (130, 174)):
            images.append(rng.integers(0, levels, shape).astype(np.uint16))
    images.append(np.full((20, 30), 7, dtype=np.uint16))
    images.append(np.full((20, 30), RANK_MEDIAN_MAX_LEVELS, dtype=np.uint16))  # the first level scipy takes
    corner_less = np.ones((3, 3), dtype=bool)
    corner_less[0, 0] = False  # odd sides, 8 pixels: no single middle element
    footprints = [(f"disk {radius}", skimage.morphology.disk(radius)) for radius in (1, 1.5, 3, 12)]
    footprints += [("2x2", np.ones((2, 2), dtype=bool)), ("3x3 less a corner", corner_less)]
    for image in images:
        for name, footprint in footprints:
            selections.clear()
            filtered = median_filter(image, footprint)
            assert filtered.dtype == np.uint16  # as scipy's: the resize that follows sees the same input
            np.testing.assert_array_equal(filtered, reference.median_filter(image, footprint),
                                          err_msg=f"{image.shape} max {image.max()} {name}")
            # One middle element and a centre pixel (odd sides: disks of radius 1, 3, 12; radius 1.5 is 4x4).
            middle = footprint.shape[0] % 2 == footprint.shape[1] % 2 == footprint.sum() % 2 == 1
            fast = middle and int(image.max()) < RANK_MEDIAN_MAX_LEVELS
            assert (not selections) == fast, f"{image.shape} max {image.max()} {name}: fast path {not selections}"
    assert real.max() < RANK_MEDIAN_MAX_LEVELS  # the real plate's five channels took the fast path above
