"""PSNR and SSIM on the Y channel (ITU-R BT.601, as MATLAB's rgb2ycbcr), with the usual border crop."""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


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
