"""The Pareto study's baselines and its stopwatch: the table's fastest architecture, random architectures at a
latency target, the base network uniformly narrowed, and the classic network sized to a target.

Latency is measured, not predicted: each network is exported to ONNX and run by ONNX Runtime with the serving
worker's thread count. A figure is the floor's time times the median ratio of alternating runs (the network,
then the floor, one run each), which a busy machine distorts far less than an absolute time: a quiet re-timing
of the floor alone rescales every figure of a study.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from models.classic import FSRCNN, FSRCNNConfig
from models.config import UNetConfig
from models.unet import UNet
from search.latency import LatencyTable
from search.supernet import derive_arch, random_arch, search_slots

SIZE = 128  # HR tile side the service runs


def floor_arch(table: LatencyTable, supernet: UNet) -> dict[str, str]:
    """The architecture the table predicts fastest at batch 1."""
    return {**derive_arch(supernet), **table.fastest(1)}


def slots_differing(a: dict[str, str], b: dict[str, str], supernet: UNet) -> float:
    """Share of searchable slots where two architectures choose differently."""
    slots = [m.slot for m in search_slots(supernet)]
    return sum(a.get(s) != b.get(s) for s in slots) / len(slots)


def random_archs(table: LatencyTable, supernet: UNet, target_s: float, n: int, band: float, seed: int,
                 tries: int = 200_000) -> list[dict[str, str]]:
    """`n` distinct architectures the table predicts within `band` of `target_s`. Each draw starts from the
    floor and re-draws every slot uniformly with a probability q ~ U(0, 1), so draws cover every cost from
    the floor to the slowest; those outside the band are rejected."""
    rng = torch.Generator().manual_seed(seed)
    np_rng = np.random.default_rng(seed)
    floor = floor_arch(table, supernet)
    found: list[dict[str, str]] = []
    for _ in range(tries):
        q = float(np_rng.uniform())
        full = random_arch(supernet, rng)
        arch = {k: (full[k] if np_rng.uniform() < q else v) for k, v in floor.items()}
        if abs(table.predict(arch, 1) / target_s - 1) <= band and arch not in found:
            found.append(arch)
            if len(found) == n:
                return found
    raise ValueError(f"only {len(found)} of {n} random architectures fall within {band:.0%} of "
                     f"{target_s * 1e3:.2f} ms after {tries} draws")


def arch_id(arch: dict[str, str]) -> str:
    """A short stable name for an architecture (its choices, hashed)."""
    return hashlib.sha1(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:10]


class Stopwatch:
    """ONNX Runtime latency at the serving thread count, relative to the floor network (see the module doc)."""

    def __init__(self, threads: int, reps: int = 30, rounds: int = 7):
        self.threads, self.reps, self.rounds = threads, reps, rounds
        self.floor: tuple[Any, dict] | None = None
        self.floor_ms: float | None = None

    def _session(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[Any, dict]:
        from export.onnx_export import to_onnx
        from export.runtime import RuntimeConfig, ort_session

        names = [f"input{i}" for i in range(len(args))]
        sess = ort_session(to_onnx(module, args, names), RuntimeConfig(intra_threads=self.threads,
                                                                       providers=("CPUExecutionProvider",)))
        return sess, {n: a.numpy() for n, a in zip(names, args)}

    def _median_ms(self, sess_feed: tuple[Any, dict], reps: int) -> float:
        sess, feed = sess_feed
        sess.run(None, feed)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    def set_floor(self, net: UNet, quiet_ms: float | None = None) -> float:
        """The reference network; its quiet time is measured now (many runs) unless a stored one is given."""
        self.floor = self._session(net, unet_inputs(net))
        self.floor_ms = quiet_ms if quiet_ms is not None else self._median_ms(self.floor, self.reps * 10)
        return self.floor_ms

    def measure(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """Runs of the network and of the floor alternate one by one; the figure is the floor's time times the
        median of the pairs' ratios."""
        assert self.floor is not None and self.floor_ms is not None, "set_floor first"
        (sess, feed), (fsess, ffeed) = self._session(module, args), self.floor
        sess.run(None, feed), fsess.run(None, ffeed)
        ratios, raw = [], []
        for _ in range(self.reps * self.rounds):
            t0 = time.perf_counter()
            sess.run(None, feed)
            t1 = time.perf_counter()
            fsess.run(None, ffeed)
            t2 = time.perf_counter()
            ratios.append((t1 - t0) / (t2 - t1))
            raw.append((t1 - t0) * 1e3)
        ratio = statistics.median(ratios)
        return {"ms": self.floor_ms * ratio, "ratio_to_floor": ratio, "raw_ms": statistics.median(raw)}


def unet_inputs(net: UNet, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, net.cfg.in_channels, SIZE, SIZE), torch.full((batch,), 0.5)


def classic_inputs(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, SIZE // 2, SIZE // 2), torch.randn(batch, 3, SIZE, SIZE)


def closest(candidates: list[Any], target_ms: float, time_of: Callable[[Any], float]) -> tuple[Any, float]:
    """The candidate whose measured time is closest to the target (in ratio); candidates are ordered by cost,
    so the scan stops once times pass twice the target."""
    best: tuple[Any, float] | None = None
    for c in candidates:
        ms = time_of(c)
        if best is None or abs(np.log(ms / target_ms)) < abs(np.log(best[1] / target_ms)):
            best = (c, ms)
        if ms > 2 * target_ms:
            break
    assert best is not None
    return best


def narrowed_config(base: UNetConfig, target_ms: float, watch: Stopwatch) -> tuple[UNetConfig, float]:
    """The base network (its own blocks everywhere) with one width multiplier on every level: the channel
    base whose measured time is closest to the target."""
    def net_of(c: int) -> UNet:
        return UNet(dataclasses.replace(base, base_channels=c, arch={}))

    cands = list(range(2, base.base_channels + 1))
    c, ms = closest(cands, target_ms, lambda c: watch.measure(net_of(c), unet_inputs(net_of(c)))["ms"])
    return dataclasses.replace(base, base_channels=c, arch={}), ms


CLASSIC_WIDTHS = (8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192)


def classic_config(target_ms: float, watch: Stopwatch) -> tuple[FSRCNNConfig, float]:
    """FSRCNN with the paper's shape (s = 12, m = 4) and the feature width d whose time is closest to target."""
    cfg, ms = closest([FSRCNNConfig(d=d) for d in CLASSIC_WIDTHS], target_ms,
                      lambda c: watch.measure(FSRCNN(c), classic_inputs())["ms"])
    return cfg, ms
