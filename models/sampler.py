"""Runtime-agnostic samplers: respaced ancestral DDPM and DDIM.

The loop only ever calls `denoiser(x, noise_level) -> output`, where x is cat(bicubic, y_t)
(B x 6 x H x W, float32) and noise_level is sqrt(gamma) (B,). Torch, ONNX Runtime or TensorRT
can sit behind that callable. Each batch item draws its noise from its own seed, so an item's
result does not depend on what else shares its batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from models.diffusion import Denoiser, Diffusion, split_prediction
from models.errors import UserError

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, y_t, predicted image)

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


def _noise(gens: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


def _generators(seeds: Sequence[int] | int | None, n: int) -> list[torch.Generator]:
    if seeds is None:
        seeds = [int(torch.randint(0, 2**31 - 1, ()).item()) for _ in range(n)]
    elif isinstance(seeds, int):
        seeds = [seeds + i for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"need {n} seeds, got {len(seeds)}")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def sample(denoiser: Denoiser, diffusion: Diffusion, bicubic: torch.Tensor, cfg: SamplerConfig,
           seeds: Sequence[int] | int | None = None, on_step: StepCallback | None = None) -> torch.Tensor:
    """Super-resolve a batch: `bicubic` is the upsampled LR in [-1,1]; returns images in [-1,1]."""
    cfg.validate(diffusion.schedule.T)
    b = bicubic.shape[0]
    gens = _generators(seeds, b)
    g_path, gp_path = diffusion.schedule.respaced(cfg.steps)
    clip = diffusion.x0_clip() if cfg.clip else None
    y = _noise(gens, tuple(bicubic.shape[1:]))
    for k, (g, gp) in enumerate(zip(g_path.tolist(), gp_path.tolist())):
        sg = math.sqrt(g)
        out = denoiser(torch.cat([bicubic, y], dim=1), torch.full((b,), sg, dtype=torch.float32))
        x0, eps = split_prediction(diffusion.cfg.prediction, out, y, torch.tensor(sg))
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (y - sg * x0) / math.sqrt(max(1.0 - g, 1e-12))
        y = _ddpm_step(y, x0, g, gp, gens) if cfg.sampler == "ddpm" else _ddim_step(x0, eps, g, gp, cfg.eta, gens)
        if on_step is not None:
            on_step(k, y, diffusion.to_image(x0, bicubic))
    return diffusion.to_image(y, bicubic)


def _ddpm_step(y: torch.Tensor, x0: torch.Tensor, g: float, gp: float, gens: list[torch.Generator]) -> torch.Tensor:
    """Ancestral step from the posterior q(y_prev | y, x0) of the respaced chain."""
    beta = 1.0 - g / gp
    mean = (math.sqrt(gp) * beta / (1 - g)) * x0 + (math.sqrt(1 - beta) * (1 - gp) / (1 - g)) * y
    var = beta * (1 - gp) / (1 - g)
    return mean + math.sqrt(var) * _noise(gens, tuple(y.shape[1:])) if var > 0 else mean


def _ddim_step(x0: torch.Tensor, eps: torch.Tensor, g: float, gp: float, eta: float,
               gens: list[torch.Generator]) -> torch.Tensor:
    sigma = eta * math.sqrt((1 - gp) / (1 - g) * (1 - g / gp))
    y = math.sqrt(gp) * x0 + math.sqrt(max(1 - gp - sigma ** 2, 0.0)) * eps
    return y + sigma * _noise(gens, tuple(x0.shape[1:])) if sigma > 0 else y
