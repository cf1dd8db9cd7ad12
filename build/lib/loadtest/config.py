"""Load-test configuration (loadtest/config.yaml): the request mix, the load shapes and the SLO gate.
Unknown keys and out-of-range values fail with one clear line naming the file and the key."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")
CONFIG_ENV = "SRNAS_LOAD_CONFIG"
SHAPE_ENV = "SRNAS_LOAD_SHAPE"
RECORDS_ENV = "SRNAS_LOAD_RECORDS"  # a JSON-lines file of every request (loadtest/locustfile.py)


class ConfigError(ValueError):
    pass


@dataclass
class SLO:
    max_fail_ratio: float = 0.0  # failed / all requests
    max_p95_ms: float = 60000.0  # over all requests
    min_requests: int = 1  # a run that served fewer proves nothing
    max_rss_growth: float = 0.05  # server RSS, end of run over the baseline


@dataclass
class ImageSpec:
    source: str  # "sample:NAME.png" (serving/samples) or "skimage:NAME" (skimage.data.NAME())
    crop: list[int] | None = None  # [x, y, width, height] in source pixels
    weight: int = 1


@dataclass
class Mix:
    steps: dict[int, int] = field(default_factory=lambda: {1: 1})  # steps -> weight
    samplers: dict[str, int] = field(default_factory=lambda: {"ddim": 1})
    images: list[ImageSpec] = field(default_factory=lambda: [ImageSpec("sample:astronaut-lr.png")])
    timeout_s: float = 300.0
    wait_s: list[float] = field(default_factory=lambda: [0.0, 0.5])  # think time range per user
    # one request per user every pacing_s seconds (Locust's constant_pacing) instead of wait_s: while answers
    # (refusals included) come back within it, users / pacing_s is the arrival rate whatever the server does
    pacing_s: float | None = None


@dataclass
class Shape:
    kind: str  # ramp | soak | spike
    users: int
    duration_s: float
    spawn_rate: float = 1.0
    start_users: int = 1  # ramp: first step
    step_s: float = 10.0  # ramp: seconds per step
    base_users: int = 1  # spike: users before and after the spike
    spike_at_s: float = 0.0  # spike: when it starts
    spike_s: float = 0.0  # spike: how long it lasts
    baseline_s: float = 30.0  # server RSS baseline after this much load (allocators and batch buffers warm up)
    window_s: float = 60.0  # RSS growth compares the medians of the first window after baseline_s and the last
    max_rss_growth: float | None = None  # overrides slo.max_rss_growth (short runs are mostly warm-up)


@dataclass
class LoadConfig:
    shape: str
    shapes: dict[str, Shape]
    mix: Mix = field(default_factory=Mix)
    slo: SLO = field(default_factory=SLO)

    @property
    def selected(self) -> Shape:
        return self.shapes[self.shape]

    @property
    def max_rss_growth(self) -> float:
        override = self.selected.max_rss_growth
        return self.slo.max_rss_growth if override is None else override


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _positive(where: str, **values) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"{where}.{name} must be a positive number, got {v!r}")


def _weights(where: str, table) -> dict:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where} must be a non-empty mapping of value -> weight")
    _positive(where, **{str(k): w for k, w in table.items()})
    return table


def _shape(data, where: str) -> Shape:
    shape = _build(Shape, data, where)
    if shape.kind not in ("ramp", "soak", "spike"):
        raise ConfigError(f"{where}.kind must be ramp, soak or spike, got {shape.kind!r}")
    _positive(where, users=shape.users, duration_s=shape.duration_s, spawn_rate=shape.spawn_rate,
              window_s=shape.window_s)
    if shape.max_rss_growth is not None:
        _positive(where, max_rss_growth=shape.max_rss_growth)
    if shape.kind == "spike" and not 0 <= shape.spike_at_s < shape.spike_at_s + shape.spike_s <= shape.duration_s:
        raise ConfigError(f"{where}: the spike [{shape.spike_at_s}, +{shape.spike_s}] s must lie within "
                          f"duration_s={shape.duration_s}")
    return shape


def _mix(data, where: str) -> Mix:
    mix = _build(Mix, data, where)
    mix.steps = {int(k): v for k, v in _weights(f"{where}.steps", mix.steps).items()}
    mix.samplers = _weights(f"{where}.samplers", mix.samplers)
    _positive(where, timeout_s=mix.timeout_s)
    if mix.pacing_s is not None:
        _positive(where, pacing_s=mix.pacing_s)
    if len(mix.wait_s) != 2 or not 0 <= mix.wait_s[0] <= mix.wait_s[1]:
        raise ConfigError(f"{where}.wait_s must be [min, max] seconds with 0 <= min <= max, got {mix.wait_s}")
    if not mix.images:
        raise ConfigError(f"{where}.images must list at least one image")
    mix.images = [_build(ImageSpec, im, f"{where}.images[{i}]") for i, im in enumerate(mix.images)]
    for i, im in enumerate(mix.images):
        if im.crop is not None and (len(im.crop) != 4 or min(im.crop[2:]) < 8):
            raise ConfigError(f"{where}.images[{i}].crop must be [x, y, width, height] with sides >= 8")
    return mix


def parse(data: dict, where: str, shape: str | None = None) -> LoadConfig:
    data = dict(data)
    shapes = {n: _shape(s, f"{where}: shapes.{n}") for n, s in (data.pop("shapes", None) or {}).items()}
    mix = _mix(data.pop("mix", {}), f"{where}: mix")
    slo = _build(SLO, data.pop("slo", {}), f"{where}: slo")
    _positive(f"{where}: slo", max_p95_ms=slo.max_p95_ms, min_requests=slo.min_requests)
    if not 0 <= slo.max_fail_ratio <= 1:
        raise ConfigError(f"{where}: slo.max_fail_ratio must lie in [0, 1], got {slo.max_fail_ratio}")
    if "shape" not in data:
        raise ConfigError(f"{where}: 'shape' (the default load shape) is required")
    cfg = _build(LoadConfig, {**data, "shapes": shapes, "mix": mix, "slo": slo}, where)
    cfg.shape = shape or cfg.shape
    if cfg.shape not in shapes:
        raise ConfigError(f"{where}: shape {cfg.shape!r} is not one of {sorted(shapes)}")
    return cfg


def load(path: str | os.PathLike | None = None, shape: str | None = None) -> LoadConfig:
    """Read the YAML file ($SRNAS_LOAD_CONFIG or loadtest/config.yaml); $SRNAS_LOAD_SHAPE picks the shape."""
    path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read load-test config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return parse(data or {}, str(path), shape or os.environ.get(SHAPE_ENV) or None)
