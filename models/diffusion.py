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
    """sqrt(1 - g) from sqrt(g), for numpy arrays and torch tensors alike. Near g = 1 a float32 sqrt(g) loses
    1 - g (at g = 1 - 1e-6 by about 10 %), so callers that know g pass sqrt(1 - g) computed in float64."""
    return (1 - sqrt_g ** 2).clip(0, None) ** 0.5


def split_prediction(kind: str, out, y, sqrt_g, sqrt_1mg=None) -> tuple[Any, Any]:
    """Turn the network output into (x0, eps) given y_t, sqrt(gamma) and sqrt(1 - gamma), broadcastable to y."""
    s1 = _sqrt1m(sqrt_g) if sqrt_1mg is None else sqrt_1mg
    if kind == "eps":
        return (y - s1 * out) / sqrt_g, out
    if kind == "x0":
        return out, (y - sqrt_g * out) / s1.clip(1e-8, None)
    if kind == "v":
        return sqrt_g * y - s1 * out, s1 * y + sqrt_g * out
    raise ValueError(kind)


def make_target(kind: str, x0, eps, sqrt_g, sqrt_1mg=None):
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    return sqrt_g * eps - (_sqrt1m(sqrt_g) if sqrt_1mg is None else sqrt_1mg) * x0


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

    def clip_x0(self, x0, bicubic):
        """x0 clipped per pixel to what keeps the image inside [-1, 1]: for a residual target that is
        [(-1 - bicubic), (1 - bicubic)] x scale, which bites on every pixel a global bound of 2 x scale misses."""
        if self.cfg.target == "residual":
            s = self.cfg.residual_scale
            return x0.clip((-1 - bicubic) * s, (1 - bicubic) * s)
        return x0.clip(-1, 1)
