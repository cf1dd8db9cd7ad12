"""Noise schedules and their K-step respacing (all in float64, then cast)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.errors import UserError


@dataclass
class ScheduleConfig:
    """SR3's linear beta schedule by default."""

    kind: str = "linear"  # linear | cosine
    timesteps: int = 2000
    beta_start: float = 1e-6
    beta_end: float = 1e-2

    def to_dict(self) -> dict:
        return dict(kind=self.kind, timesteps=self.timesteps, beta_start=self.beta_start, beta_end=self.beta_end)


class NoiseSchedule:
    """gamma_t = prod_{s<=t} (1 - beta_s) for t = 1..T, with gamma_0 = 1 (index 0)."""

    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        self.betas = make_betas(cfg)
        self.gammas = np.concatenate([[1.0], np.cumprod(1.0 - self.betas)])  # gammas[t], t=0..T

    @property
    def T(self) -> int:
        return self.cfg.timesteps

    def timesteps_for(self, steps: int) -> np.ndarray:
        """K timesteps with trailing spacing: T, T - T/K, ..., T/K (rounded); K = T gives every step.

        The path starts at pure noise (t = T) and its last call sits at T/K, not at t = 1, where the network
        would only remove noise of about 1e-3 (a wasted call: K = 2 then did what K = 1 does)."""
        if not 1 <= steps <= self.T:
            raise UserError(f"steps must be in 1..{self.T}, got {steps}")
        # spacing T/K >= 1, so the rounded steps stay distinct and the last is >= 1
        return np.round(self.T - np.arange(steps) * (self.T / steps)).astype(np.int64)

    def respaced(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(gamma_k, gamma_prev_k) along the K-step path; gamma_prev of the last step is 1."""
        ts = self.timesteps_for(steps)
        g = self.gammas[ts]
        g_prev = np.concatenate([g[1:], [1.0]])
        return g, g_prev


def make_betas(cfg: ScheduleConfig) -> np.ndarray:
    if cfg.kind == "linear":
        return np.linspace(cfg.beta_start, cfg.beta_end, cfg.timesteps, dtype=np.float64)
    if cfg.kind == "cosine":  # Nichol & Dhariwal; offered for the few-step schedule study
        s, T = 0.008, cfg.timesteps
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
        return np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")
