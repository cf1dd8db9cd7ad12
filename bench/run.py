"""`srnas bench`: per-step latency and images/s of each model on every available backend and batch size,
achieved GFLOP/s against the machine's measured fp32 matmul peak, per-level throughput, and the
search-time prediction beside the measurement. Writes JSON and a BENCHMARKS.md section."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.levels import by_level, levels_in_subprocess
from bench.peak import peak_in_subprocess
from bench.timing import CPU_BACKENDS, GPU_BACKENDS, TimingJob, gpu_missing, time_in_subprocess
from export.record import MAX_PSNR_DROP_DB, predicted_entry, read_record, servable_variant
from export.runtime import cpu_quota


@dataclass
class BenchConfig:
    models: dict[str, str]  # name -> model folder
    batches: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    backends: list[str] = field(default_factory=lambda: [*CPU_BACKENDS, *GPU_BACKENDS])
    threads: int = 0
    reps: int = 20
    level_batch: int = 8


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    from export.runtime import host_id

    return {"host": host_id(), "cpus": cpu_quota(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None}


def available(backends: list[str], models: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Backends that can run here, and why each other one was skipped."""
    skipped: dict[str, str] = {}
    for b in backends:
        why = gpu_missing(b) if b in GPU_BACKENDS else None
        if why:
            skipped[b] = why
        elif b == "onnxruntime-int8":
            unservable = [n for n, d in models.items() if servable_variant(d, "int8") != "int8"]
            if unservable:  # the loader refuses such a variant, as the server would
                skipped[b] = (f"no servable int8 variant for {', '.join(unservable)}: none built, or it loses more "
                              f"than {MAX_PSNR_DROP_DB} dB PSNR(Y) (`srnas deploy --model DIR --int8` measures it)")
    return [b for b in backends if b not in skipped], skipped


def run(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    from models.checkpoint import load_model
    from search.costs import count_flops, count_params
    from export.runtime import host_id

    threads = cfg.threads or cpu_quota()
    backends, skipped = available(cfg.backends, cfg.models)
    jobs = [(name, b) for name in cfg.models for b in backends]
    timings = {}
    for name, b in tqdm(jobs, disable=not progress, desc="bench", unit="job"):
        timings[(name, b)] = time_in_subprocess(TimingJob(cfg.models[name], b, cfg.batches, threads, reps=cfg.reps))
    peak = peak_in_subprocess(threads)
    report: dict[str, Any] = {"machine": machine(), "threads": threads, "peak_fp32_matmul_gflops": peak,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "skipped": skipped, "models": {}}
    for name, path in cfg.models.items():
        bundle = load_model(path)
        steps = int(bundle.defaults["steps"])
        flops = {b: count_flops(bundle.net, bundle.net.cfg.image_size, b) for b in cfg.batches}
        rows = [{"backend": b, "batch": n, "seconds_per_step": timings[(name, b)][str(n)],
                 "images_per_s": n / (steps * timings[(name, b)][str(n)]),
                 "gflops_per_s": flops[n] / timings[(name, b)][str(n)] / 1e9} for b in backends for n in cfg.batches]
        for r in rows:
            r["fraction_of_peak"] = r["gflops_per_s"] / peak
        predicted = (predicted_entry(read_record(path), ["onnxruntime"], threads, host_id()) or {}).get("seconds", {})
        report["models"][name] = {
            "path": path, "params": count_params(bundle.net), "flops_per_step": flops[1], "served_steps": steps,
            "served_sampler": bundle.defaults["sampler"], "rows": rows, "predicted_onnxruntime": predicted,
            "levels": by_level(levels_in_subprocess(path, cfg.level_batch, threads, cfg.reps)),
            "level_batch": cfg.level_batch, "level_reps": cfg.reps}
    return report


def record_measured(report: dict[str, Any]) -> None:
    """Write each model's measured seconds per backend and batch into its deploy.json."""
    from export.record import update_record

    for m in report["models"].values():
        for backend in sorted({r["backend"] for r in m["rows"]}):
            secs = {str(r["batch"]): r["seconds_per_step"] for r in m["rows"] if r["backend"] == backend}
            update_record(m["path"], "measured", backend, {"host": report["machine"]["host"],
                                                           "threads": report["threads"], "created": report["created"],
                                                           "method": "srnas bench (median, as srnas profile --check)",
                                                           "seconds": secs})


def save(report: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out
