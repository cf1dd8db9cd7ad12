"""Serving configuration: one dataclass, read from SRNAS_* environment variables.

Workers x runtime threads must fit the CPU quota of the container. By default each CPU gets a worker
with one runtime thread: on 2 cores that serves 16 clients at 1.7-2.0x one client's rate, where one worker
with 2 threads gains nothing (its event loop competes with the runtime for the same cores; BENCHMARKS.md).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from export.runtime import cpu_quota
from models.errors import UserError
from models.spec import SHIPPED_MODELS

SERVICE_NAME = "srnas"
PREDICTIONS = ("auto", "table", "calibrated")
# The one mapping of served model names (the `model` form field) to BentoML store tags, SRNAS_MODELS: the
# shipped models under srnas-<name>. The first entry is what a request without `model` gets.
DEFAULT_MODELS = ",".join(f"{name}={SERVICE_NAME}-{name}" for name in SHIPPED_MODELS)
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # short: it travels in every tile job
STORE_TAG = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?(:[A-Za-z0-9._-]+)?")  # BentoML's name[:version]


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if isinstance(default, str):
        return raw
    try:
        return type(default)(raw)
    except ValueError:
        raise UserError(f"{name} must be {type(default).__name__}, got {raw!r}") from None


def parse_models(text: str) -> dict[str, str]:
    """SRNAS_MODELS, "name=tag,name=tag", as {served name: store tag} in its order (the first is the default)."""
    models: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, eq, tag = (x.strip() for x in item.partition("="))
        if not eq or not MODEL_NAME.fullmatch(name) or not STORE_TAG.fullmatch(tag):
            raise UserError(f"SRNAS_MODELS: {item!r} is not NAME=STORE_TAG (a lowercase name, a BentoML model tag), "
                            f"e.g. {DEFAULT_MODELS}")
        if name in models:
            raise UserError(f"SRNAS_MODELS names {name!r} twice")
        models[name] = tag
    if not models:
        raise UserError(f"SRNAS_MODELS lists no model; e.g. {DEFAULT_MODELS}")
    return models


def configured_models() -> dict[str, str]:
    """{served name: store tag} as this environment configures them (SRNAS_MODELS, else the shipped ones)."""
    return parse_models(_env("SRNAS_MODELS", DEFAULT_MODELS))


@dataclass
class Limits:
    """What one request may ask for; past these the answer is 4xx (413 for size)."""

    max_bytes: int = 16 * 2**20  # upload size
    max_pixels: int = 512 * 512  # LR pixels (the output has 4x as many)
    max_side: int = 4096  # LR px on either side
    min_side: int = 8  # LR px on the shorter side
    max_steps: int = 100  # denoising steps a request may ask for


@dataclass
class ServeConfig:
    models: str = DEFAULT_MODELS  # SRNAS_MODELS: served name=store tag, comma-separated; the first is the default
    backend: str = "auto"  # auto: TensorRT engine when present, else ONNX Runtime; torch only by name
    variant: str = "fp32"  # fp32, int8 (model.int8.onnx), auto: the fastest recorded within the PSNR budget
    # ONNX Runtime's device: auto (the GPU where this ONNX Runtime build has CUDA or TensorRT), cpu, cuda
    device: str = "auto"
    trt_cache: str = ""  # TensorRT engine and timing caches (a volume): the first start builds, later ones load
    workers: int = 0  # 0: the CPU quota // threads
    threads: int = 0  # runtime threads per worker; 0: 1, or the quota // workers when workers is set
    max_batch_size: int = 16  # tiles per network call (BentoML adaptive batching)
    # BentoML's own queueing bound for a tile job; 0: off (the bound is then SRNAS_TIMEOUT_S). Its learned
    # latency model ignores steps, so after slow batches it refused every request for minutes: admission by
    # cost (deadline_s) decides instead
    max_latency_ms: int = 0
    deadline_s: float = 30.0  # a request is admitted only if it can be answered within this, else 503/422
    # admit if the estimate is within this share of the deadline: estimates err low when the CPUs are shared
    # (a Locust spike on the serving host: 7 of 53 admitted answers missed a 2 s deadline at 0.8, 1 of 45 at 0.6)
    admit_headroom: float = 0.6
    max_inflight_requests: int = 16  # per worker; past it: 503 + Retry-After
    max_inflight_tiles: int = 256  # per worker
    retry_after_s: int = 2  # Retry-After while loading or draining (refusals by cost compute their own)
    timeout_s: int = 300  # BentoML's request timeout (s)
    upload_timeout_s: float = 30.0  # a request body not complete by then gets 408 (slow uploads)
    warmup_runs: int = 2  # network calls at start-up, before /readyz turns true
    # the per-step latency prediction published beside what is observed: "table" (the search's lookup table),
    # "calibrated" (that table mapped onto this host by timing the model folder's reference blocks at start-up),
    # "auto" (the table where it was timed on this CPU model and the warm-up agrees with it, else calibrated)
    prediction: str = "auto"
    calibration_timeout_s: float = 60.0  # past this the server serves without a prediction
    overlap: int = 16  # HR px shared by neighbouring tiles
    dispatch_poll_ms: float = 1.0  # how often BentoML's batch dispatcher polls while a batch runs
    cpu_gate: int = 1  # 1: image decoding/encoding never overlaps a network call (no CPU contention)
    solo_direct: int = 1  # 1: a request alone in its worker skips the batch dispatcher (nothing to batch with)
    png_level: int = 1  # zlib level of the answer: 1 encodes ~2x faster than Pillow's 6 for ~10% more bytes
    limits: Limits = field(default_factory=Limits)

    @property
    def model_tags(self) -> dict[str, str]:
        """{served name: BentoML store tag}, in the configured order."""
        return parse_models(self.models)

    @property
    def default_model(self) -> str:
        return next(iter(self.model_tags))

    @property
    def dispatcher_latency_ms(self) -> int:
        return self.max_latency_ms or self.timeout_s * 1000

    @classmethod
    def from_env(cls) -> "ServeConfig":
        d = cls()
        lim = Limits(*(_env(f"SRNAS_{k.upper()}", v) for k, v in asdict(Limits()).items()))
        cfg = cls(**{k: _env(f"SRNAS_{k.upper()}", v) for k, v in asdict(d).items() if k != "limits"},
                  limits=lim)
        cfg.resolve_cpus(cpu_quota())
        cfg.validate()
        return cfg

    def resolve_cpus(self, quota: int) -> None:
        """Fill in workers and threads so that workers * threads <= quota."""
        if self.workers and self.threads and self.workers * self.threads > quota:
            raise UserError(f"SRNAS_WORKERS x SRNAS_THREADS = {self.workers * self.threads} exceeds the "
                            f"{quota} CPUs this container may use")
        if not self.workers:
            self.workers = max(1, quota // (self.threads or 1))
        if not self.threads:
            self.threads = max(1, quota // self.workers)
        if self.workers * self.threads > quota:
            raise UserError(f"SRNAS_WORKERS={self.workers} leaves no CPU for runtime threads "
                            f"(quota {quota})")

    def validate(self) -> None:
        parse_models(self.models)  # a bad SRNAS_MODELS stops the start, saying why
        if self.max_latency_ms < 0:
            raise UserError("SRNAS_MAX_LATENCY_MS must be >= 0 (0: off)")
        if not 0 < self.deadline_s <= self.timeout_s:
            raise UserError("SRNAS_DEADLINE_S must be > 0 and at most SRNAS_TIMEOUT_S")
        if self.upload_timeout_s <= 0:
            raise UserError("SRNAS_UPLOAD_TIMEOUT_S must be > 0")
        if self.prediction not in PREDICTIONS:
            raise UserError(f"SRNAS_PREDICTION must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.calibration_timeout_s <= 0:
            raise UserError("SRNAS_CALIBRATION_TIMEOUT_S must be > 0")
        if not 0 < self.admit_headroom <= 1:
            raise UserError("SRNAS_ADMIT_HEADROOM must be in (0, 1]")
        for name in ("max_batch_size", "max_inflight_requests", "max_inflight_tiles",
                     "timeout_s", "retry_after_s"):
            if getattr(self, name) < 1:
                raise UserError(f"SRNAS_{name.upper()} must be >= 1")
        if self.max_batch_size < 2:
            raise UserError("SRNAS_MAX_BATCH_SIZE must be >= 2 (BentoML's adaptive batching)")
        if not 0 <= self.png_level <= 9:
            raise UserError("SRNAS_PNG_LEVEL must be in 0..9")
        if not 0 <= self.overlap < 64:
            raise UserError("SRNAS_OVERLAP must be in 0..63")
        if self.limits.max_steps < 1 or self.limits.max_pixels < 64 or self.limits.max_bytes < 1024:
            raise UserError("SRNAS_MAX_STEPS >= 1, SRNAS_MAX_PIXELS >= 64 and SRNAS_MAX_BYTES >= 1024")
