"""Admission by cost: a request is the work of its tiles x steps, and it is admitted only if this worker can
finish it, behind the work already admitted, within the deadline.

The decision is made from the image header (tiles) and the form (steps), before any pixel is decoded, and
it is made at once: a request that cannot make its deadline gets 503 with a Retry-After computed from the
work queued ahead of it, and one that could not finish even on an idle worker gets 422 saying so, instead
of waiting in a queue until a latency bound drops it. Admitted work that is abandoned (the client went
away, or the deadline passed) is marked cancelled: its queued tiles are skipped and the batch running it
stops at the next denoising step once no live request is left in it (serving/tiles.py).

Where several models are served, a request's work is charged at its own model's step time: the tiles of
different models never share a network call (serving/tiles.py), so a slower model's queue costs its own speed.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from models.upscaler import _starts

TILE = 128  # HR tile side


def tile_count(width: int, height: int, overlap: int, tile: int = TILE) -> int:
    """How many HR tiles an LR image of width x height becomes (the same cut as models/upscaler.make_tiles)."""
    h, w = max(2 * height, tile), max(2 * width, tile)
    return len(_starts(h, tile, overlap)) * len(_starts(w, tile, overlap))


@dataclass(eq=False)  # identity: two requests of the same size are still two
class Work:
    """One admitted request: its tiles x steps, how many tile-steps have run, and whether it was abandoned.
    The runtime thread adds to `done` and reads `cancelled`; the event loop does the opposite."""

    tiles: int
    steps: int
    deadline: float  # time.monotonic() by which the answer is due
    done: int = 0
    cancelled: bool = False
    estimate_s: float = 0.0  # when the step model expected the answer, from admission on (without the lag)
    admitted_at: float = 0.0
    model: str | None = None  # the served model that runs it (None: the clock's base model)

    @property
    def total(self) -> int:
        return self.tiles * self.steps

    @property
    def remaining(self) -> int:
        return max(self.total - self.done, 0)


class StepClock:
    """Seconds per denoising step by batch size: measured on the idle worker at start-up (`base`), scaled by
    how much slower steps run now (`factor`, an exponential average of observed / base), so that estimates
    follow CPU contention, from other workers or other programs on the machine. A factor with no fresh
    observation (`stale`) is refreshed by one small timed step before it is trusted: a worker that refuses
    everything runs nothing, and must not keep refusing (or admitting) on a speed of minutes ago.

    `models` holds each served model's own idle seconds per step (`base` is for work that names no model); the
    one factor covers them all, since contention slows every model on the machine alike."""

    def __init__(self, base: dict[int, float], alpha: float = 0.2, factor: float = 1.0,
                 fresh_s: float = 2.0, models: dict[str, dict[int, float]] | None = None) -> None:
        if not base or not all((models or {}).values()):
            raise ValueError("StepClock needs at least one measured batch size per model")
        self.base = dict(sorted(base.items()))
        self.models = {name: dict(sorted(b.items())) for name, b in (models or {}).items()}
        self.alpha, self.fresh_s, self.factor = alpha, fresh_s, factor
        self._at = time.monotonic()
        self._lock = threading.Lock()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._at > self.fresh_s

    def idle_step_s(self, batch: int, model: str | None = None) -> float:
        """Linear in the batch size between the measured sizes, extrapolated from the end ones."""
        pts = list(self.models.get(model, self.base).items())
        if len(pts) == 1:
            return pts[0][1] * batch / pts[0][0]
        (b0, s0), (b1, s1) = pts[0], pts[-1]
        for (lo, slo), (hi, shi) in zip(pts, pts[1:]):
            if batch <= hi:
                (b0, s0), (b1, s1) = (lo, slo), (hi, shi)
                break
        return max(s0 + (s1 - s0) * (batch - b0) / (b1 - b0), 1e-6)

    def step_s(self, batch: int, model: str | None = None) -> float:
        return self.idle_step_s(batch, model) * self.factor

    def observe(self, batch: int, seconds: float, weight: float | None = None, model: str | None = None) -> None:
        """A step of `model` took `seconds`. `weight` 1 replaces the factor (a calibration after idle time: the
        old value is no evidence)."""
        ratio = min(max(seconds / self.idle_step_s(batch, model), 0.5), 50.0)  # one outlier must not swing it all
        a = self.alpha if weight is None else weight
        with self._lock:
            self.factor += a * (ratio - self.factor)
            self._at = time.monotonic()


@dataclass
class Decision:
    """`work` when admitted; else the HTTP status, the reason (a bounded metric label) and a message."""

    work: Work | None = None
    status: int = 200
    reason: str = ""
    message: str = ""
    retry_after_s: int = 0


@dataclass
class Admission:
    """Per-worker admission (the event loop is single-threaded: `admit` and `release` need no lock)."""

    clock: StepClock
    max_batch: int
    deadline_s: float
    headroom: float  # admit only if the estimate is within this share of the deadline (ServeConfig.admit_headroom)
    max_requests: int = 16
    max_tiles: int = 256
    admitted: list[Work] = field(default_factory=list)
    # seconds the answers came later than estimated (an average over answered requests, >= 0): what the
    # step model leaves out, such as decoding, encoding and the event loop's share of busy CPUs
    lag_s: float = 0.0
    lag_alpha: float = 0.2

    @property
    def requests(self) -> int:
        return len(self.admitted)

    @property
    def tiles(self) -> int:
        return sum(w.tiles for w in self.admitted)

    def alone_s(self, tiles: int, steps: int, idle: bool = False, model: str | None = None) -> float:
        """Time to run one request's tiles on their own, in chunks of at most one batch."""
        step = self.clock.idle_step_s if idle else self.clock.step_s
        full, rest = divmod(tiles, self.max_batch)
        return steps * (full * step(self.max_batch, model) + (step(rest, model) if rest else 0.0))

    def _by_model(self) -> dict[str | None, tuple[int, int]]:
        """{model: (tile-steps not yet run of its live requests, tiles it holds)}: each model's tiles batch
        only with each other."""
        out: dict[str | None, tuple[int, int]] = {}
        for w in self.admitted:
            work, tiles = out.get(w.model, (0, 0))
            out[w.model] = (work + (0 if w.cancelled else w.remaining), tiles + w.tiles)
        return out

    def _group_s(self, model: str | None, work: int, tiles: int) -> float:
        """Time to run `work` tile-steps of one model, batched as its `tiles` in flight allow."""
        if not work:
            return 0.0
        batch = max(1, min(self.max_batch, tiles))
        return work * self.clock.step_s(batch, model) / batch

    def queue_s(self) -> float:
        """Time to run what is admitted and not yet done, batched as it would be."""
        return sum(self._group_s(m, work, tiles) for m, (work, tiles) in self._by_model().items())

    def estimate_s(self, tiles: int, steps: int, model: str | None = None) -> float:
        """When a new request would be answered: behind the queue, or its own time if that is longer."""
        groups = self._by_model()
        work, held = groups.get(model, (0, 0))
        groups[model] = (work + tiles * steps, held + tiles)
        shared = sum(self._group_s(m, w, t) for m, (w, t) in groups.items())
        return max(shared, self.alone_s(tiles, steps, model=model)) + self.lag_s

    def saturated(self) -> bool:
        """Past the queue bound: even a one-tile, one-step request would be refused now."""
        return self.why_saturated() is not None

    def why_saturated(self) -> str | None:
        if self.requests >= self.max_requests:
            return f"{self.requests} requests in flight (at most {self.max_requests})"
        queued, budget = self.queue_s(), self.headroom * self.deadline_s
        if queued >= budget:
            return f"the work queued here would take about {queued:.1f} s, past the {budget:.0f} s budget"
        return None

    def admit(self, tiles: int, steps: int, model: str | None = None) -> Decision:
        budget = self.headroom * self.deadline_s
        idle = self.alone_s(tiles, steps, idle=True, model=model)
        if idle > budget:
            return Decision(status=422, reason="over_deadline", message=(
                f"{tiles} tiles x {steps} steps would take about {idle:.1f} s on an idle worker, over this "
                f"server's {budget:.0f} s budget per request (SRNAS_DEADLINE_S={self.deadline_s:g}); "
                + _smaller(max_steps_within(self, tiles, budget, model))))
        first_slot = self.queue_s() / max(self.requests, 1)  # about when the next request in flight is done
        if self.requests >= self.max_requests:
            return self._busy("requests", f"{self.requests} requests in flight (at most {self.max_requests})",
                              first_slot)
        if self.tiles + tiles > self.max_tiles and self.tiles:
            return self._busy("tiles", f"{self.tiles} tiles in flight, {tiles} more would pass {self.max_tiles}",
                              first_slot)
        est = self.estimate_s(tiles, steps, model)
        if est > budget:
            return self._busy("queue", f"this request would finish in about {est:.1f} s behind the work "
                                       f"queued, past the {budget:.0f} s budget", est - budget)
        now = time.monotonic()
        work = Work(tiles, steps, now + self.deadline_s, estimate_s=est - self.lag_s, admitted_at=now, model=model)
        self.admitted.append(work)
        return Decision(work=work)

    def retry_after_s(self, wait_s: float | None = None) -> int:
        """Whole seconds until the queue ahead has drained (or `wait_s`), at least 1, at most the deadline."""
        wait = self.queue_s() - self.headroom * self.deadline_s if wait_s is None else wait_s
        return min(max(1, math.ceil(wait)), max(1, math.ceil(self.deadline_s)))

    def _busy(self, reason: str, why: str, wait_s: float | None = None) -> Decision:
        return Decision(status=503, reason=reason, retry_after_s=self.retry_after_s(wait_s),
                        message=f"over capacity: {why}")

    def describe(self) -> dict[str, Any]:
        """This worker's admission state, for /info (`idle_step_s`: the base model's; per model beside it)."""
        def rounded(base: dict[int, float]) -> dict[str, float]:
            return {str(b): round(s, 5) for b, s in base.items()}

        return {"requests": self.requests, "tiles": self.tiles, "queue_s": round(self.queue_s(), 3),
                "slowdown": round(self.clock.factor, 3), "lag_s": round(self.lag_s, 3),
                "idle_step_s": rounded(self.clock.base),
                "idle_step_s_by_model": {m: rounded(b) for m, b in self.clock.models.items()}}

    def release(self, work: Work, answered: bool = False) -> None:
        """`answered`: the request ran to its answer, so its time corrects the estimates that follow."""
        if work in self.admitted:
            self.admitted.remove(work)
        if answered and work.admitted_at:
            late = (time.monotonic() - work.admitted_at) - work.estimate_s
            self.lag_s = max(0.0, self.lag_s + self.lag_alpha * (late - self.lag_s))


def _smaller(steps: int) -> str:
    return f"ask for at most {steps} steps or send a smaller image" if steps else "send a smaller image"


def max_steps_within(adm: Admission, tiles: int, budget: float, model: str | None = None) -> int:
    """The most steps a request of `tiles` tiles could take within `budget` seconds on an idle worker."""
    one = adm.alone_s(tiles, 1, idle=True, model=model)
    return max(0, int(budget // one)) if one > 0 else 0
