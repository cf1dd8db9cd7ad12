"""Achieved GFLOP/s per resolution level: each top-level module of the UNet exported and timed alone
in ONNX Runtime on the inputs it sees inside the network (a process of its own, like bench.timing).

    python -m bench.levels MODEL_DIR BATCH THREADS REPS
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.unet import UNet


def level_modules(net: UNet) -> list[tuple[str, int, torch.nn.Module]]:
    """(name, level, module) for the stem, every down/mid/up module and the head."""
    last = len(net.cfg.channel_mults) - 1
    mods = [("stem", 0, net.stem)]
    mods += [(f"down.{i}", lv, m) for i, (m, lv) in enumerate(zip(net.down, net.down_levels))]
    mods += [(f"mid.{i}", last, m) for i, m in enumerate(net.mid)]
    mods += [(f"up.{i}", lv, m) for i, (m, lv) in enumerate(zip(net.up, net.up_levels))]
    return mods + [("head", 0, net.head)]


def _captured_inputs(net: UNet, batch: int) -> dict[str, tuple[torch.Tensor, ...]]:
    seen: dict[str, tuple[torch.Tensor, ...]] = {}

    def keep(name: str):
        def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:  # None: output unchanged
            seen.setdefault(name, args)
        return hook

    hooks = [m.register_forward_hook(keep(name)) for name, _, m in level_modules(net)]
    size = net.cfg.image_size
    with torch.no_grad():
        net(torch.randn(batch, net.cfg.in_channels, size, size), torch.full((batch,), 0.5))
    for h in hooks:
        h.remove()
    return seen


def level_throughput(model_dir: str, batch: int, threads: int, reps: int = 20) -> list[dict[str, Any]]:
    from export.onnx_export import to_onnx
    from export.runtime import RuntimeConfig, ort_session
    from models.checkpoint import load_model
    from search.latency import median_seconds

    net = load_model(model_dir).net.eval()
    inputs = _captured_inputs(net, batch)
    jobs = []
    for name, level, module in level_modules(net):  # all torch work first (see bench.timing)
        args = inputs[name]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(*args)
        names = [f"input{i}" for i in range(len(args))]
        jobs.append((name, level, counter.get_total_flops(), to_onnx(module, args, names),
                     {n: a.numpy() for n, a in zip(names, args)}))
    time.sleep(1.0)
    rows = []
    for name, level, flops, data, feed in jobs:
        sess = ort_session(data, RuntimeConfig(intra_threads=threads, providers=("CPUExecutionProvider",)))
        rows.append({"module": name, "level": level, "resolution": net.cfg.image_size >> level,
                     "flops": int(flops), "seconds": median_seconds(lambda: sess.run(None, feed), 3, reps)})
    return rows


def by_level(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        agg = out.setdefault(r["level"], {"level": r["level"], "resolution": r["resolution"], "flops": 0,
                                          "seconds": 0.0})
        agg["flops"] += r["flops"]
        agg["seconds"] += r["seconds"]
    return [{**a, "gflops_per_s": a["flops"] / a["seconds"] / 1e9} for _, a in sorted(out.items())]


def levels_in_subprocess(model_dir: str, batch: int, threads: int, reps: int = 20) -> list[dict[str, Any]]:
    from bench.timing import in_subprocess

    return in_subprocess("bench.levels", model_dir, str(batch), str(threads), str(reps))


if __name__ == "__main__":
    m, b, t, r = sys.argv[1:5]
    print(json.dumps(level_throughput(m, int(b), int(t), int(r))))
