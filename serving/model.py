"""The served models: load each, pick the runtime, warm up, and describe them for /info and the gauges."""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from export.backends import ENGINE_FILE, ONNX_FILES, BackendConfig, LoadedDenoiser, load_denoiser
from export.record import network_facts, predicted_entries, predicted_entry, read_record
from export.runtime import host_id
from models.errors import UserError
from models.spec import WEIGHTS, ModelSpec, read_spec
from serving import metrics
from serving.config import ServeConfig
from serving.prediction import resolve, shared, slowdown

log = logging.getLogger("srnas.serving")


@dataclass
class Served:
    bundle: ModelSpec  # config.json only: the network runs in `denoiser`
    denoiser: LoadedDenoiser
    params: int | None  # as recorded at export (deploy.json), None where unrecorded
    flops_per_step: int | None
    predicted: dict[int, float] = field(default_factory=dict)  # batch size -> seconds per step
    prediction_source: dict[str, Any] = field(default_factory=dict)  # kind (table | calibrated | none) and origin
    loaded_in_s: float = 0.0
    step_s: dict[int, float] = field(default_factory=dict)  # batch size -> seconds per step measured at start
    slowdown: dict[int, float] = field(default_factory=lambda: {1: 1.0})  # workers in a call at once -> factor
    name: str = "default"  # the served name (the `model` form field)
    tag: str = ""  # the BentoML store tag it was loaded from, with its version

    def slowdown_at(self, load: int) -> float:
        return self.slowdown.get(load) or self.slowdown[max(self.slowdown)]

    def idle_step_s(self) -> dict[int, float]:
        """Seconds per step on an idle worker, for admission: the start-up timing ran while the other workers
        warmed up too, so where a latency table holds on this host (it agreed with the warm-up) and predicts
        faster, that is taken."""
        own = self.prediction_source.get("kind") == "table"
        return {b: min(s, self.predicted[b]) if own and b in self.predicted else s for b, s in self.step_s.items()}

    def contention(self) -> float:
        """How much slower than idle the start-up timing ran (>= 1): where the step-time estimate starts,
        so that the first requests after start are not admitted on an idle machine's speed."""
        idle = self.idle_step_s()
        ratios = [self.step_s[b] / idle[b] for b in idle if idle[b] > 0]
        return max(1.0, sum(ratios) / len(ratios)) if ratios else 1.0

    def describe(self) -> dict[str, Any]:
        d = self.bundle.defaults
        net = self.bundle.unet
        return {"name": self.name, "tag": self.tag, "preset": self.bundle.preset, "path": str(self.bundle.path),
                "arch": net.arch or None,
                "unet": net.to_dict(), "params": self.params, "flops_per_step": self.flops_per_step,
                "tile": [net.image_size, net.image_size],
                "backend": {"name": self.denoiser.backend, "variant": self.denoiser.variant,
                            "label": self.denoiser.label, "provider": self.denoiser.provider},
                "defaults": {"steps": d["steps"], "sampler": d["sampler"], "eta": d.get("eta", 0.0)},
                "max_steps_model": self.bundle.diffusion.schedule.T,
                "predicted_step_seconds": {str(b): s for b, s in sorted(self.predicted.items())},
                "prediction_source": self.prediction_source,
                "loaded_in_s": round(self.loaded_in_s, 3)}


def select_backend(bundle: ModelSpec, cfg: ServeConfig) -> LoadedDenoiser:
    """An explicit backend must load; `auto` prefers a TensorRT engine, then ONNX Runtime (torch, which the
    serving install does not have, only when asked for by name)."""
    if cfg.backend != "auto":
        return load_denoiser(bundle, backend_config(cfg.backend, cfg))
    order = (["tensorrt"] if bundle.path and (bundle.path / ENGINE_FILE).is_file() else []) + ["onnxruntime"]
    for name in order:
        try:
            return load_denoiser(bundle, backend_config(name, cfg))
        except Exception as exc:  # a missing runtime or a failed export: fall back to the next one
            log.warning("backend %s unavailable (%s); trying the next", name, exc)
    raise UserError("no backend could load the model")


def backend_config(name: str, cfg: ServeConfig) -> BackendConfig:
    return BackendConfig(name, cfg.variant, cfg.threads, cfg.device, cfg.trt_cache)


def prediction_entry(model_dir: Path | None, loaded: LoadedDenoiser, threads: int) -> dict[str, Any] | None:
    """The search-time prediction for this backend and thread count, this host's table where there is one.
    None if unrecorded: a table timed with another thread count says nothing about this one."""
    if model_dir is None:
        return None
    record = read_record(model_dir)  # read once, not once per batch size
    keys = [loaded.label] + ([loaded.backend] if loaded.variant in ("fp32", "fp16") else [])
    entry = predicted_entry(record, keys, threads, host_id())
    if entry is None:
        other = sorted({e.get("threads") for k in keys for e in predicted_entries(record, k)})
        if other:
            log.warning("no step-latency prediction: the model's tables were timed with %s runtime threads, this "
                        "worker runs %d (profile a table at this count and srnas deploy --lut it)",
                        "/".join(map(str, other)), threads)
    return entry


