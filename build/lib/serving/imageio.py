"""Untrusted upload bytes -> uint8 RGB, and uint8 RGB -> PNG bytes.

The header is read first and the size checked before any pixel is decoded, so a decompression
bomb costs a few bytes of parsing, never its pixels' memory.
"""
from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.imaging import to_rgb
from serving.config import Limits

FORMATS = ("PNG", "JPEG", "WEBP")


class BadImage(ValueError):
    """The upload is not a usable image; `status` is the HTTP answer (400, 413 or 415)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_size(width: int, height: int, limits: Limits) -> None:
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise BadImage(f"image is {width}x{height}; at most {limits.max_pixels} pixels and "
                       f"{limits.max_side} px a side are accepted", 413)
    if min(width, height) < limits.min_side:
        raise BadImage(f"image is {width}x{height}; each side must be at least {limits.min_side} px")


def probe(data: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) from the header alone, after every check that needs no pixel: what admission
    decides on before anything is decoded."""
    return _read(data, limits, lambda img: img.size)


def decode(data: bytes, limits: Limits) -> np.ndarray:
    return _read(data, limits, lambda img: (img.load(), to_rgb(img))[1])


def _read(data: bytes, limits: Limits, then):
    if not data:
        raise BadImage("the image field is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise BadImage(f"image is {len(data)} bytes; at most {limits.max_bytes} are accepted", 413)
    # Pillow's own bomb guard as a second line, set just above our own limit.
    Image.MAX_IMAGE_PIXELS = max(limits.max_pixels, limits.max_side) * 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                check_size(*img.size, limits)  # header only: nothing decoded yet
                return then(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's own guard; state our limits, not its
        raise BadImage(f"image refused: its header claims {claimed.group(1) if claimed else 'too many'} pixels; "
                       f"at most {limits.max_pixels} pixels and {limits.max_side} px a side are accepted",
                       413) from None
    except UnidentifiedImageError:
        raise BadImage("not a PNG, JPEG or WebP image", 415) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"unreadable image ({exc})") from None


def encode_png(rgb: np.ndarray, level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()
