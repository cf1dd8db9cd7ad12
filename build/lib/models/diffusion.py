"""SR3 conditional diffusion: the model-output parameterisations and the map between images and what is
diffused. No torch here: the same arithmetic serves numpy arrays (the sampler, serving) and torch tensors
(training, in `models/sr3_loss.py`), through operators and `.clip` that both have.

The network sees cat(bicubic, y) and sqrt(gamma). What it predicts is configurable:
  eps (SR3's default), x0, or v = sqrt(g)*eps - sqrt(1-g)*x0.
What is diffused is either the HR image (SR3) or the residual HR - bicubic, scaled by
`residual_scale` so it spans about the same range as an image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from models.schedule import NoiseSchedule, ScheduleConfig

Denoiser = Callable[[Any, Any], Any]  # (x, noise_level) -> network output, on whatever arrays the caller uses


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


def _sqrt1m(sqrt_g):
    """sqrt(1 - g) from sqrt(g), for numpy arrays and torch tensors alike."""
    return (1 - sqrt_g ** 2).clip(0, None) ** 0.5


def split_prediction(kind: str, out, y, sqrt_g) -> tuple[Any, Any]:
    """Turn the network output into (x0, eps) given y_t and sqrt(gamma) broadcastable to y."""
    s1 = _sqrt1m(sqrt_g)
    if kind == "eps":
        return (y - s1 * out) / sqrt_g, out
    if kind == "x0":
        return out, (y - sqrt_g * out) / s1.clip(1e-8, None)
    if kind == "v":
        return sqrt_g * y - s1 * out, s1 * y + sqrt_g * out
    raise ValueError(kind)


def make_target(kind: str, x0, eps, sqrt_g):
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    return sqrt_g * eps - _sqrt1m(sqrt_g) * x0


class Diffusion:
    """Maps between images and the diffused variable (the training loss is `models.sr3_loss.sr3_loss`)."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.schedule = NoiseSchedule(cfg.schedule)

    def to_x0(self, hr, bicubic):
        if self.cfg.target == "residual":
            return (hr - bicubic) * self.cfg.residual_scale
        return hr

    def to_image(self, x0, bicubic):
        if self.cfg.target == "residual":
            return (bicubic + x0 / self.cfg.residual_scale).clip(-1, 1)
        return x0.clip(-1, 1)

    def x0_clip(self) -> float:
        """Bound on |x0|: images live in [-1,1]; residuals of [-1,1] images in [-2,2] before scaling."""
        return 1.0 if self.cfg.target == "image" else 2.0 * self.cfg.residual_scale
