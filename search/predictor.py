"""A network-wise latency predictor beside the lookup table: log latency learned from architecture features.

The table adds up blocks timed one by one; this learns whole networks from measured ones (the table's `--check`
runs, the calibration's reference networks, any extra random subnets), so it sees what the sum misses (fusion
across blocks, memory traffic between them). Features, per architecture: the FLOPs of one step (log), how many
slots chose each candidate, and the width multiplier of each level. A ridge regression on log seconds keeps
errors relative and needs no more than a few dozen measured networks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.flops import count_flops
from models.unet import UNet
from search.supernet import extract, search_slots


@dataclass
class Featurizer:
    candidates: list[str]
    widths: list[str]  # the width slots, in order
    _flops: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, supernet: UNet) -> "Featurizer":
        slots = search_slots(supernet)
        names = sorted({n for m in slots for n in m.names if not m.slot.startswith("width")})
        return cls(names, [m.slot for m in slots if m.slot.startswith("width")])

    def __call__(self, arch: dict[str, str], supernet: UNet) -> np.ndarray:
        key = repr(sorted(arch.items()))
        if key not in self._flops:
            net = extract(supernet, arch)
            self._flops[key] = float(count_flops(net, net.cfg.image_size, 1, net.cfg.in_channels))
        counts = [sum(v == c for s, v in arch.items() if not s.startswith("width")) for c in self.candidates]
        return np.array([math.log(self._flops[key]), *counts, *(float(arch[w]) for w in self.widths)])


@dataclass
class RidgePredictor:
    alpha: float = 1.0
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    coef: np.ndarray | None = None

    def fit(self, x: np.ndarray, seconds: np.ndarray) -> "RidgePredictor":
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-9
        z = np.hstack([np.ones((len(x), 1)), (x - self.mean) / self.scale])
        reg = self.alpha * np.eye(z.shape[1])
        reg[0, 0] = 0.0  # the intercept is not shrunk
        self.coef = np.linalg.solve(z.T @ z + reg, z.T @ np.log(seconds))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = np.hstack([np.ones((len(x), 1)), (x - self.mean) / self.scale])
        return np.exp(z @ self.coef)

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist()}


def cross_validated(x: np.ndarray, seconds: np.ndarray, folds: int = 5, alpha: float = 1.0, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions: every network predicted by a model that never saw it."""
    order = np.random.default_rng(seed).permutation(len(x))
    out = np.empty(len(x))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        out[test] = RidgePredictor(alpha).fit(x[train], seconds[train]).predict(x[test])
    return out
