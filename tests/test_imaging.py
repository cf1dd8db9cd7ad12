"""Image decoding shared by the CLI (search/data.load_rgb) and the server: bit depth and EXIF orientation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.imaging import to_rgb
from search.data import load_rgb


def gradient(h: int = 24, w: int = 40) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))


def test_16_bit_grey_png_is_scaled_to_8_bits(tmp_path):
    g8 = gradient()
    path = tmp_path / "grey16.png"
    Image.fromarray(g8.astype(np.uint16) * 257).save(path)  # full 16-bit range
    assert Image.open(path).mode.startswith("I")
    rgb = load_rgb(path)  # what `srnas upscale` reads
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 40, 3)
    np.testing.assert_array_equal(rgb[..., 0], g8)
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_modes_do_not_saturate(mode):
    g8 = gradient()
    arr = g8.astype(np.int32) * 257 if mode == "I" else g8.astype(np.float32)
    rgb = to_rgb(Image.fromarray(arr))
    np.testing.assert_array_equal(rgb[..., 0], g8)


@pytest.mark.parametrize("orientation,shape", [(1, (24, 40)), (3, (24, 40)), (6, (40, 24)), (8, (40, 24))])
def test_exif_orientation_is_applied(tmp_path, orientation, shape):
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:4, :4] = 255  # a white corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100)
    rgb = load_rgb(path)
    assert rgb.shape[:2] == shape
    corner = {1: (0, 0), 3: (-1, -1), 6: (0, -1), 8: (-1, 0)}[orientation]  # where the stored top left lands
    assert rgb[corner[0], corner[1]].mean() > 200
