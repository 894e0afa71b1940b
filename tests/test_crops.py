"""Crop arithmetic against an independent implementation, against TensorFlow itself, and the compiled
kernel against the numpy reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpcore.crops import (boxes_outside, cell_boxes, crop_and_resize, cut_crops, cut_crops_reference,
                          full_image_centres, normalise_crops, object_ids, quantise)
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


def test_crop_and_resize_is_the_bilinear_definition_sample_by_sample():
    """Every case of the kernel on a small 12-bit image, against tests/reference.resample_box: inside,
    partly outside (each side), a box outside in y only, one wholly outside *before* valid boxes, a box
    whose last sample lands exactly on row 0 / first on the last column, and one-sample crops."""
    # 12-bit values in uint16: the kernel must compute in float (unsigned differences would wrap).
    image = np.random.default_rng(3).integers(0, 4096, (13, 17, 2)).astype(np.uint16)
    boxes = np.array([[0.12, 0.23, 0.71, 0.94],     # inside, fractional positions
                      [-2.0, -2.0, -1.5, -1.5],     # wholly outside, before the others
                      [-0.3, 0.1, 0.4, 0.6],        # above the top
                      [0.5, 0.7, 1.3, 1.2],         # beyond the bottom right
                      [-0.5, 0.2, 0.0, 0.8],        # last row sample exactly on row 0
                      [0.2, 1.0, 0.9, 1.6],         # first column sample exactly on the last column
                      [1.2, 0.1, 1.6, 0.5],         # outside in y only
                      [0.0, 0.0, 1.0, 0.5],         # first row, first column and last row exactly on the edge
                      [0.31, 0.42, 0.77, 0.58]])    # inside again
    for size, fill in ((7, 0.0), (1, 0.0), (2, 0.0), (5, 9.5)):
        found = crop_and_resize(image, boxes, size, fill) if fill else crop_and_resize(image, boxes, size)
        assert found.dtype == np.float32 and found.shape == (len(boxes), size, size, 2)
        for n, box in enumerate(boxes):
            expected = reference.resample_box(image.astype(np.float64), tuple(box), size, fill)
            np.testing.assert_allclose(found[n], expected, rtol=1e-5, atol=1e-3, err_msg=f"box {n}, size {size}")


def test_boxes_touching_the_image_edge_are_not_outside():
    boxes = np.array([[-0.5, 0.2, 0.0, 0.6],   # bottom edge on row 0
                      [1.0, 0.2, 1.4, 0.6],    # top edge on the last row
                      [0.2, -0.5, 0.6, 0.0],   # right edge on column 0
                      [0.2, 1.0, 0.6, 1.4],    # left edge on the last column
                      [-0.5, 0.2, -1e-6, 0.6], [1 + 1e-6, 0.2, 1.4, 0.6],
                      [0.2, -0.5, 0.6, -1e-6], [0.2, 1 + 1e-6, 0.6, 1.4]])
    assert list(boxes_outside(boxes)) == [False] * 4 + [True] * 4


def test_object_ids_are_the_median_label_of_a_ten_pixel_patch():
    labels = np.zeros((40, 40), np.int64)
    labels[0:20, 0:20] = 3
    labels[20:, 20:] = 7
    labels[30:33, 30:33] = 9          # a minority inside the patch of (31, 31): the median is still 7
    centres = np.array([[5.0, 5.0], [31.0, 31.0], [25.5, 4.0], [100.0, 100.0], [0.0, 39.0]])
    assert list(object_ids(labels, centres)) == [3, 7, 0, 0, 0]
    labels[35:, 0:10] = 4             # near the left edge the patch is cut at column 0, not wrapped
    assert object_ids(labels, np.array([[0.0, 39.0]]))[0] == 4
    # The patch is exactly rows y-5 .. y+4 and columns x-5 .. x+4: 51 of its 100 labels are 6, so the median
    # is 6; a patch one row or column larger on any side (110 labels, 51 of them 6) would give 0.
    exact = np.zeros((40, 40), np.int64)
    exact[15:25, 15:25].flat[:51] = 6
    assert object_ids(exact, np.array([[20.0, 20.0]]))[0] == 6
    # At the border the patch starts at row/column 0 (8 rows x 10 columns here): row 0 tips the median.
    border = np.zeros((40, 40), np.int64)
    border[0, 15:25] = 6
    border[1:8, 15:25].flat[:31] = 6
    assert object_ids(border, np.array([[20.0, 3.0]]))[0] == 6
    assert object_ids(border.T, np.array([[3.0, 20.0]]))[0] == 6


def test_masked_crops_keep_only_their_own_object():
    image = np.random.default_rng(4).uniform(10, 20, (30, 30, 2)).astype(np.float32)
    labels = np.ones((30, 30), np.int64)
    labels[:, 15:] = 2
    boxes = cell_boxes(np.array([[13.0, 15.0], [17.0, 15.0]]), 8, (30, 30))  # both straddle the border
    batch = cut_crops(image, boxes, 8, labels, np.array([1, 2]))
    own = crop_and_resize(labels[:, :, None].astype(np.float32), boxes, 8)[..., 0]
    for n, cell in enumerate((1, 2)):
        expected = np.where((own[n] == cell)[:, :, None], crop_and_resize(image, boxes[n:n + 1], 8)[0], 0.0)
        expected = (expected - expected.min((0, 1))) / (expected.max((0, 1)) - expected.min((0, 1)) + 1e-6)
        np.testing.assert_allclose(batch.crops[n], expected, atol=1e-5)
        assert (batch.crops[n][own[n] != cell] == 0).all() and (batch.crops[n][own[n] == cell] > 0).any()


def test_nothing_left_gives_an_empty_float32_batch_with_the_counts():
    image = np.ones((20, 20, 3), np.float32)
    outside = cut_crops(image, np.array([[-2.0, -2.0, -1.0, -1.0]]), 8)
    assert outside.crops.shape == (0, 8, 8, 3) and outside.crops.dtype == np.float32
    assert (outside.outside, outside.invalid, list(outside.kept)) == (1, 0, [])
    poisoned = np.full((20, 20, 3), np.nan, np.float32)
    invalid = cut_crops(poisoned, cell_boxes(np.array([[10.0, 10.0], [5.0, 5.0]]), 8, (20, 20)), 8)
    assert invalid.crops.shape == (0, 8, 8, 3) and invalid.crops.dtype == np.float32
    assert (invalid.outside, invalid.invalid) == (0, 2)


def test_a_nearly_flat_channel_stays_finite():
    """The epsilon is added to the range: a channel spanning 1e-6 maps to [0, 0.5], never to inf."""
    crops = np.zeros((1, 2, 2, 1), np.float32)
    crops[0, 0, 0, 0] = np.float32(1e-6)
    np.testing.assert_allclose(normalise_crops(crops).max(), 0.5, rtol=1e-3)


def test_quantise_clips_and_rounds_to_bytes():
    found = quantise(np.array([-0.5, 0.0, 0.5 / 255, 0.6 / 255, 0.5, 1.0, 1.7]))
    assert found.dtype == np.uint8 and list(found) == [0, 0, 0, 1, 128, 255, 255]


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
    for height, width in ((100, 200), (200, 100)):  # too tall or too wide: either is refused
        with pytest.raises(ValueError, match="view_size 150 exceeds the image"):
            full_image_centres(height, width, 150)


def test_normalised_crops_span_zero_to_one(site_image):
    image, centres = site_image
    crops = cut_crops(image, cell_boxes(centres, 48, image.shape[:2]), 48).crops
    assert crops.min() >= 0 and crops.max() <= 1
    np.testing.assert_allclose(crops.max(axis=(1, 2)), 1, atol=1e-5)


def assert_same_batches(found, expected):
    assert list(found.kept) == list(expected.kept)
    assert (found.outside, found.invalid) == (expected.outside, expected.invalid)
    assert found.crops.dtype == np.float32 and found.crops.shape == expected.crops.shape
    np.testing.assert_array_equal(found.crops, expected.crops)  # the same bits, not merely close


@pytest.mark.parametrize("box_size", [128, 64, 1, 2])
def test_the_compiled_kernel_gives_the_numpy_references_bits(site_image, box_size):
    """export-sc and profile cut with dpcore.crop_kernel: the same cells, skips and values, bit for bit,
    as crop_and_resize + mask + normalise_crops in numpy, on a real site: cells at the borders, boxes
    outside, NaN, masks, 8- and 16-bit images as read from PNGs and TIFFs."""
    image, centres = site_image
    poisoned = image.copy()
    poisoned[200:204, 300:304, 2] = np.nan  # the cells whose box holds this are dropped as invalid
    centres = np.concatenate([centres, [[-30.0, 10.0], [700.0, 530.0], [-400.0, -400.0], [0.0, 0.0],
                                        [695.0, 519.0]]])
    boxes = cell_boxes(centres, box_size, image.shape[:2])
    labels = np.random.default_rng(0).integers(0, 4, image.shape[:2]).astype(np.int32)
    ids = np.random.default_rng(1).integers(0, 4, len(centres)).astype(np.int64)
    as_read = {"uint16": image.astype(np.uint16), "uint8": (image / 16).astype(np.uint8), "float64": image * 0.25}
    cases = [(image, None), (poisoned, None), (image, labels)] + [(picture, None) for picture in as_read.values()]
    cases.append((as_read["uint8"], labels))
    for picture, masks in cases:
        mask_ids = ids if masks is not None else None
        assert_same_batches(cut_crops(picture, boxes, box_size, masks, mask_ids),
                            cut_crops_reference(picture, boxes, box_size, masks, mask_ids))
    assert cut_crops(image, boxes, box_size).outside >= 1  # the cases above held every kind of cell
    assert box_size < 64 or cut_crops(poisoned, boxes, box_size).invalid >= 1


@pytest.mark.parametrize("box_size", [128, 2])
def test_the_kernel_quantises_as_it_cuts_to_the_bytes_of_the_numpy_reference(site_image, box_size):
    """export-sc's crops (as_bytes): quantise() of the numpy reference's float crops, byte for byte, with the
    same cells kept, on a real site as read (8- and 16-bit, float), masked or not, NaN cells dropped."""
    image, centres = site_image
    poisoned = image.copy()
    poisoned[200:204, 300:304, 2] = np.nan
    centres = np.concatenate([centres, [[-30.0, 10.0], [-400.0, -400.0], [695.0, 519.0]]])
    boxes = cell_boxes(centres, box_size, image.shape[:2])
    labels = np.random.default_rng(0).integers(0, 4, image.shape[:2]).astype(np.int32)
    ids = np.random.default_rng(1).integers(0, 4, len(centres)).astype(np.int64)
    for picture, masks in [(image.astype(np.uint16), None), ((image / 16).astype(np.uint8), labels),
                           (poisoned, None), (image * 0.25, labels)]:
        mask_ids = ids if masks is not None else None
        cut = cut_crops(picture, boxes, box_size, masks, mask_ids, as_bytes=True)
        expected = cut_crops_reference(picture, boxes, box_size, masks, mask_ids)
        assert cut.crops.dtype == np.uint8 and cut.crops.shape == expected.crops.shape
        np.testing.assert_array_equal(cut.kept, expected.kept)
        assert (cut.outside, cut.invalid) == (expected.outside, expected.invalid)
        np.testing.assert_array_equal(cut.crops, quantise(expected.crops))


def test_quantising_in_the_kernel_rounds_halves_to_even_like_numpy():
    """Normalised values whose x255 lands on (or next to) .5: rint's ties go to the even byte in both."""
    ramp = np.concatenate([[0.0], (np.arange(255, dtype=np.float32) + np.float32(0.5)) / np.float32(255), [1.0]])
    image = np.tile(ramp.astype(np.float32), (3, 1))[:, :, None]  # one row of every tie, min 0 and max 1
    box = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    cut = cut_crops(image, box, ramp.size, as_bytes=True)
    expected = quantise(cut_crops_reference(image, box, ramp.size).crops)
    np.testing.assert_array_equal(cut.crops, expected)
    assert len(np.unique(expected)) > 200  # the ramp covered the byte range


