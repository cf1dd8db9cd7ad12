"""Image conversions shared by training, the CLI and the server (float CHW in [-1, 1] <-> uint8 HWC)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

SCALE = 2
MIN_SIDE = 8
ORIENTATION = 0x0112  # the EXIF tag


def to_rgb(img: Image.Image) -> np.ndarray:
    """Grayscale, palette, CMYK and RGBA (composited on white) images all become uint8 RGB; 16-bit images
    are scaled to 8 bits (Pillow's own conversion saturates them), and the EXIF orientation is applied
    (a camera's portrait photo is stored sideways with a tag saying so)."""
    if img.getexif().get(ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_to_rgb(img)
    if has_alpha(img):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def has_alpha(img: Image.Image) -> bool:
    """Whether the image carries transparency, which `to_rgb` composites onto white."""
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _high_bit_to_rgb(img: Image.Image) -> np.ndarray:
    """16-bit grey (modes I;16* and I, as PNG gives them) -> uint8 RGB; 0..65535 maps onto 0..255.
    Float images are taken as 0..255 already."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode != "F":
        arr = arr / 257.0
    grey = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def to_float(arr: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 CHW in [-1, 1]."""
    return arr.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float CHW in [-1, 1] -> uint8 HWC."""
    return np.clip(np.round((np.asarray(x, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def resize_float(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic (a = -0.5, as MATLAB) resize of float CHW to (width, height), kept in float."""
    chans = [np.asarray(Image.fromarray(c, mode="F").resize(size, Image.Resampling.BICUBIC)) for c in x]
    return np.stack(chans).astype(np.float32)


def bicubic_up(lr: np.ndarray) -> np.ndarray:
    """x2 bicubic upsample of float CHW: the network's conditioning image."""
    return resize_float(lr, (lr.shape[2] * SCALE, lr.shape[1] * SCALE))


def bicubic_down(hr: np.ndarray) -> np.ndarray:
    """x2 bicubic downscale of float CHW (antialiased, like MATLAB imresize). Odd sides are cropped."""
    h, w = hr.shape[1] // SCALE, hr.shape[2] // SCALE
    return resize_float(hr[:, : h * SCALE, : w * SCALE], (w, h))
