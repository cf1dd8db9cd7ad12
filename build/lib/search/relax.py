"""Relaxations of the architecture choice and their temperature schedules."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.blocks import MixedOp
from search.supernet import search_slots

RELAXATIONS = ("softmax", "temperature", "gumbel", "gumbel-hard")


@dataclass
class TemperatureSchedule:
    """Decay from t_max to t_min over `steps` steps.

    tanh (the SR3-NAS presentation's sigmoid-like decay), rescaled so that it starts at exactly t_max and
    ends at exactly t_min (the raw form 1 - tanh(3 (2x/w - 1)) stops short of both ends by tanh(3)):
        s(x) = (1 - tanh(3 (2x/w - 1)) / tanh(3)) / 2,   t(x) = min + (max - min) s(x)
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
            s = (1 - math.tanh(3 * (2 * x / w - 1)) / math.tanh(3)) / 2
            return self.t_min + (self.t_max - self.t_min) * s
        if self.kind == "linear":
            return self.t_max + (self.t_min - self.t_max) * x / w
        if self.kind == "exp":
            return self.t_max * (self.t_min / self.t_max) ** (x / w)
        raise ValueError(f"unknown temperature schedule {self.kind!r}")


class Relaxation:
    """alpha -> candidate weights; `step` advances the temperature.

    While training, Gumbel modes draw a sample per slot and per step and record it in `samples` (by slot
    name), so that the cost term prices the very architecture the forward ran. In eval mode every mode is
    deterministic: the slot's probabilities (`probs`).
    """

    def __init__(self, mode: str = "softmax", schedule: TemperatureSchedule | None = None):
        if mode not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {mode!r}; choose from {', '.join(RELAXATIONS)}")
        self.mode, self.schedule, self.step = mode, schedule or TemperatureSchedule(), 0
        self.samples: dict[str, torch.Tensor] = {}

    @property
    def temperature(self) -> float:
        return 1.0 if self.mode == "softmax" else self.schedule(self.step)

    @property
    def stochastic(self) -> bool:
        """Whether the training weights are a random sample (Gumbel) rather than the probabilities."""
        return self.mode.startswith("gumbel")

    def probs(self, alpha: torch.Tensor) -> torch.Tensor:
        """The slot's probabilities: softmax(alpha / T) for (temperature) softmax; softmax(alpha), the law of
        the Gumbel argmax, for Gumbel modes."""
        return torch.softmax(alpha if self.stochastic else alpha / self.temperature, 0)

    def __call__(self, alpha: torch.Tensor, slot: str = "", training: bool = True) -> torch.Tensor:
        if not training:
            return self.probs(alpha)
        if self.stochastic:
            w = F.gumbel_softmax(alpha, tau=self.temperature, hard=self.mode == "gumbel-hard")
        else:
            w = self.probs(alpha)
        self.samples[slot] = w
        return w

    def install(self, net: torch.nn.Module) -> "Relaxation":
        for m in search_slots(net):
            m.weigh = self
            if isinstance(m, MixedOp):
                m.single_path = self.mode == "gumbel-hard"  # GDAS: only the sampled candidate runs
        return self