def test_the_compiled_kernel_on_tiles_larger_than_the_crop_and_every_edge_case():
    """Full-image tiles (a view larger than the box: samples more than a pixel apart), boxes partly or
    wholly outside on every side, samples exactly on the first and last row and column."""
    image = np.random.default_rng(3).integers(0, 4096, (13, 17, 2)).astype(np.uint16)
    boxes = np.array([[0.12, 0.23, 0.71, 0.94], [-2.0, -2.0, -1.5, -1.5], [-0.3, 0.1, 0.4, 0.6],
                      [0.5, 0.7, 1.3, 1.2], [-0.5, 0.2, 0.0, 0.8], [0.2, 1.0, 0.9, 1.6], [1.2, 0.1, 1.6, 0.5],
                      [0.0, 0.0, 1.0, 0.5], [0.31, 0.42, 0.77, 0.58], [0.0, 0.0, 1.0, 1.0]])
    for size in (7, 1, 2, 5, 30):
        assert_same_batches(cut_crops(image, boxes, size), cut_crops_reference(image, boxes, size))
    tiles = cell_boxes(full_image_centres(520, 696, 256), 256, (520, 696))
    site = np.random.default_rng(5).integers(0, 255, (520, 696, 3)).astype(np.uint8)
    assert_same_batches(cut_crops(site, tiles, 128), cut_crops_reference(site, tiles, 128))


