"""The service's own Prometheus metrics, at module level so that BentoML's multiprocess collector
aggregates them across workers on /metrics (BentoML's request and batch metrics stay beside them)."""
from __future__ import annotations

import os
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, REGISTRY

STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

DENOISE_STEP = Histogram("sr_denoise_step_seconds", "Observed latency of one denoising step (one network call)",
                         ["backend", "batch_size"], buckets=STEP_BUCKETS)
# CPU seconds of the worker's process during its steps: where other work shares the CPUs a step waits for one,
# its wall time grows and its CPU time does not, so CPU time over the prediction says whether the estimate held
# and wall over CPU how busy the machine was (threads beyond the runtime's own add a little, never much)
DENOISE_CPU = Counter("sr_denoise_step_cpu_seconds", "Process CPU seconds spent during denoising steps",
                      ["backend", "batch_size"])
# The prediction of each step at the load it ran under (the idle prediction x the slowdown measured at start-up
# for that many workers in a network call at once): observed over this says whether the estimate held
EXPECTED_STEP = Counter("sr_expected_step_seconds", "Predicted seconds of the steps run, each at the number of "
                        "workers in a network call when it started", ["backend", "batch_size"])
PREDICTED_STEP = Gauge("sr_predicted_step_seconds", "Search-time (lookup table) prediction of one denoising step",
                       ["backend", "batch_size"], multiprocess_mode="livemax")
REQUEST_TILES = Histogram("sr_request_tiles", "128x128 HR tiles per /upscale request", buckets=COUNT_BUCKETS)
QUEUE_WAIT = Histogram("sr_queue_wait_seconds", "Time a tile job waited before its batch started",
                       buckets=WAIT_BUCKETS)
SOLO_DIRECT = Counter("sr_solo_direct_requests", "Requests alone in their worker, run without the batch dispatcher")
REQUESTED_STEPS = Histogram("sr_requested_steps", "Denoising steps asked for per /upscale request",
                            buckets=COUNT_BUCKETS)
INFLIGHT = Gauge("sr_inflight_requests", "/upscale requests being processed (HPA custom metric)",
                 multiprocess_mode="livesum")
TILE_STEPS = Counter("sr_tile_steps", "Tile-steps run by the network (a batch of b tiles counts b per step), by "
                     "served model", ["model"])
REFUSED = Counter("sr_refused_requests", "Requests refused at admission, by reason (shed: before the body was "
                  "read; requests, tiles, queue: 503; over_deadline: 422)", ["reason"])
ABANDONED = Counter("sr_abandoned_requests", "Admitted requests cancelled before their answer (disconnect, deadline)",
                    ["reason"])
WORKERS_SATURATED = Gauge("sr_workers_saturated", "Workers past their queue bound (a 1-tile request would be "
                          "refused); /readyz is false while any is", multiprocess_mode="livesum")
WORKERS_READY = Gauge("sr_workers_ready", "Workers with the model loaded and warmed up", multiprocess_mode="livesum")
MODEL_INFO = Gauge("sr_model_info", "The served model (1 per worker that loaded it): its store name and tag, the "
                   "backend label and the ONNX Runtime execution provider that runs it",
                   ["model", "tag", "backend", "provider"], multiprocess_mode="livesum")


def _registry():
    """All workers' samples when BentoML runs prometheus_client in multiprocess mode, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        reg = CollectorRegistry()
        MultiProcessCollector(reg)
        return reg
    return REGISTRY


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed worker stays one until its supervisor reaps it)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _live_files(directory: str) -> list[str]:
    """The live-gauge files of worker processes that still exist. A worker killed by SIGKILL leaves its file
    behind, and its last values (ready: 1) would count until something removes it."""
    import glob

    files = glob.glob(os.path.join(directory, "gauge_live*_*.db"))
    return [f for f in files if _alive(int(os.path.basename(f).rsplit("_", 1)[1].split(".")[0]))]


def reap_dead_workers() -> list[int]:
    """Remove the live-gauge files of dead workers (their in-flight and ready values), so /metrics and
    /readyz stop counting them; a worker calls this when it starts, e.g. after one was killed and respawned."""
    from prometheus_client.multiprocess import mark_process_dead

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return []
    import glob

    pids = {int(os.path.basename(f).rsplit("_", 1)[1].split(".")[0])
            for f in glob.glob(os.path.join(directory, "gauge_live*_*.db"))}
    dead = sorted(p for p in pids if not _alive(p))
    for pid in dead:
        mark_process_dead(pid, directory)
    return dead


def _live_sum(name: str) -> int:
    """A live gauge summed over the workers that are alive now."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client.multiprocess import MultiProcessCollector

        families = MultiProcessCollector.merge(_live_files(directory), accumulate=False)
    else:
        families = REGISTRY.collect()
    return int(sum(s.value for m in families if m.name == name for s in m.samples))


def workers_ready() -> int:
    """How many workers have the model loaded (summed over all workers' samples)."""
    return _live_sum("sr_workers_ready")


def workers_saturated() -> int:
    """How many workers are past their queue bound."""
    return _live_sum("sr_workers_saturated")


def step_latency_summary() -> dict[str, dict[str, dict[str, float]]]:
    """{backend: {batch_size: {"observed_s", "count", "predicted_s"}}} from the live metrics."""
    sums: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for metric in _registry().collect():
        if metric.name not in ("sr_denoise_step_seconds", "sr_predicted_step_seconds"):
            continue
        for s in metric.samples:
            key = (s.labels.get("backend", ""), s.labels.get("batch_size", ""))
            if s.name.endswith("_sum"):
                sums[key]["sum"] = sums[key].get("sum", 0.0) + s.value
            elif s.name.endswith("_count"):
                sums[key]["count"] = sums[key].get("count", 0.0) + s.value
            elif s.name == "sr_predicted_step_seconds":
                sums[key]["predicted_s"] = s.value
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (backend, batch), v in sorted(sums.items(), key=lambda kv: (kv[0][0], int(kv[0][1] or 0))):
        if not v.get("count"):
            continue
        row = {"observed_s": v["sum"] / v["count"], "count": int(v["count"])}
        if "predicted_s" in v:
            row["predicted_s"] = v["predicted_s"]
            row["observed_over_predicted"] = row["observed_s"] / v["predicted_s"]
        out[backend][batch] = row
    return dict(out)
