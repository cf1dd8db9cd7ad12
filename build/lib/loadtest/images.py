"""The request images: the bundled LR sample and crops of scikit-image's photographs, PNG-encoded once."""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loadtest.config import ConfigError, ImageSpec

SAMPLES = Path(__file__).resolve().parents[1] / "serving" / "samples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Payload:
    name: str
    png: bytes
    width: int
    height: int
    weight: int


def _pixels(spec: ImageSpec) -> np.ndarray:
    kind, _, name = spec.source.partition(":")
    if kind == "sample":
        path = SAMPLES / name
        if not path.is_file():
            raise ConfigError(f"image {spec.source!r}: no file {path}")
        return np.asarray(Image.open(path).convert("RGB"))
    if kind == "skimage":
        import skimage.data

        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ConfigError(f"image {spec.source!r}: skimage.data has no {name!r}")
        return np.asarray(loader())
    raise ConfigError(f"image {spec.source!r}: source must start with 'sample:' or 'skimage:'")


def payload(spec: ImageSpec) -> Payload:
    pixels = _pixels(spec)
    if spec.crop:
        x, y, w, h = spec.crop
        if y + h > pixels.shape[0] or x + w > pixels.shape[1]:
            raise ConfigError(f"image {spec.source!r}: crop {spec.crop} exceeds {pixels.shape[1]}x{pixels.shape[0]}")
        pixels = pixels[y:y + h, x:x + w]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    name = spec.source.partition(":")[2] + ("@" + "x".join(map(str, spec.crop)) if spec.crop else "")
    return Payload(name, buf.getvalue(), pixels.shape[1], pixels.shape[0], spec.weight)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None if data is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE):
        return None
    return struct.unpack(">II", data[16:24])
