"""Illumination statistics and compression arithmetic against an independent computation on real images."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpcore.compression import compress_channel, control_histogram, output_shape
from dpcore.illumination import (PlateAccumulator, channel_histograms, compute_statistics, merge_accumulators,
                                 read_statistics, site_contribution, write_statistics)
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
