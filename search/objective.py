"""How hardware cost enters the architecture loss."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where the loss is computed: the CLI reads FORMS before any torch import
    import torch

FORMS = ("additive", "fbnet", "budget", "absolute")
TARGET_FORMS = ("budget", "absolute")  # forms priced against a target


@dataclass
class CostLossConfig:
    form: str = "additive"
    # additive: task + lambda_flops * FLOPs + lambda_latency * latency (the presentation's scalings;
    # FLOPs per step, latency in seconds per step)
    lambda_flops: float = 5e-17
    lambda_latency: float = 5e-5
    # fbnet: task * fbnet_alpha * log(latency)^fbnet_beta (FBNet's multiplicative form; latency in ms)
    fbnet_alpha: float = 0.2
    fbnet_beta: float = 0.6
    # budget: task + lambda_budget * relu(cost / target - 1), only cost above the target is penalised
    # absolute: task + lambda_budget * |cost / target - 1| (TuNAS's absolute-value reward): cost below the
    # target is penalised too, so the search spends its budget instead of settling anywhere beneath it
    target_flops: float | None = None
    target_latency: float | None = None
    lambda_budget: float = 1.0

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"unknown cost loss form {self.form!r}; choose from {', '.join(FORMS)}")
        for f in fields(self):  # numbers given as text (a hand-built config, JSON from elsewhere) become floats
            value = getattr(self, f.name)
            if f.name != "form" and value is not None:
                try:
                    setattr(self, f.name, float(value))
                except (TypeError, ValueError):
                    raise ValueError(f"cost_loss.{f.name}: expected a number, got {value!r}") from None


def cost_loss(task: torch.Tensor, cfg: CostLossConfig, flops: torch.Tensor | None = None,
              latency: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """Combine the task loss with whichever costs are given (None = not used); `scale` in [0, 1] ramps the
    cost's weight in (the FBNet factor is raised to it, so 0 leaves the task loss alone)."""
    import torch

    if cfg.form == "additive":
        out = task
        if flops is not None:
            out = out + scale * cfg.lambda_flops * flops
        if latency is not None:
            out = out + scale * cfg.lambda_latency * latency
        return out
    if cfg.form == "fbnet":
        if latency is None:
            raise ValueError("the fbnet form needs a latency cost")
        return task * (cfg.fbnet_alpha * torch.log(latency * 1e3).clamp_min(1e-6) ** cfg.fbnet_beta) ** scale
    shape = torch.relu if cfg.form == "budget" else torch.abs
    penalty = torch.zeros(())
    if flops is not None and cfg.target_flops:
        penalty = penalty + shape(flops / cfg.target_flops - 1)
    if latency is not None and cfg.target_latency:
        penalty = penalty + shape(latency / cfg.target_latency - 1)
    return task + scale * cfg.lambda_budget * penalty
