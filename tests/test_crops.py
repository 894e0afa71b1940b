"""Crop arithmetic against an independent implementation and against TensorFlow itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpcore.crops import (boxes_outside, cell_boxes, crop_and_resize, cut_crops, full_image_centres, quantise)
from tests import reference

CHANNELS = ("DNA", "RNA", "ER", "AGP", "Mito")


@pytest.fixture(scope="session")
def site_image(example_root):
    index = pd.read_csv(example_root / "inputs/metadata/index.csv", dtype=str)
    stack = reference.read_stack([example_root / "inputs/images" / index.loc[0, c] for c in CHANNELS])
    centres = pd.read_csv(example_root / "inputs/locations/20585/A01-1-Nuclei.csv").to_numpy()
    return stack.astype(np.float32), centres


def test_crops_match_the_definition_including_border_cells(site_image):
    image, centres = site_image
    height, width = image.shape[:2]
    border = np.array([[3.0, 2.0], [width - 4.5, height - 1.0], [width / 2, 0.0]])
    chosen = np.concatenate([centres[:4], border])
    batch = cut_crops(image, cell_boxes(chosen, 64, (height, width)), 64)
    assert list(batch.kept) == list(range(len(chosen)))
    for crop, (x, y) in zip(batch.crops, chosen):
        expected = reference.crop_cell(image.astype(np.float64), x, y, 64)
        assert np.abs(crop - expected).max() <= 1 / 255
        assert np.abs(quantise(crop[None])[0] / 255.0 - expected).max() <= 1 / 255 + 1e-9


def test_crop_and_resize_equals_tensorflow(site_image):
    import tensorflow as tf  # a required dependency: missing means a broken install, so fail
    image, centres = site_image
    boxes = cell_boxes(np.concatenate([centres, [[-30.0, 10.0], [700.0, 530.0]]]), 128, image.shape[:2])
    boxes = boxes.astype(np.float32)
    ours = crop_and_resize(image, boxes, 128)
    theirs = tf.image.crop_and_resize(image[None], boxes, np.zeros(len(boxes), np.int32), [128, 128]).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=1e-6)


def test_boxes_wholly_outside_are_skipped_and_counted(site_image):
    image, _ = site_image
    centres = np.array([[100.0, 100.0], [-200.0, 50.0], [50.0, 900.0]])
    boxes = cell_boxes(centres, 64, image.shape[:2])
    assert list(boxes_outside(boxes)) == [False, True, True]
    batch = cut_crops(image, boxes, 64)
    assert batch.outside == 2 and list(batch.kept) == [0]


def test_crops_with_nan_are_skipped_and_counted(site_image):
    image, _ = site_image
    poisoned = image.copy()
    poisoned[100, 100, 2] = np.nan
    batch = cut_crops(poisoned, cell_boxes(np.array([[100.0, 100.0], [400.0, 400.0]]), 32, image.shape[:2]), 32)
    assert batch.invalid == 1 and list(batch.kept) == [1]


def test_boxes_follow_a_rescaled_image():
    # A PNG compressed at scaling_factor 0.5: centres are scaled, boxes normalised by the real size.
    boxes = cell_boxes(np.array([[200.0, 100.0]]), 32, (260, 348), original_shape=(520, 696))
    np.testing.assert_allclose(boxes[0], [(50 - 16) / 260, (100 - 16) / 348, (50 + 16) / 260, (100 + 16) / 348])


def test_full_image_grid_is_deepprofilers():
    centres = full_image_centres(520, 696, 128)
    xs, ys = sorted(set(centres[:, 0])), sorted(set(centres[:, 1]))
    assert len(xs) == 6 and len(ys) == 5 and len(centres) == 30
    assert xs[0] == 64 and xs[-1] == 696 - 64 and ys[0] == 64 and ys[-1] == 520 - 64
    np.testing.assert_array_equal(full_image_centres(100, 100, 100), [[50, 50]])
    with pytest.raises(ValueError):
        full_image_centres(100, 100, 101)


def test_normalised_crops_span_zero_to_one(site_image):
    image, centres = site_image
    crops = cut_crops(image, cell_boxes(centres, 48, image.shape[:2]), 48).crops
    assert crops.min() >= 0 and crops.max() <= 1
    np.testing.assert_allclose(crops.max(axis=(1, 2)), 1, atol=1e-5)


@pytest.mark.parametrize("box_size", [128, 64])
def test_profiles_tensorflow_crops_equal_the_numpy_crops(site_image, box_size):
    """profile cuts with dpcore.tf_crops: the same cells, skips and values as the numpy code export-sc uses."""
    from dpcore import tf_crops  # a required dependency: an import error fails the test

    image, centres = site_image
    poisoned = image.copy()
    poisoned[200:204, 300:304, 2] = np.nan  # the cells whose box holds this are dropped as invalid
    centres = np.concatenate([centres, [[-30.0, 10.0], [700.0, 530.0], [-400.0, -400.0]]])
    boxes = cell_boxes(centres, box_size, image.shape[:2])
    labels = np.random.default_rng(0).integers(0, 4, image.shape[:2]).astype(np.float32)
    ids = np.random.default_rng(1).integers(0, 4, len(centres)).astype(np.int64)
    for picture, masks in ((image, None), (poisoned, None), (image, labels)):
        expected = cut_crops(picture, boxes, box_size, masks, ids if masks is not None else None)
        found = tf_crops.cut_crops(picture, boxes, box_size, masks, ids if masks is not None else None)
        assert list(found.kept) == list(expected.kept)
        assert (found.outside, found.invalid) == (expected.outside, expected.invalid)
        np.testing.assert_allclose(found.crops, expected.crops, rtol=0, atol=1e-6)
    assert expected.outside == 1 and cut_crops(poisoned, boxes, box_size).invalid >= 1
