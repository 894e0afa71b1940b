"""prepare's PNG writer (``dpcore.images.encode_png``) against Pillow's decoder and encoder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from dpcore.images import decode_image, encode_png

REAL_CHANNEL = sorted((Path(__file__).parent / "data/bbbc022/inputs/images").rglob("*.tif"))[0]


def pillow_reads(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.verify()  # chunk CRCs and structure
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize("shape", [(520, 696), (1, 1), (1, 7), (9, 1), (3, 5)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_pillow_decodes_what_we_write(shape, dtype):
    values = np.random.default_rng(sum(shape)).integers(0, np.iinfo(dtype).max, shape, endpoint=True, dtype=dtype)
    data = encode_png(values)
    decoded = pillow_reads(data)
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded.astype(dtype), values)
    np.testing.assert_array_equal(decode_image(data, "test"), values)


def test_a_real_channel_is_as_small_as_pillows_png():
    channel = tifffile.imread(REAL_CHANNEL)
    eight_bit = np.rint(channel / channel.max() * 255).astype(np.uint8)
    ours = encode_png(eight_bit)
    pillow = io.BytesIO()
    Image.fromarray(eight_bit).save(pillow, format="PNG", compress_level=3)
    np.testing.assert_array_equal(pillow_reads(ours), eight_bit)
    assert len(ours) < 1.1 * len(pillow.getvalue()), (len(ours), len(pillow.getvalue()))
    np.testing.assert_array_equal(pillow_reads(encode_png(channel)), channel)  # the 16-bit original too


@pytest.mark.parametrize("shape", [(613, 700), (1, 1), (2, 9)])
def test_pillow_decodes_the_rgb_we_write(shape):
    values = np.random.default_rng(sum(shape)).integers(0, 255, (*shape, 3), endpoint=True, dtype=np.uint8)
    decoded = pillow_reads(encode_png(values))
    assert decoded.shape == (*shape, 3)
    np.testing.assert_array_equal(decoded, values)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2, 3), np.uint16),
                                 np.zeros((2, 2), np.float32), np.zeros((0, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)])
def test_only_2d_integer_images_and_8_bit_rgb_are_encoded(bad):
    with pytest.raises(ValueError, match="2-D uint8/uint16"):
        encode_png(bad)


def test_prepares_pngs_are_decoded_without_pillow_and_others_by_pillow():
    """decode_image reads prepare's own PNGs ("Up" on every row) itself, the same pixels Pillow reads; a PNG
    with Pillow's per-row filters (as DeepProfiler's and other tools' PNGs) goes to Pillow, same result."""
    from dpcore.images import decode_plain_png

    channel = tifffile.imread(REAL_CHANNEL)
    for values in (np.rint(channel / channel.max() * 255).astype(np.uint8), channel):
        ours = encode_png(values)
        decoded = decode_plain_png(ours, "ours")
        assert decoded is not None and decoded.dtype == values.dtype
        np.testing.assert_array_equal(decoded, values)
        np.testing.assert_array_equal(decoded, pillow_reads(ours))
        theirs = io.BytesIO()
        Image.fromarray(values).save(theirs, format="PNG", compress_level=6)
        assert decode_plain_png(theirs.getvalue(), "theirs") is None  # adaptive filters: left to Pillow
        np.testing.assert_array_equal(decode_image(theirs.getvalue(), "theirs"), values)


@pytest.mark.parametrize("damage", ["truncated", "flipped pixel byte", "flipped header byte", "no pixels"])
def test_a_damaged_png_of_ours_fails_as_corrupt(damage):
    from dpcore.images import ImageReadError

    data = bytearray(encode_png(np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8)))
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "flipped pixel byte":
        data[60] ^= 0x10  # inside the IDAT payload: its CRC no longer matches
    elif damage == "flipped header byte":
        data[20] ^= 0x01  # the width, inside IHDR
    else:
        start = data.index(b"IDAT") - 4
        data = data[:start] + data[start + 12 + int.from_bytes(data[start:start + 4], "big"):]
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        decode_image(bytes(data), "damaged.png")


def test_decode_image_reads_prepares_pngs_without_pillow(monkeypatch):
    """The fast path is the one taken: with Pillow's PNG opener broken, prepare's PNGs still decode."""
    import dpcore.images

    values = np.random.default_rng(2).integers(0, 255, (52, 69), dtype=np.uint8)
    data = encode_png(values)

    def no_pillow(*args, **kwargs):
        raise AssertionError("Pillow was asked to decode one of prepare's PNGs")

    monkeypatch.setattr(dpcore.images.Image, "open", no_pillow)
    np.testing.assert_array_equal(decode_image(data, "ours"), values)