def test_the_compiled_kernel_cuts_from_several_threads_at_once(site_image):
    """Beam's worker threads call it together (it runs outside the GIL): each gets its own crops."""
    from concurrent.futures import ThreadPoolExecutor

    image, centres = site_image
    boxes = [cell_boxes(centres + shift, 96, image.shape[:2]) for shift in (0.0, 3.3, -7.5, 11.25)]
    expected = [cut_crops_reference(image, b, 96) for b in boxes]
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda b: cut_crops(image, b, 96), boxes * 2))
    for n, batch in enumerate(found):
        assert_same_batches(batch, expected[n % 4])


def test_the_kernel_compiles_without_a_disk_cache_where_none_is_writable(monkeypatch, caplog):
    """A read-only install with no writable home: numba cannot cache, and dpbeam compiles instead of failing."""
    from numba.core import caching

    from dpcore.crop_kernel import compiled

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])  # what numba finds there: no folder

    def add_one(values):
        return values + 1

    function = compiled(add_one)
    assert "numba cannot cache add_one" in caplog.text
    np.testing.assert_array_equal(function(np.arange(3)), [1, 2, 3])


def test_cells_are_cut_by_the_compiled_kernel_and_it_is_loaded_ahead_once(monkeypatch, site_image):
    """cut_crops runs dpcore.crop_kernel (not the numpy reference); commands start loading it ahead, once."""
    from dpcore import crop_kernel, crops

    image, centres = site_image
    calls = []
    kernel = crop_kernel.cut_and_normalise
    monkeypatch.setattr(crop_kernel, "cut_and_normalise", lambda *a, **k: calls.append(a[2]) or kernel(*a, **k))
    monkeypatch.setattr(crops, "crop_and_resize", None)  # the reference is not what runs
    assert len(cut_crops(image, cell_boxes(centres, 64, image.shape[:2]), 64).crops) == len(centres)
    assert calls == [64]

    from dpcore import single_cells

    monkeypatch.setattr(single_cells, "_warming", [])
    loaded, real_load = [], crop_kernel.load_kernel
    monkeypatch.setattr(crop_kernel, "load_kernel", lambda image_type: loaded.append(image_type))
    single_cells.warm_up_cutting(compressed=False)  # original 16-bit images
    single_cells.warm_up_cutting(compressed=True)  # once per process: no second thread
    assert len(single_cells._warming) == 1 and single_cells._warming[0].name == "dpbeam-crop-kernel-warm-up"
    single_cells._warming[0].join(timeout=120)
    assert not single_cells._warming[0].is_alive() and loaded == [np.uint16]
    real_load(np.uint16)  # the real one loads (or compiles) without error
