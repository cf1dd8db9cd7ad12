"""Which per-step latency prediction a worker publishes, and where it comes from.

A lookup table holds for the hardware it was timed on, and a CPU model does not say enough: two VMs that both
report "AMD EPYC" ran the same network 3.3x apart. So `auto` takes the table only where it was timed on this
CPU model *and* the warm-up's own timing of the served network agrees with it (0.8-1.25x); otherwise the
table is mapped onto this host from the model folder's calibration kit (reference blocks and networks, never the
served network itself, so that observed/predicted still checks the search's estimate). Whatever fails, the
worker serves: the source says `kind: "none"` and why, and no prediction is published.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.calibration import KIT_DIR, KIT_FILE, Calibration, calibrate_kit
from export.record import interpolate
from export.runtime import cpu_of, host_id
from serving.config import ServeConfig

log = logging.getLogger("srnas.serving")
AGREES = (0.8, 1.25)  # warm-up over table within this: the table holds here


def per_batch(seconds: dict[str, float], max_batch: int) -> dict[int, float]:
    """Per-step seconds for every batch size up to `max_batch` from a {batch: seconds} record."""
    return {b: float(interpolate(seconds, b)) for b in range(1, max_batch + 1)} if seconds else {}


def resolve(model_dir: Path | None, entry: dict[str, Any] | None, cfg: ServeConfig,
            step_s: dict[int, float]) -> tuple[dict[int, float], dict[str, Any]]:
    """(batch -> predicted seconds per step, the prediction's source for /info)."""
    if entry is None:
        return {}, _none("no latency table recorded for this backend and thread count")
    table = per_batch(entry.get("seconds") or {}, cfg.max_batch_size)
    here = host_id()
    timed_on = entry.get("host") or ""
    # the node name is not compared: a pod's is new with every pod, and the warm-up check below is the real test
    src: dict[str, Any] = {"table": entry.get("source"), "timed_on": entry.get("host"), "threads": entry.get("threads"),
                           "this_host": here, "same_host": timed_on == here, "same_cpu": cpu_of(timed_on) == cpu_of(here)}
    ratios = [step_s[b] / table[b] for b in step_s if table.get(b)]
    src["warmup_over_table"] = round(statistics.median(ratios), 3) if ratios else None
    holds = src["same_cpu"] and ratios and AGREES[0] <= src["warmup_over_table"] <= AGREES[1]
    if cfg.prediction == "table" or (cfg.prediction == "auto" and holds):
        return table, {"kind": "table", **src}
    try:
        seconds, detail = _calibrated(model_dir, entry, cfg)
    except (KeyError, TimeoutError, ValueError, OSError) as exc:  # a missing kit, a slow host: serve anyway
        log.warning("no step-latency prediction: calibration failed (%s)", exc)
        return {}, {**_none(f"calibration failed: {exc}"), **src}
    log.info("step-latency prediction: %s (timed on %s) calibrated to this host in %.1f s%s", entry.get("source"),
             entry.get("host"), detail["calibration_seconds"], " (by another worker)" * detail["calibration_cached"])
    return per_batch(seconds, cfg.max_batch_size), {"kind": "calibrated", **src, **detail}


def _calibrated(model_dir: Path | None, entry: dict[str, Any], cfg: ServeConfig
                ) -> tuple[dict[str, float], dict[str, Any]]:
    parts = entry.get("parts")
    if model_dir is None or not parts:
        raise KeyError("the model's deploy.json has no per-part prediction (run srnas deploy with this table)")
    batches = [int(b) for b in parts if int(b) <= cfg.max_batch_size] or [min(int(b) for b in parts)]
    cal, secs, cached = _shared_calibration(model_dir, entry.get("source"), batches, cfg)
    seconds = {str(b): cal.predict(parts[str(b)], b) for b in batches}
    return seconds, {"calibration_seconds": round(secs, 2), "calibration_cached": cached, "fit": cal.to_dict()}


def kit_digest(model_dir: Path) -> bytes:
    """The calibration kit's content (every file's name and bytes, kit.json with the tables' timings included):
    the fit depends on nothing else, so models whose kits match share one fit, wherever their folders are."""
    h = hashlib.sha256()
    for path in sorted(p for p in (Path(model_dir) / KIT_DIR).glob("*") if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.digest()


def _shared_calibration(model_dir: Path, source: str, batches: list[int], cfg: ServeConfig
                        ) -> tuple[Calibration, float, bool]:
    if not (Path(model_dir) / KIT_DIR / KIT_FILE).is_file():
        raise KeyError(f"{Path(model_dir) / KIT_DIR / KIT_FILE} is missing")

    def compute() -> dict[str, Any]:
        cal, secs = calibrate_kit(model_dir, source, batches, cfg.threads, cfg.calibration_timeout_s)
        return {"fit": {str(b): s for b, s in cal.scales.items()}, "seconds": secs}  # unrounded: the same seconds

    kept, cached = shared(["calibration", kit_digest(model_dir), source, cfg.threads, batches], compute)
    return Calibration.from_dict(kept["fit"]), float(kept["seconds"]), cached


def shared(key: list[Any], compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """One worker measures while the others wait for its result: workers timing at once would slow each other
    and each add the same seconds to start-up. The result is kept in the temporary folder (an emptyDir in a pod)
    under a key of `key` and this host, so a restarted worker reuses it. (result, whether it was kept before)."""
    h = hashlib.sha256(host_id().encode())
    for part in key:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
    path = Path(tempfile.gettempdir()) / f"srnas-{key[0]}-{h.hexdigest()[:16]}.json"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            with contextlib.suppress(ValueError):
                return json.loads(path.read_text(encoding="utf-8")), True
        out = compute()
        path.write_text(json.dumps(out), encoding="utf-8")
        return out, False


def slowdown(run: Callable[[np.ndarray, np.ndarray], Any], size: int, workers: int, calls: int = 6
             ) -> dict[int, float]:
    """{k: how much slower one batch-1 step runs while k of them run at once} for k = 1..workers, measured with k
    threads of this process (the runtime releases the GIL), while the other workers wait in `shared`."""
    x, level = np.zeros((1, 6, size, size), np.float32), np.full((1,), 0.5, np.float32)

    def mean_step(k: int) -> float:
        def one(_: int) -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                run(x, level)
            return (time.perf_counter() - t0) / calls

        with ThreadPoolExecutor(k) as pool:
            return statistics.mean(pool.map(one, range(k)))

    run(x, level)
    alone = mean_step(1)
    return {1: 1.0, **{k: max(1.0, mean_step(k) / alone) for k in range(2, workers + 1)}}


def _none(reason: str) -> dict[str, Any]:
    return {"kind": "none", "reason": reason}
