import numpy as np
import pytest

from models.imaging import bicubic_down, bicubic_up, to_float, to_uint8
from search.data import CropSampler, Pair, builtin_pairs, crop, degraded_crop, jpeg_pairs
from search.degrade import DegradeConfig, degrade, jpeg

NONE = DegradeConfig(blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0)


def _hr(seed: int = 0, side: int = 96) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.uniform(-1, 1, (3, side, side)), (0, 1.0, 1.0)).astype(np.float32)


def test_without_degradations_it_is_the_quantized_bicubic_downsample():
    hr = _hr()
    lr = degrade(hr, NONE, np.random.default_rng(0))
    assert lr.shape == (3, 48, 48)
    assert np.array_equal(lr, to_float(to_uint8(bicubic_down(hr))))


def test_each_degradation_moves_the_lr_away_from_the_clean_one():
    hr, clean = _hr(), to_float(to_uint8(bicubic_down(_hr())))
    for cfg in (DegradeConfig(blur_prob=1, noise_prob=0, jpeg_prob=0, blur_sigma=(1.0, 1.0)),
                DegradeConfig(blur_prob=0, noise_prob=1, jpeg_prob=0, noise_sigma=(5.0, 5.0)),
                DegradeConfig(blur_prob=0, noise_prob=0, jpeg_prob=1, jpeg_quality=(30, 30))):
        lr = degrade(hr, cfg, np.random.default_rng(0))
        assert 0.005 < np.abs(lr - clean).mean() < 0.2
        assert np.array_equal(lr, to_float(to_uint8(lr)))  # 8-bit, as a file would be


def test_degradation_is_reproducible_from_the_seed():
    cfg = DegradeConfig()
    a, b = (degrade(_hr(), cfg, np.random.default_rng(4)) for _ in range(2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, degrade(_hr(), cfg, np.random.default_rng(5)))


def test_jpeg_quality_orders_the_error():
    lr = bicubic_down(_hr(side=128))
    errs = [np.abs(jpeg(lr, q) - lr).mean() for q in (20, 75, 98)]
    assert errs[0] > errs[1] > errs[2] > 0


@pytest.mark.parametrize("bad", [dict(blur_prob=1.5), dict(jpeg_quality=(0, 50)), dict(jpeg_quality=(90, 80))])
def test_bad_degradation_configs_are_refused(bad):
    with pytest.raises(ValueError):
        DegradeConfig(**bad)


def test_config_round_trips_through_json_lists():
    cfg = DegradeConfig(noise_sigma=(2.0, 3.0))
    back = DegradeConfig.from_dict({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()})
    assert back == cfg and DegradeConfig.from_dict(None) is None


def test_degraded_crop_conditions_on_its_own_lr():
    """The crop's bicubic is the upsample of the degraded LR around it (not of the pair's clean LR), and its
    HR is the pair's; without degradations it equals the clean crop."""
    pair = Pair("x", _hr(side=192), bicubic_down(_hr(side=192)))
    lr, bic, hr = degraded_crop(pair, 32, 48, 64, NONE, np.random.default_rng(0))
    clean = crop(Pair("x", pair.hr, to_float(to_uint8(pair.lr))), 32, 48, 64)
    assert np.array_equal(hr, pair.hr[:, 32:96, 48:112])
    assert np.allclose(lr, clean[0]) and np.allclose(bic, clean[1], atol=1e-5)
    jl, jb, _ = degraded_crop(pair, 32, 48, 64, DegradeConfig(blur_prob=0, noise_prob=0, jpeg_prob=1,
                                                                jpeg_quality=(20, 20)), np.random.default_rng(0))
    assert np.abs(jb - bic).mean() > 0.005
    assert np.allclose(bicubic_up(jl)[:, 8:-8, 8:-8], jb[:, 8:-8, 8:-8], atol=0.02)  # away from the margin


def test_crop_sampler_degrades_when_asked():
    pairs = builtin_pairs("val")
    clean = CropSampler(pairs, 64, seed=2).batch(3)
    real = CropSampler(pairs, 64, seed=2, degradation=DegradeConfig(jpeg_prob=1.0)).batch(3)
    assert clean[0].shape == real[0].shape and np.abs(clean[1] - real[1]).mean() > 1e-3


def test_jpeg_pairs_keep_the_hr_and_compress_the_lr():
    pairs = builtin_pairs("val")[:1]
    (p,) = jpeg_pairs(pairs, 75)
    assert p.hr is pairs[0].hr and p.lr.shape == pairs[0].lr.shape
    assert 0 < np.abs(p.lr - pairs[0].lr).mean() < 0.05
