"""Whole-image x2 super-resolution: bicubic, cut into overlapping tiles, sample, blend the seams.

Tiling and blending are separate steps so a server can batch tiles from many requests together.
The bicubic upsample is taken over the whole image first, so interior tiles see exactly what they
would see in one piece; only the diffusion runs per tile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from models.diffusion import Diffusion
from models.imaging import bicubic_up, to_float, to_uint8
from models.sampler import Denoiser, SamplerConfig, StepCallback, sample

# (tile-steps run so far, tile-steps of the whole image): called once before the first step, then after each;
# a command line draws its progress bar from it, without this package knowing how
Progress = Callable[[int, int], None]


@dataclass
class TileConfig:
    tile: int = 128  # HR tile side (64 LR px), the size the network was trained on
    overlap: int = 16  # HR px shared by neighbouring tiles, feathered linearly
    batch: int = 8  # tiles per network call


@dataclass
class TilePlan:
    """Where each HR tile sits in the padded output, and how to undo the padding."""

    height: int  # output (HR) size before padding
    width: int
    padded: tuple[int, int]
    origins: list[tuple[int, int]]
    tile: int
    overlap: int


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def make_tiles(lr_u8: np.ndarray, cfg: TileConfig) -> tuple[np.ndarray, TilePlan]:
    """Bicubic-upsample the LR image and cut it into (N, 3, tile, tile) float tiles."""
    bic = bicubic_up(to_float(lr_u8))
    h, w = bic.shape[1:]
    ph, pw = max(h, cfg.tile), max(w, cfg.tile)
    if (ph, pw) != (h, w):  # images smaller than a tile are padded by reflection, then cropped back
        bic = np.pad(bic, ((0, 0), (0, ph - h), (0, pw - w)), mode="symmetric")
    origins = [(y, x) for y in _starts(ph, cfg.tile, cfg.overlap) for x in _starts(pw, cfg.tile, cfg.overlap)]
    tiles = np.stack([bic[:, y: y + cfg.tile, x: x + cfg.tile] for y, x in origins])
    return tiles, TilePlan(h, w, (ph, pw), origins, cfg.tile, cfg.overlap)


def _feather(tile: int, overlap: int) -> np.ndarray:
    ramp = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        ramp[:overlap], ramp[-overlap:] = edge, edge[::-1]
    return np.outer(ramp, ramp)


def blend_tiles(tiles: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Weighted average of the overlapping SR tiles -> uint8 HWC of the output size."""
    acc = np.zeros((3, *plan.padded), dtype=np.float32)
    wsum = np.zeros(plan.padded, dtype=np.float32)
    win = _feather(plan.tile, plan.overlap)
    for (y, x), t in zip(plan.origins, tiles):
        acc[:, y: y + plan.tile, x: x + plan.tile] += t * win
        wsum[y: y + plan.tile, x: x + plan.tile] += win
    out = acc / wsum
    return to_uint8(out[:, : plan.height, : plan.width])


def tile_seeds(seed: int, n: int) -> list[int]:
    """One seed per tile, so a tile's noise is the same whatever batch it runs in."""
    return [(seed * 1_000_003 + i) % (2**63 - 1) for i in range(n)]


def sample_tiles(denoiser: Denoiser, diffusion: Diffusion, tiles: np.ndarray, cfg: SamplerConfig,
                 seeds: Sequence[int], batch: int, on_step: StepCallback | None = None) -> np.ndarray:
    out = [sample(denoiser, diffusion, tiles[i: i + batch], cfg, seeds[i: i + batch], on_step)
           for i in range(0, len(tiles), batch)]
    return np.concatenate(out)


def upscale(denoiser: Denoiser, diffusion: Diffusion, lr_u8: np.ndarray, cfg: SamplerConfig,
            seed: int = 0, tiles_cfg: TileConfig | None = None, on_progress: Progress | None = None) -> np.ndarray:
    """x2 super-resolve a uint8 RGB image of any size (at least 8 px a side)."""
    tiles_cfg = tiles_cfg or TileConfig()
    tiles, plan = make_tiles(lr_u8, tiles_cfg)
    sr = sample_tiles(denoiser, diffusion, tiles, cfg, tile_seeds(seed, len(tiles)), tiles_cfg.batch,
                      _counted(on_progress, len(tiles) * cfg.steps))
    return blend_tiles(sr, plan)


def _counted(on_progress: Progress | None, total: int) -> StepCallback | None:
    """The sampler's per-step callback as tile-steps done out of `total` (a step of a batch runs all its tiles)."""
    if on_progress is None:
        return None
    done = 0
    on_progress(done, total)

    def on_step(_k: int, y: np.ndarray, _x0: np.ndarray) -> None:
        nonlocal done
        done += len(y)
        on_progress(done, total)

    return on_step
