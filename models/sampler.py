"""Runtime-agnostic samplers on numpy arrays: respaced ancestral DDPM and DDIM.

The loop only ever calls `denoiser(x, noise_level) -> output`, where x is cat(bicubic, y_t)
(B x 6 x H x W, float32) and noise_level is sqrt(gamma) (B,), all numpy. ONNX Runtime, TensorRT or a
torch network (through `models.eager.torch_denoiser`) can sit behind that callable, so serving needs no
torch. Each batch item draws its noise from its own seed, so an item's result does not depend on what
else shares its batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from models.diffusion import Denoiser, Diffusion, split_prediction
from models.errors import UserError

StepCallback = Callable[[int, np.ndarray, np.ndarray], None]  # (step index, y_t, predicted image)

SAMPLERS = ("ddim", "ddpm")


@dataclass
class SamplerConfig:
    sampler: str = "ddim"
    steps: int = 20
    eta: float = 0.0
    clip: bool = True

    def validate(self, max_steps: int) -> None:
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= max_steps:
            raise UserError(f"steps must be in 1..{max_steps}, got {self.steps}")
        if not 0.0 <= self.eta <= 1.0:
            raise UserError(f"eta must be in [0, 1], got {self.eta}")


def _noise(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs])


def _generators(seeds: Sequence[int] | int | None, n: int) -> list[np.random.Generator]:
    if seeds is None:
        return [np.random.default_rng() for _ in range(n)]
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"need {n} seeds, got {len(seeds)}")
    return [np.random.default_rng(int(s)) for s in seeds]


def sample(denoiser: Denoiser, diffusion: Diffusion, bicubic: np.ndarray, cfg: SamplerConfig,
           seeds: Sequence[int] | int | None = None, on_step: StepCallback | None = None) -> np.ndarray:
    """Super-resolve a batch: `bicubic` is the upsampled LR in [-1,1] (B x 3 x H x W float32); returns
    images in [-1,1]."""
    cfg.validate(diffusion.schedule.T)
    bicubic = np.ascontiguousarray(bicubic, dtype=np.float32)
    b = bicubic.shape[0]
    rngs = _generators(seeds, b)
    g_path, gp_path = diffusion.schedule.respaced(cfg.steps)
    y = _noise(rngs, tuple(bicubic.shape[1:]))
    for k, (g, gp) in enumerate(zip(g_path.tolist(), gp_path.tolist())):
        # both roots from gamma in float64: sqrt(1 - g) from a float32 sqrt(g) loses 1 - g near g = 1
        sg, s1 = np.float32(math.sqrt(g)), np.float32(math.sqrt(max(1.0 - g, 1e-12)))
        out = np.asarray(denoiser(np.concatenate([bicubic, y], axis=1), np.full((b,), sg, dtype=np.float32)))
        x0, eps = split_prediction(diffusion.cfg.prediction, out, y, sg, s1)
        if cfg.clip:
            x0 = diffusion.clip_x0(x0, bicubic)
            eps = (y - sg * x0) / s1
        y = _ddpm_step(y, x0, g, gp, rngs) if cfg.sampler == "ddpm" else _ddim_step(x0, eps, g, gp, cfg.eta, rngs)
        if on_step is not None:
            on_step(k, y, diffusion.to_image(x0, bicubic))
    return diffusion.to_image(y, bicubic).astype(np.float32, copy=False)


def _ddpm_step(y: np.ndarray, x0: np.ndarray, g: float, gp: float, rngs: list[np.random.Generator]) -> np.ndarray:
    """Ancestral step from the posterior q(y_prev | y, x0) of the respaced chain."""
    beta = 1.0 - g / gp
    mean = np.float32(math.sqrt(gp) * beta / (1 - g)) * x0 + np.float32(math.sqrt(1 - beta) * (1 - gp) / (1 - g)) * y
    var = beta * (1 - gp) / (1 - g)
    return mean + np.float32(math.sqrt(var)) * _noise(rngs, tuple(y.shape[1:])) if var > 0 else mean


def _ddim_step(x0: np.ndarray, eps: np.ndarray, g: float, gp: float, eta: float,
               rngs: list[np.random.Generator]) -> np.ndarray:
    sigma = eta * math.sqrt((1 - gp) / (1 - g) * (1 - g / gp))
    y = np.float32(math.sqrt(gp)) * x0 + np.float32(math.sqrt(max(1 - gp - sigma ** 2, 0.0))) * eps
    return y + np.float32(sigma) * _noise(rngs, tuple(x0.shape[1:])) if sigma > 0 else y
