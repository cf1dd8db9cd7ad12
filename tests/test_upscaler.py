import numpy as np
import pytest
import torch

from models.checkpoint import load_model
from models.imaging import bicubic_up, to_float, to_uint8
from models.sampler import SamplerConfig
from models.eager import torch_denoiser
from models.upscaler import TileConfig, blend_tiles, make_tiles, tile_seeds, upscale
from tests.conftest import rgb


@pytest.mark.parametrize("h,w", [(8, 8), (37, 100), (64, 64), (65, 130), (150, 90)])
@pytest.mark.parametrize("overlap", [0, 16, 32])
def test_blending_the_bicubic_tiles_rebuilds_the_bicubic_image(h, w, overlap):
    lr = rgb(h, w, seed=h * w)
    tiles, plan = make_tiles(lr, TileConfig(overlap=overlap))
    assert tiles.shape[1:] == (3, 128, 128)
    out = blend_tiles(tiles, plan)
    assert out.shape == (2 * h, 2 * w, 3)
    diff = np.abs(out.astype(int) - to_uint8(bicubic_up(to_float(lr))).astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3  # equal up to float rounding at .5


def test_tiles_overlap_and_cover():
    _, plan = make_tiles(rgb(100, 200), TileConfig(overlap=16))
    ys = sorted({y for y, _ in plan.origins})
    xs = sorted({x for _, x in plan.origins})
    assert ys[0] == 0 and ys[-1] + 128 == 200 and xs[-1] + 128 == 400
    assert all(b - a <= 112 for a, b in zip(xs, xs[1:]))


def test_seams_are_blended_not_cut():
    """Tiles that each return a constant show a smooth ramp across the overlap, never a jump."""
    tiles, plan = make_tiles(rgb(64, 120), TileConfig(overlap=32))
    vals = np.linspace(-0.5, 0.5, len(tiles), dtype=np.float32)
    out = blend_tiles(np.stack([np.full_like(t, v) for t, v in zip(tiles, vals)]), plan).astype(int)
    row = out[10, :, 0]
    assert np.abs(np.diff(row)).max() <= 8  # a hard seam would jump by ~127 / (tiles - 1)


def test_upscale_is_deterministic_per_seed(tiny_model_dir):
    bundle = load_model(tiny_model_dir)
    den = torch_denoiser(bundle.net)
    lr = rgb(40, 72, seed=5)
    cfg = SamplerConfig("ddpm", 2)
    a = upscale(den, bundle.diffusion, lr, cfg, seed=1)
    b = upscale(den, bundle.diffusion, lr, cfg, seed=1, tiles_cfg=TileConfig(batch=1))  # batching must not matter
    c = upscale(den, bundle.diffusion, lr, cfg, seed=2)
    assert a.shape == (80, 144, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 0.5


def test_tile_seeds_are_distinct():
    s = tile_seeds(7, 100)
    assert len(set(s)) == 100 and set(s).isdisjoint(tile_seeds(8, 100))


def test_progress_counts_every_tile_step_once(tiny_model_dir):
    """The callback a progress bar hangs on: (0, total) first, then every step of every batch, up to the total."""
    bundle = load_model(tiny_model_dir)
    lr = rgb(70, 130, seed=3)  # 2 x 3 tiles, run in batches of 4 and 2
    calls = []
    upscale(torch_denoiser(bundle.net), bundle.diffusion, lr, SamplerConfig("ddim", 2), tiles_cfg=TileConfig(batch=4),
            on_progress=lambda done, total: calls.append((done, total)))
    tiles, _ = make_tiles(lr, TileConfig())
    total = len(tiles) * 2
    assert len(tiles) == 6 and calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == [0, 4, 8, 10, 12]  # batch 1 (4 tiles) twice, then batch 2 (2 tiles) twice
