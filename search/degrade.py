"""Degradations of real photos for training and evaluation: what happens to an image before it reaches us.

A camera or a website rarely hands over a clean bicubic downsample: the image is slightly blurred (optics,
resampling), noisy (sensor) and JPEG-compressed. Training on such LR inputs (first-order degradations as in
Real-ESRGAN: blur, x2 downsample, noise, JPEG, each with its own probability and random strength) gives a
model for real photos; the clean model learns to sharpen JPEG blocks and noise as if they were detail.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from models.imaging import bicubic_down, to_float, to_uint8


@dataclass
class DegradeConfig:
    """Random strengths are drawn uniformly from each range; the probabilities are per crop."""

    blur_prob: float = 0.7
    blur_sigma: tuple[float, float] = (0.2, 1.2)  # Gaussian blur of the HR image, in HR pixels
    noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 6.0)  # Gaussian noise on the LR image, in 8-bit levels
    jpeg_prob: float = 0.9
    jpeg_quality: tuple[int, int] = (40, 95)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "noise_prob", "jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"degrade.{name} must be in [0, 1]")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError("degrade.jpeg_quality must be a range within 1..100")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DegradeConfig | None":
        if d is None:
            return None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


VAL_JPEG_QUALITY = 75  # how the real-photo model is scored: test or val LR saved as JPEG at this quality

# HR pixels read around a crop: the widest blur (3 sigma) plus the bicubic margin, kept even
BLUR_MARGIN = 4


def jpeg(lr: np.ndarray, quality: int) -> np.ndarray:
    """float CHW in [-1, 1] -> its JPEG round trip at `quality` (4:2:0 chroma, as cameras and browsers save)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(lr)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return to_float(np.asarray(img.convert("RGB"), dtype=np.uint8))


def degrade(hr: np.ndarray, cfg: DegradeConfig, rng: np.random.Generator) -> np.ndarray:
    """HR float CHW (even sides) -> a degraded x2 LR image, quantized to 8 bits as a real file would be."""
    if rng.random() < cfg.blur_prob:
        sigma = rng.uniform(*cfg.blur_sigma)
        hr = np.stack([gaussian_filter(c, sigma, mode="reflect") for c in hr]).astype(np.float32)
    lr = bicubic_down(hr)
    if rng.random() < cfg.noise_prob:
        lr = lr + rng.normal(0.0, rng.uniform(*cfg.noise_sigma) / 127.5, lr.shape).astype(np.float32)
    lr = to_float(to_uint8(lr))
    if rng.random() < cfg.jpeg_prob:
        lr = jpeg(lr, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    return lr
