import math

import numpy as np
import pytest

from search.metrics import psnr_y, ssim_y, y_channel


def test_y_channel_is_bt601():
    white = np.full((4, 4, 3), 255, np.uint8)
    black = np.zeros((4, 4, 3), np.uint8)
    assert y_channel(white)[0, 0] == pytest.approx(235.0, abs=1e-6)
    assert y_channel(black)[0, 0] == pytest.approx(16.0, abs=1e-6)


def test_psnr_closed_form():
    a = np.full((20, 20, 3), 100, np.uint8)
    b = a.copy()
    b[..., :] = 110  # Y differs by 10 * 219/255 everywhere
    dy = 10 * (65.481 + 128.553 + 24.966) / 255
    assert psnr_y(b, a) == pytest.approx(20 * math.log10(255 / dy), abs=1e-6)
    assert psnr_y(a, a) == math.inf


def test_border_is_excluded():
    a = np.full((20, 20, 3), 100, np.uint8)
    b = a.copy()
    b[:2] = 0  # damage only the 2-px border
    assert psnr_y(b, a, border=2) == math.inf
    assert psnr_y(b, a, border=0) < 30


def test_ssim_bounds():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert ssim_y(a, a) == pytest.approx(1.0)
    assert ssim_y(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), a) < 0.2


def test_consistency_closed_form():
    """Zero for an output whose x2 bicubic downsample is the LR input; a uniform shift of d (in [-1, 1] units)
    gives (d / 2)^2, since the bicubic kernel sums to one."""
    from models.imaging import bicubic_down
    from search.metrics import consistency

    hr = np.random.default_rng(0).uniform(-0.8, 0.8, (3, 32, 32)).astype(np.float32)
    lr = bicubic_down(hr)
    assert consistency(hr, lr) == pytest.approx(0.0, abs=1e-12)
    assert consistency(hr + 0.1, lr) == pytest.approx(0.05 ** 2, rel=1e-4)


def test_high_frequency_ratio_orders_blur_and_noise():
    from scipy.ndimage import gaussian_filter

    from search.metrics import hf_ratio

    rng = np.random.default_rng(1)
    hr = (gaussian_filter(rng.uniform(0, 255, (64, 64)), 1.2)[..., None] * np.ones(3)).clip(0, 255).astype(np.uint8)
    blurred = np.stack([gaussian_filter(hr[..., c].astype(float), 2.0) for c in range(3)], -1).round().astype(np.uint8)
    noisy = (hr + rng.normal(0, 12, hr.shape)).clip(0, 255).round().astype(np.uint8)
    assert hf_ratio(hr, hr) == pytest.approx(1.0)
    assert hf_ratio(blurred, hr) < 0.2
    assert hf_ratio(noisy, hr) > 1.2
