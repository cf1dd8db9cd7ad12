"""Which per-step latency prediction a worker publishes, and where it comes from.

A lookup table holds for the hardware it was timed on, and a host name does not say enough: two VMs that both
report "AMD EPYC" ran the same network 3.3x apart. So `auto` takes the table only where it was timed on a host
of this name *and* the warm-up's own timing of the served network agrees with it (0.8-1.25x); otherwise the
table is mapped onto this host from the model folder's calibration kit (reference blocks and networks, never the
served network itself, so that observed/predicted still checks the search's estimate). Whatever fails, the
worker serves: the source says `kind: "none"` and why, and no prediction is published.
"""
from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from export.calibration import calibrate_kit
from export.record import interpolate
from export.runtime import host_id
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
    src: dict[str, Any] = {"table": entry.get("source"), "timed_on": entry.get("host"), "threads": entry.get("threads"),
                           "this_host": here, "same_host": entry.get("host") == here}
    ratios = [step_s[b] / table[b] for b in step_s if table.get(b)]
    src["warmup_over_table"] = round(statistics.median(ratios), 3) if ratios else None
    holds = src["same_host"] and ratios and AGREES[0] <= src["warmup_over_table"] <= AGREES[1]
    if cfg.prediction == "table" or (cfg.prediction == "auto" and holds):
        return table, {"kind": "table", **src}
    try:
        seconds, detail = _calibrated(model_dir, entry, cfg)
    except (KeyError, TimeoutError, ValueError, OSError) as exc:  # a missing kit, a slow host: serve anyway
        log.warning("no step-latency prediction: calibration failed (%s)", exc)
        return {}, {**_none(f"calibration failed: {exc}"), **src}
    log.info("step-latency prediction: %s (timed on %s) calibrated to this host in %.1f s",
             entry.get("source"), entry.get("host"), detail["calibration_seconds"])
    return per_batch(seconds, cfg.max_batch_size), {"kind": "calibrated", **src, **detail}


def _calibrated(model_dir: Path | None, entry: dict[str, Any], cfg: ServeConfig
                ) -> tuple[dict[str, float], dict[str, Any]]:
    parts = entry.get("parts")
    if model_dir is None or not parts:
        raise KeyError("the model's deploy.json has no per-part prediction (run srnas deploy with this table)")
    batches = [int(b) for b in parts if int(b) <= cfg.max_batch_size] or [min(int(b) for b in parts)]
    cal, secs = calibrate_kit(model_dir, entry.get("source"), batches, cfg.threads, cfg.calibration_timeout_s)
    seconds = {str(b): cal.predict(parts[str(b)], b) for b in batches}
    return seconds, {"calibration_seconds": round(secs, 2), "fit": cal.to_dict()}


def _none(reason: str) -> dict[str, Any]:
    return {"kind": "none", "reason": reason}
