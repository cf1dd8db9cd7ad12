"""SR3 conditional diffusion: the training objective and the model-output parameterisations.

The network sees cat(bicubic, y) and sqrt(gamma). What it predicts is configurable:
  eps (SR3's default), x0, or v = sqrt(g)*eps - sqrt(1-g)*x0.
What is diffused is either the HR image (SR3) or the residual HR - bicubic, scaled by
`residual_scale` so it spans about the same range as an image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from models.schedule import NoiseSchedule, ScheduleConfig

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DiffusionConfig:
    prediction: str = "eps"  # eps | x0 | v
    target: str = "image"  # image | residual
    residual_scale: float = 1.0
    loss: str = "l1"  # l1 | l2
    schedule: ScheduleConfig = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.schedule is None:
            self.schedule = ScheduleConfig()
        elif isinstance(self.schedule, dict):
            self.schedule = ScheduleConfig(**self.schedule)
        if self.prediction not in ("eps", "x0", "v"):
            raise ValueError(f"unknown prediction {self.prediction!r}")
        if self.target not in ("image", "residual"):
            raise ValueError(f"unknown target {self.target!r}")
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"unknown loss {self.loss!r}")

    def to_dict(self) -> dict:
        return dict(prediction=self.prediction, target=self.target, residual_scale=self.residual_scale,
                    loss=self.loss, schedule=self.schedule.to_dict())


def split_prediction(kind: str, out: torch.Tensor, y: torch.Tensor, sqrt_g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn the network output into (x0, eps) given y_t and sqrt(gamma) broadcastable to y."""
    s1 = (1 - sqrt_g ** 2).clamp_min(0).sqrt()
    if kind == "eps":
        return (y - s1 * out) / sqrt_g, out
    if kind == "x0":
        return out, (y - sqrt_g * out) / s1.clamp_min(1e-8)
    if kind == "v":
        return sqrt_g * y - s1 * out, s1 * y + sqrt_g * out
    raise ValueError(kind)


def make_target(kind: str, x0: torch.Tensor, eps: torch.Tensor, sqrt_g: torch.Tensor) -> torch.Tensor:
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    return sqrt_g * eps - (1 - sqrt_g ** 2).sqrt() * x0


class Diffusion:
    """Maps between images and the diffused variable, and computes the SR3 training loss."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.schedule = NoiseSchedule(cfg.schedule)
        sg = torch.from_numpy(self.schedule.gammas).sqrt().float()
        self._sqrt_g = sg  # sqrt(gamma_t), t = 0..T

    def to_x0(self, hr: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        if self.cfg.target == "residual":
            return (hr - bicubic) * self.cfg.residual_scale
        return hr

    def to_image(self, x0: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        if self.cfg.target == "residual":
            return (bicubic + x0 / self.cfg.residual_scale).clamp(-1, 1)
        return x0.clamp(-1, 1)

    def x0_clip(self) -> float:
        """Bound on |x0|: images live in [-1,1]; residuals of [-1,1] images in [-2,2] before scaling."""
        return 1.0 if self.cfg.target == "image" else 2.0 * self.cfg.residual_scale

    def sample_noise_level(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """SR3's continuous noise level: t ~ U{1..T}, sqrt(gamma) ~ U(sqrt g_t, sqrt g_{t-1})."""
        t = torch.randint(1, self.schedule.T + 1, (n,), generator=generator)
        lo, hi = self._sqrt_g[t], self._sqrt_g[t - 1]
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    def loss(self, model: Denoiser, hr: torch.Tensor, bicubic: torch.Tensor, generator: torch.Generator | None = None,
             teacher: Denoiser | None = None, distill: float = 0.0) -> torch.Tensor:
        """The SR3 loss; with a teacher (same diffusion config), plus `distill` x the distance to its output
        on the same noisy input, as once-for-all style NAS trains subnets from the full network."""
        x0 = self.to_x0(hr, bicubic)
        sqrt_g = self.sample_noise_level(hr.shape[0], generator).to(hr.device)
        eps = torch.randn(x0.shape, generator=generator).to(hr.device)
        sg = sqrt_g[:, None, None, None]
        y = sg * x0 + (1 - sg ** 2).sqrt() * eps
        inp = torch.cat([bicubic, y], dim=1)
        out = model(inp, sqrt_g)
        crit = F.l1_loss if self.cfg.loss == "l1" else F.mse_loss
        loss = crit(out, make_target(self.cfg.prediction, x0, eps, sg))
        if teacher is not None and distill > 0:
            with torch.no_grad():
                guide = teacher(inp, sqrt_g)
            loss = loss + distill * crit(out, guide)
        return loss
