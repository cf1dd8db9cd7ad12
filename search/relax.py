"""Relaxations of the architecture choice and their temperature schedules."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from search.supernet import mixed_ops

RELAXATIONS = ("softmax", "temperature", "gumbel", "gumbel-hard")


@dataclass
class TemperatureSchedule:
    """Decay from t_max to t_min over `steps` steps.

    tanh (the SR3-NAS presentation's form, with "+ min" so it ends at the minimum rather than below it):
        t(x) = (1 - tanh(3 (x - w/2) / (w/2))) * (max - min) / 2 + min
    linear and exponential are options.
    """

    kind: str = "tanh"
    t_max: float = 20.0
    t_min: float = 0.08
    steps: int = 1000

    def __call__(self, x: int) -> float:
        w = max(self.steps, 1)
        x = min(max(x, 0), w)
        if self.kind == "tanh":
            return (1 - math.tanh(3 * (x - w / 2) / (w / 2))) * (self.t_max - self.t_min) / 2 + self.t_min
        if self.kind == "linear":
            return self.t_max + (self.t_min - self.t_max) * x / w
        if self.kind == "exp":
            return self.t_max * (self.t_min / self.t_max) ** (x / w)
        raise ValueError(f"unknown temperature schedule {self.kind!r}")


class Relaxation:
    """alpha -> candidate weights; `step` advances the temperature."""

    def __init__(self, mode: str = "softmax", schedule: TemperatureSchedule | None = None):
        if mode not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {mode!r}; choose from {', '.join(RELAXATIONS)}")
        self.mode, self.schedule, self.step = mode, schedule or TemperatureSchedule(), 0

    @property
    def temperature(self) -> float:
        return 1.0 if self.mode == "softmax" else self.schedule(self.step)

    def __call__(self, alpha: torch.Tensor) -> torch.Tensor:
        if self.mode in ("softmax", "temperature"):
            return torch.softmax(alpha / self.temperature, 0)
        return F.gumbel_softmax(alpha, tau=self.temperature, hard=self.mode == "gumbel-hard")

    def install(self, net: torch.nn.Module) -> "Relaxation":
        for m in mixed_ops(net).values():
            m.weigh = self
            m.single_path = self.mode == "gumbel-hard"  # GDAS: only the sampled candidate runs
        return self
