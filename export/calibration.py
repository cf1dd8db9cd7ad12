"""Map a latency table timed on one host onto another from about a minute of reference timings.

A table's prediction of a network is a sum of parts: the seconds of its chosen candidate blocks, grouped by
candidate (conv3x3, dwsep3x3, self-attention, ...), plus the table's "rest" (stem, embeddings, norms, head).
Hosts differ by more than one factor: between the two 2-core hosts whose tables ship with the project, a 3x3
convolution ran 0.41x as long on one as on the other but a depthwise-separable block 0.31x. So the fit has one
scale per candidate and batch, from a few reference blocks timed here and in the table, and one scale per batch
for the rest, from a few whole reference networks (what their measured time leaves over after the scaled
blocks). Used by `srnas profile --calibrate` (search) and by the server at start-up (no torch needed here).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from models.spec import read_json

REST = "rest"  # the part of a prediction outside the searched blocks
ANY = "*"  # the scale for a candidate without a reference of its own: the geometric mean over every reference


def pick_blocks(entries: Iterable[dict[str, Any]], per_candidate: int = 3) -> list[dict[str, Any]]:
    """Reference blocks: for every candidate, the table's batch-1 entries at evenly spaced quantiles of its times
    (the 1/4, 1/2 and 3/4 quantiles for 3), which avoids the extremes where timing noise is largest."""
    by: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e["batch"] == 1:
            by.setdefault(e["candidate"], []).append(e)
    picked = []
    for name in sorted(by):
        es = sorted(by[name], key=lambda e: (e["median_s"], e["slot"], e["shape"]))
        idx = {int((i + 1) / (per_candidate + 1) * (len(es) - 1)) for i in range(per_candidate)}
        picked += [es[i] for i in sorted(idx)]
    return picked


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


@dataclass
class Calibration:
    """{batch: {candidate | REST | ANY: scale}}: measured here over timed in the source table."""
    scales: dict[int, dict[str, float]] = field(default_factory=dict)

    def scale(self, batch: int, part: str) -> float:
        s = self.scales[batch]
        return s.get(part, s[ANY])

    def predict(self, parts: dict[str, float], batch: int) -> float:
        """Seconds here for a network the source table splits into `parts` at `batch`."""
        return sum(self.scale(batch, p) * seconds for p, seconds in parts.items())

    def to_dict(self) -> dict[str, Any]:
        return {str(b): {k: round(v, 5) for k, v in sorted(s.items())} for b, s in sorted(self.scales.items())}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls({int(b): {k: float(v) for k, v in s.items()} for b, s in d.items()})


def fit(blocks: list[tuple[str, int, float, float]], nets: list[tuple[int, dict[str, float], float]]) -> Calibration:
    """`blocks`: (candidate, batch, table seconds, measured seconds); `nets`: (batch, the table's parts of the
    network, measured seconds). Candidates: geometric mean of measured/table. Rest: the median over networks of
    the measured time left after the scaled blocks, over the table's rest (at least a tenth of ANY, so that a
    noisy reference cannot make the rest free or negative)."""
    cal = Calibration()
    for batch in sorted({b for _, b, _, _ in blocks}):
        ratios: dict[str, list[float]] = {}
        for name, b, table_s, measured_s in blocks:
            if b == batch and table_s > 0 and measured_s > 0:
                ratios.setdefault(name, []).append(measured_s / table_s)
        if not ratios:
            continue
        s = {name: _geomean(r) for name, r in ratios.items()}
        s[ANY] = _geomean([x for r in ratios.values() for x in r])
        cal.scales[batch] = s
        rests = [(measured - sum(cal.scale(batch, p) * t for p, t in parts.items() if p != REST)) / parts[REST]
                 for b, parts, measured in nets if b == batch and parts.get(REST, 0) > 0]
        s[REST] = max(statistics.median(rests), 0.1 * s[ANY]) if rests else s[ANY]
    if not cal.scales:
        raise ValueError("no reference timing to calibrate from")
    return cal


def mape(predicted: list[float], measured: list[float]) -> float:
    return 100 * sum(abs(p - m) / m for p, m in zip(predicted, measured)) / len(measured)


# ---- the calibration kit of a model folder: reference blocks and networks as ONNX, for servers without torch ----
KIT_DIR = "calibration"
KIT_FILE = "kit.json"


def read_kit(model_dir: str | Path | None) -> dict[str, Any] | None:
    """The folder's kit: {"blocks": [{"file", "candidate", "inputs"}], "nets": [{"file", "inputs"}],
    "tables": {table source: {"blocks": [{batch: s}], "nets": [{batch: parts}]}}}; None where absent."""
    path = Path(model_dir) / KIT_DIR / KIT_FILE if model_dir else None
    return read_json(path) if path and path.is_file() else None


def calibrate_kit(model_dir: str | Path, source: str, batches: list[int], threads: int, timeout_s: float,
                  reps: int = 3) -> tuple[Calibration, float]:
    """Time the kit's references on this host (ONNX Runtime, `threads` threads) at `batches` and fit them against
    the table `source`; (fit, seconds). Raises TimeoutError past `timeout_s` and KeyError for an unknown table."""
    from export.runtime import RuntimeConfig, ort_session

    kit_dir = Path(model_dir) / KIT_DIR
    kit = read_kit(model_dir)
    if kit is None:
        raise KeyError(f"{kit_dir / KIT_FILE} is missing")
    if source not in kit.get("tables", {}):
        raise KeyError(f"the calibration kit has no timings of {source}")
    table = kit["tables"][source]
    t0 = time.perf_counter()

    def timed(item: dict[str, Any]) -> dict[int, float]:
        sess = ort_session(kit_dir / item["file"], RuntimeConfig(intra_threads=threads, device="cpu"))
        out = {}
        for b in batches:
            feed = {name: np.zeros((b, *shape), np.float32) for name, shape in item["inputs"].items()}
            sess.run(None, feed)  # first call at a shape sizes the buffers
            out[b] = min(_seconds(lambda: sess.run(None, feed)) for _ in range(reps))
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"calibration took over {timeout_s:g} s")
        return out

    blocks = [(item["candidate"], b, float(table["blocks"][i][str(b)]), s)
              for i, item in enumerate(kit["blocks"]) for b, s in timed(item).items()]
    nets = [(b, table["nets"][i][str(b)], s) for i, item in enumerate(kit["nets"]) for b, s in timed(item).items()]
    return fit(blocks, nets), time.perf_counter() - t0


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
