"""The pictures people judge by: training curves and illumination functions (matplotlib)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dpcore.charts import TRAINING_COLOUR, VALIDATION_COLOUR, illumination_functions, training_curves


def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def pixels_of(image: np.ndarray, colour: str, tolerance: int = 10) -> np.ndarray:
    return np.all(np.abs(image - rgb(colour)) <= tolerance, axis=-1)


def test_curves_have_a_panel_per_metric_and_a_flat_curve_is_not_drawn_on_the_frame():
    rows = [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.5 + 0.1 * e, "val_loss": 0.7, "val_accuracy": 0.5}
            for e in range(1, 6)]
    image = decode(training_curves(rows, "cnn: 2 classes"))
    assert image.shape == (360, 2 * 420, 3)  # loss and accuracy: two panels
    left = image[:, : image.shape[1] // 2]
    assert pixels_of(left, TRAINING_COLOUR).sum() > 100 and pixels_of(left, VALIDATION_COLOUR).sum() > 100
    # The axes frame: the longest dark horizontal lines of the left panel. The flat validation loss must
    # lie strictly between them, well clear of both (a hand-drawn chart put it on the frame).
    dark = np.all(left < 60, axis=-1).sum(axis=1)
    frame_rows = np.flatnonzero(dark > 0.6 * dark.max())
    top, bottom = frame_rows.min(), frame_rows.max()
    orange_rows = np.flatnonzero(pixels_of(left[top:bottom], VALIDATION_COLOUR).sum(axis=1) > 20) + top
    assert len(orange_rows) and orange_rows.min() > top + 10 and orange_rows.max() < bottom - 10


def test_curves_draw_every_metric_logged():
    rows = [{"epoch": 1, "learning_rate": 0.1, "loss": 1.0, "accuracy": 0.4, "top_2": 0.8,
             "average_class_precision": 0.3, "val_loss": 1.1}]
    assert decode(training_curves(rows)).shape == (360, 4 * 420, 3)  # the learning rate is no curve


def test_illumination_picture_has_a_colour_bar_and_shows_the_warning():
    yy, xx = np.mgrid[:520, :696]
    function = 1.0 + 0.5 * np.exp(-((yy - 260) ** 2 + (xx - 348) ** 2) / 2e5)
    stack = np.stack([function, 3.0 - function], axis=-1)  # two channels drawn from one figure
    plain, other = (decode(png) for png in illumination_functions(stack, "20585", ("DNA", "RNA"), 3456))
    warned = decode(illumination_functions(function[:, :, None], "20585", ("DNA",), 12,
                                           "only 12 image(s) per channel")[0])
    assert plain.shape[1] == 700 and plain.shape[0] > 500
    assert other.shape == plain.shape and not np.array_equal(other, plain)
    assert not pixels_of(plain, "#b00020", 25).any()
    assert pixels_of(warned, "#b00020", 25).sum() > 500  # the warning's red box
    # viridis runs from dark purple (low) to yellow (high): both ends appear, in the image and its colour bar.
    for picture in (plain, other):
        assert pixels_of(picture, "#fde725", 30).sum() > 100 and pixels_of(picture, "#440154", 30).sum() > 100
