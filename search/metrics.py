"""Quality metrics: PSNR and SSIM on the Y channel (ITU-R BT.601, as MATLAB's rgb2ycbcr) with the usual border
crop, SR3's consistency with the LR input, and the high-frequency energy ratio against the original."""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.imaging import bicubic_down


def y_channel(rgb_u8: np.ndarray) -> np.ndarray:
    return rgb2ycbcr(rgb_u8)[..., 0]


def _crop(y: np.ndarray, border: int) -> np.ndarray:
    return y[border:-border, border:-border] if border > 0 else y


def psnr_y(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int = 2) -> float:
    a, b = _crop(y_channel(hr_u8), border), _crop(y_channel(sr_u8), border)
    if np.array_equal(a, b):
        return float("inf")  # identical images; skimage would warn about dividing by zero
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim_y(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int = 2) -> float:
    """Wang et al.'s SSIM: 11x11 Gaussian window, sigma 1.5, population covariance."""
    a, b = _crop(y_channel(hr_u8), border), _crop(y_channel(sr_u8), border)
    return float(structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def consistency(sr: np.ndarray, lr: np.ndarray) -> float:
    """SR3's consistency: MSE between the output taken back down by the x2 bicubic degradation and the LR input,
    on RGB in [0, 1] (a faithful output explains its input; float CHW in [-1, 1] in, 2 LR px of border left out)."""
    down = bicubic_down(np.asarray(sr, dtype=np.float32))
    diff = (down - np.asarray(lr, dtype=np.float32))[:, 2:-2, 2:-2] / 2.0
    return float(np.mean(diff.astype(np.float64) ** 2))


def _top_octave_energy(y: np.ndarray) -> float:
    """Spectral energy of a Y image above half its Nyquist frequency (the top octave), Hann-windowed so that
    the crop's edges do not add energy of their own."""
    h, w = y.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    spec = np.abs(np.fft.fft2((y - y.mean()) * win)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    return float(spec[np.hypot(fy, fx) > 0.25].sum())


def hf_ratio(sr_u8: np.ndarray, hr_u8: np.ndarray) -> float:
    """High-frequency energy of the output over the HR's, on Y in the top octave: 1 matches the original's
    detail, below 1 is blurrier (bicubic), above 1 has more fine texture or noise than the original."""
    ref = _top_octave_energy(y_channel(hr_u8))
    return _top_octave_energy(y_channel(sr_u8)) / ref if ref > 0 else float("nan")