def warm_up(loaded: LoadedDenoiser, size: int, runs: int, max_batch: int) -> dict[int, float]:
    """One call at the largest batch (the runtime sizes its buffers once), then `runs` at batch 1; then
    two timed calls at each end, whose fastest are the seconds per step admission starts from."""
    def call(b: int) -> float:
        t0 = time.perf_counter()
        loaded.run(np.zeros((b, 6, size, size), np.float32), np.full((b,), 0.5, np.float32))
        return time.perf_counter() - t0

    for b in [max_batch] * bool(runs) + [1] * runs:
        call(b)
    return {b: min(call(b) for _ in range(2)) for b in sorted({1, max_batch})}


def deciding_timing(digest: str, loaded: LoadedDenoiser, cfg: ServeConfig, step_s: dict[int, float]
                    ) -> dict[int, float]:
    """The warm-up timing that decides between the table and calibration: the first worker's of this server, for
    every worker. Each worker times its own warm-up, and near the table's agreement bound two workers chose apart,
    so the published gauge (the largest worker's) and the steps' expected seconds disagreed. The server's process,
    the parent of every worker, is in the key: a later server on this host times its own."""
    if cfg.workers <= 1:
        return step_s
    kept, _ = shared(["warmup", os.getppid(), digest, loaded.label, cfg.threads, cfg.max_batch_size],
                     lambda: {str(b): s for b, s in step_s.items()})
    return {int(b): s for b, s in kept.items()}


def network_digest(model_dir: Path, loaded: LoadedDenoiser) -> str:
    """The content of the network file the backend runs: two served models with the same network share the
    start-up measurements that depend only on it, wherever their folders are."""
    name = {"tensorrt": ENGINE_FILE, "torch": WEIGHTS}.get(loaded.backend, ONNX_FILES.get(loaded.variant, WEIGHTS))
    path = model_dir / name if (model_dir / name).is_file() else model_dir / WEIGHTS
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_models(folders: Mapping[str, tuple[Path, str]], cfg: ServeConfig) -> dict[str, Served]:
    """Every configured model ({name: (folder, store tag)}, the default first), one after another, each warmed
    up on its own. The measurements that depend only on content (the calibration fit of a shared kit, the
    slowdown curve of the same network) are made once and shared (`prediction.shared`)."""
    served = {name: load_served(path, cfg, name, tag) for name, (path, tag) in folders.items()}
    publish_predictions(served.values())
    return served


def publish_predictions(served: Iterable[Served]) -> None:
    """The prediction gauges, by backend label and batch size: the first model of each label (the default
    first) publishes its own. The gauge has no model label; the observed/predicted ratios stay exact all the
    same, since every step adds its own model's prediction to sr_expected_step_seconds_total."""
    seen: set[str] = set()
    for s in served:
        if s.denoiser.label in seen:
            continue
        seen.add(s.denoiser.label)
        for b, seconds in s.predicted.items():
            metrics.PREDICTED_STEP.labels(s.denoiser.label, str(b)).set(seconds)


def load_served(model_dir: str | Path, cfg: ServeConfig, name: str = "default", tag: str = "") -> Served:
    t0 = time.perf_counter()
    bundle = read_spec(model_dir)
    size = bundle.unet.image_size
    try:
        facts, unreadable = network_facts(bundle.path), None
    except (ValueError, OSError) as exc:  # a corrupt deploy.json costs the prediction and the facts, not the service
        facts, unreadable = {"params": None, "flops_per_step": None}, f"deploy.json is unreadable ({exc})"
        log.warning("serving without a step-latency prediction: %s", unreadable)
    loaded = select_backend(bundle, cfg)
    step_s = warm_up(loaded, size, cfg.warmup_runs, cfg.max_batch_size)
    digest = network_digest(bundle.path, loaded) if cfg.workers > 1 else ""  # keys what workers share; one worker shares nothing
    entry = None if unreadable else prediction_entry(bundle.path, loaded, cfg.threads)
    predicted, source = resolve(bundle.path, entry, cfg, deciding_timing(digest, loaded, cfg, step_s))
    if unreadable:
        source["reason"] = unreadable
    served = Served(bundle, loaded, facts["params"], facts["flops_per_step"], predicted, source, step_s=step_s,
                    name=name, tag=tag)
    if predicted and cfg.workers > 1:  # keyed by the network's content, not its folder: see network_digest
        curve, _ = shared(["slowdown", digest, loaded.label, cfg.threads, cfg.workers],
                          lambda: {str(k): v for k, v in slowdown(loaded.run, size, cfg.workers).items()})
        served.slowdown = {int(k): v for k, v in curve.items()}
        source["slowdown"] = {k: round(v, 3) for k, v in curve.items()}
    served.loaded_in_s = time.perf_counter() - t0
    log.info("serving %s as %r on %s (loaded in %.1f s)", bundle.path, name, loaded.label, served.loaded_in_s)
    return served
