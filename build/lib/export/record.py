"""`deploy.json` in a model folder: search-time predicted and measured per-step latency, and the
reduced-precision variants with their measured PSNR cost.

The server publishes the prediction beside what it observes, and picks a variant only when its
recorded PSNR loss is within the allowed budget.

    {"predicted": {"onnxruntime@2t": {"source": LUT path, "host": ..., "threads": 2, "seconds": {"1": s, "8": s}},
                   "onnxruntime@1t": {...},    # one prediction per backend and runtime thread count,
                   "onnxruntime@1t@HOST": {...}},  # and per host where tables of several hosts exist
     "measured":  {"onnxruntime-fp32": {"host": ..., "seconds": {"1": s, ...}}, "torch": {...}},
     "variants":  {"int8": {"file": "model.int8.onnx", "psnr_db": x, "psnr_drop_db": d, "seconds": {...}}},
     "network":   {"params": n, "flops_per_step": f, "tile": 128}}   # counted by torch at export, for serving
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.spec import read_json, write_json

RECORD = "deploy.json"
MAX_PSNR_DROP_DB = 0.1  # a reduced-precision variant may be served only within this loss


def read_record(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / RECORD
    return read_json(path) if path.is_file() else {}


def update_record(model_dir: str | Path, section: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
    """Set record[section][key] = value and write the file back."""
    rec = read_record(model_dir)
    rec.setdefault(section, {})[key] = value
    write_json(Path(model_dir) / RECORD, rec)
    return rec


def interpolate(seconds: dict[str, float], batch: int) -> float | None:
    """Per-step seconds at `batch` from a {batch: seconds} table: linear between the recorded batches,
    and along the last segment beyond them (per-step cost is close to affine in the batch size)."""
    if not seconds:
        return None
    xs = np.array(sorted(int(b) for b in seconds), dtype=float)
    ys = np.array([seconds[str(int(b))] for b in xs], dtype=float)
    if len(xs) == 1:
        return float(ys[0] * batch / xs[0])
    i = int(np.clip(np.searchsorted(xs, batch) - 1, 0, len(xs) - 2))
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return float(ys[i] + slope * (batch - xs[i]))


def predicted_key(backend: str, threads: int | None, host: str | None = None) -> str:
    """Where deploy.json keeps the prediction for `backend` timed with `threads` runtime threads; a table
    timed on other hardware than the first one at that count goes beside it, keyed by its host too."""
    key = f"{backend}@{threads}t" if threads else backend
    return f"{key}@{host}" if host else key


def key_for(record: dict[str, Any], backend: str, pred: dict[str, Any]) -> str:
    """The key a new prediction takes: its thread count's, unless a table of another host holds it."""
    key = predicted_key(backend, pred.get("threads"))
    held = record.get("predicted", {}).get(key)
    if held is not None and held.get("host") != pred.get("host"):
        key = predicted_key(backend, pred.get("threads"), pred.get("host"))
    return key


def predicted_entries(record: dict[str, Any], backend: str) -> list[dict[str, Any]]:
    """Every recorded prediction for `backend` (any thread count or host; a plain key is an older record's)."""
    return [e for k, e in record.get("predicted", {}).items() if k.split("@")[0] == backend and e.get("seconds")]


def predicted_entry(record: dict[str, Any], backends: list[str], threads: int | None,
                    host: str | None = None) -> dict[str, Any] | None:
    """The prediction for the first of `backends` timed with `threads` runtime threads (None: any), preferring
    one timed on `host`: a lookup table holds for the hardware it was timed on."""
    for backend in backends:
        fits = [e for e in predicted_entries(record, backend) if threads is None or e.get("threads") in (None, threads)]
        if fits:
            return next((e for e in fits if e.get("host") == host), fits[0])
    return None


def predicted_step_seconds(model_dir: str | Path, backend: str, batch: int, threads: int | None = None) -> float | None:
    """The search-time (lookup-table) prediction of one denoising step at `batch`, or None if unrecorded."""
    entry = predicted_entry(read_record(model_dir), [backend], threads)
    return interpolate(entry["seconds"], batch) if entry else None


def servable_variant(model_dir: str | Path, wanted: str, max_drop_db: float = MAX_PSNR_DROP_DB) -> str:
    """`wanted` if it is fp32 or a recorded variant within the PSNR budget; otherwise fp32."""
    if wanted == "fp32":
        return "fp32"
    v = read_record(model_dir).get("variants", {}).get(wanted)
    if v and v.get("psnr_drop_db") is not None and v["psnr_drop_db"] <= max_drop_db \
            and (Path(model_dir) / v["file"]).is_file():
        return wanted
    return "fp32"


def network_facts(model_dir: str | Path | None) -> dict[str, Any]:
    """{"params", "flops_per_step"} of the folder's network, as recorded at export (None where unrecorded), so
    that a server describes its model without torch."""
    net = read_record(model_dir).get("network", {}) if model_dir is not None else {}
    return {"params": net.get("params"), "flops_per_step": net.get("flops_per_step")}


def record_network(model_dir: str | Path, net) -> dict[str, Any]:
    """Count the torch network's parameters and FLOPs per step and write them into the record."""
    from models.flops import count_flops, count_params

    size = net.cfg.image_size
    facts = {"params": count_params(net), "flops_per_step": count_flops(net, size, 1, net.cfg.in_channels),
             "tile": size}
    rec = read_record(model_dir)
    rec["network"] = facts
    write_json(Path(model_dir) / RECORD, rec)
    return facts
