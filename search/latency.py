"""Latency lookup table: whole candidate blocks timed on the serving backend, plus the fixed rest.

Backends fuse ops (a conv with its activation, GroupNorm's pieces), so each candidate is timed as
the whole unit the network will run, on the backend and thread settings it will be served with.
The fixed rest of the network is the median, over a few random subnets, of measured end-to-end time
minus the sum of their candidates. `check` times other random subnets end to end and reports the
table's error (MAPE), before and after a fitted linear correction.
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from models.checkpoint import read_json, write_json
from models.unet import UNet
from search.costs import SlotCosts
from search.supernet import extract, mixed_ops, random_arch, slot_inputs

BACKENDS = ("torch", "onnxruntime")
Timer = Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], float]


@dataclass
class ProfileConfig:
    backend: str = "onnxruntime"
    batches: list[int] = field(default_factory=lambda: [1])
    threads: int = 0  # 0: the CPU quota, as serving uses
    warmup: int = 3
    reps: int = 15
    size: int = 128
    fixed_subnets: int = 5
    seed: int = 0


def host_id() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}|{cpu}"


def backend_version(backend: str) -> str:
    if backend == "torch":
        return torch.__version__
    import onnxruntime as ort

    return ort.__version__


def median_seconds(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_timer(cfg: ProfileConfig) -> Timer:
    from export.runtime import RuntimeConfig, cpu_quota

    threads = cfg.threads or cpu_quota()
    if cfg.backend == "torch":
        def time_torch(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> float:
            torch.set_num_threads(threads)
            module.eval()
            with torch.inference_mode():
                return median_seconds(lambda: module(*args), cfg.warmup, cfg.reps)
        return time_torch
    if cfg.backend == "onnxruntime":
        from export.onnx_export import to_onnx
        from export.runtime import ort_session

        def time_ort(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> float:
            names = [f"input{i}" for i in range(len(args))]
            sess = ort_session(to_onnx(module, args, names), RuntimeConfig(intra_threads=threads,
                                                                           providers=("CPUExecutionProvider",)))
            feed = {n: a.numpy() for n, a in zip(names, args)}
            return median_seconds(lambda: sess.run(None, feed), cfg.warmup, cfg.reps)
        return time_ort
    raise ValueError(f"unknown backend {cfg.backend!r}; choose from {', '.join(BACKENDS)}")


def time_network(net: UNet, batch: int, timer: Timer, size: int = 128) -> float:
    args = (torch.randn(batch, net.cfg.in_channels, size, size), torch.full((batch,), 0.5))
    return timer(net, args)


class LatencyTable:
    """Entries keyed by slot, candidate, input shape, batch, dtype, backend and version, and host."""

    def __init__(self, meta: dict[str, Any], entries: list[dict[str, Any]], fixed: dict[int, float],
                 correction: dict[int, tuple[float, float]] | None = None):
        self.meta, self.entries, self.fixed = meta, entries, fixed
        self.correction = correction or {}

    def seconds(self, slot: str, candidate: str, batch: int) -> float:
        for e in self.entries:
            if e["slot"] == slot and e["candidate"] == candidate and e["batch"] == batch:
                return e["median_s"]
        raise KeyError(f"no latency entry for {slot}/{candidate} at batch {batch}")

    def slot_costs(self, net: UNet, batch: int = 1) -> SlotCosts:
        if batch not in self.fixed:
            raise ValueError(f"the table has no batch {batch}; it has {sorted(self.fixed)}")
        per_slot = {m.slot: {n: self.seconds(m.slot, n, batch) for n in m.names} for m in mixed_ops(net).values()}
        return SlotCosts(self.fixed[batch], per_slot)

    def predict(self, arch: dict[str, str], batch: int = 1, corrected: bool = True) -> float:
        slots = {e["slot"] for e in self.entries}
        raw = self.fixed[batch] + sum(self.seconds(s, arch[s], batch) for s in slots)
        if corrected and batch in self.correction:
            a, b = self.correction[batch]
            return a * raw + b
        return raw

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "entries": self.entries, "fixed": {str(k): v for k, v in self.fixed.items()},
                "correction": {str(k): list(v) for k, v in self.correction.items()}}

    def save(self, path: str | Path) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        d = read_json(Path(path))
        return cls(d["meta"], d["entries"], {int(k): float(v) for k, v in d["fixed"].items()},
                   {int(k): (float(v[0]), float(v[1])) for k, v in d.get("correction", {}).items()})


def profile(supernet: UNet, cfg: ProfileConfig, progress: bool = True) -> LatencyTable:
    """Time every candidate of every slot as a whole block, then the fixed rest, per batch size."""
    timer = make_timer(cfg)
    meta = {"backend": cfg.backend, "version": backend_version(cfg.backend), "host": host_id(),
            "dtype": "float32", "threads": cfg.threads or _threads(), "config": asdict(cfg),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    entries: list[dict[str, Any]] = []
    ops = mixed_ops(supernet)
    total = len(cfg.batches) * sum(len(m.names) for m in ops.values())
    bar = tqdm(total=total, disable=not progress, desc=f"profile {cfg.backend}", unit="block")
    for batch in cfg.batches:
        inputs = {k: tuple(a.repeat(batch, *[1] * (a.dim() - 1)) for a in v)
                  for k, v in slot_inputs(supernet, cfg.size, 1).items()}
        for m in ops.values():
            for name in m.names:
                entries.append({"slot": m.slot, "candidate": name, "shape": list(inputs[m.slot][0].shape),
                                "batch": batch, "dtype": "float32", "backend": cfg.backend,
                                "version": meta["version"], "host": meta["host"],
                                "median_s": timer(m.candidates[name], inputs[m.slot])})
                bar.update(1)
    bar.close()
    table = LatencyTable(meta, entries, {b: 0.0 for b in cfg.batches})
    rng = torch.Generator().manual_seed(cfg.seed)
    for batch in cfg.batches:  # fixed rest = measured - sum of candidates, median over random subnets
        rests = []
        for _ in range(cfg.fixed_subnets):
            arch = random_arch(supernet, rng)
            rests.append(time_network(extract(supernet, arch), batch, timer, cfg.size)
                         - table.predict(arch, batch, corrected=False))
        table.fixed[batch] = statistics.median(rests)
    return table


def _threads() -> int:
    from export.runtime import cpu_quota

    return cpu_quota()


def check(table: LatencyTable, supernet: UNet, cfg: ProfileConfig, n: int = 20, progress: bool = True) -> dict[str, Any]:
    """Time `n` random subnets end to end; MAPE of the table raw and with a leave-one-out linear fit."""
    timer = make_timer(cfg)
    rng = torch.Generator().manual_seed(cfg.seed + 1000)
    report: dict[str, Any] = {"backend": cfg.backend, "subnets": n, "batches": {}}
    for batch in cfg.batches:
        pred, meas = [], []
        for _ in tqdm(range(n), disable=not progress, desc=f"check batch {batch}"):
            arch = random_arch(supernet, rng)
            pred.append(table.predict(arch, batch, corrected=False))
            meas.append(time_network(extract(supernet, arch), batch, timer, cfg.size))
        p, m = np.array(pred), np.array(meas)
        loo = np.array([np.polyval(np.polyfit(np.delete(p, i), np.delete(m, i), 1), p[i]) for i in range(n)])
        a, b = np.polyfit(p, m, 1)
        raw_mape, fit_mape = _mape(p, m), _mape(loo, m)
        use_fit = fit_mape < raw_mape
        if use_fit:
            table.correction[batch] = (float(a), float(b))
        report["batches"][str(batch)] = {"mape_raw": raw_mape, "mape_corrected_loo": fit_mape,
                                         "correction": [float(a), float(b)] if use_fit else None,
                                         "predicted_s": pred, "measured_s": meas}
    return report


def _mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - meas) / meas) * 100)
