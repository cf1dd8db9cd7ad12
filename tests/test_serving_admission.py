"""Admission by cost (no server): tiles x steps against the deadline, early and with the right status."""
from __future__ import annotations

import numpy as np
import pytest

from models.upscaler import TileConfig, make_tiles
from serving.admission import Admission, StepClock, tile_count


def admission(deadline: float = 10.0, **kw) -> Admission:
    # 10 ms per step at batch 1, 80 ms at batch 16 (5 ms per tile-step when full)
    return Admission(StepClock({1: 0.010, 16: 0.080}), max_batch=16, deadline_s=deadline, headroom=1.0, **kw)


@pytest.mark.parametrize("h,w", [(8, 8), (64, 64), (65, 64), (96, 80), (256, 256), (400, 600), (33, 250)])
def test_tile_count_from_the_header_matches_the_real_cut(h, w):
    tiles, _ = make_tiles(np.zeros((h, w, 3), np.uint8), TileConfig(overlap=16))
    assert tile_count(w, h, 16) == len(tiles)


def test_step_clock_interpolates_and_follows_contention():
    clock = StepClock({1: 0.010, 16: 0.080})
    assert clock.step_s(1) == pytest.approx(0.010) and clock.step_s(16) == pytest.approx(0.080)
    assert 0.010 < clock.step_s(8) < 0.080
    for _ in range(50):
        clock.observe(1, 0.030)  # three times slower than at start-up: the machine is shared now
    assert clock.step_s(16) == pytest.approx(0.240, rel=0.02)
    assert clock.idle_step_s(16) == pytest.approx(0.080)  # "could it ever finish" keeps the idle speed


def test_step_clock_goes_stale_and_a_calibration_replaces_the_old_factor(monkeypatch):
    """A worker that refuses everything observes nothing: its factor must not stay at a slowness (or a
    speed) of minutes ago. Once stale, one timed step replaces it outright."""
    import serving.admission as adm

    now = [1000.0]
    monkeypatch.setattr(adm.time, "monotonic", lambda: now[0])
    clock = StepClock({1: 0.010, 16: 0.080}, factor=4.0, fresh_s=2.0)
    assert not clock.stale
    now[0] += 3.0
    assert clock.stale and clock.factor == pytest.approx(4.0)
    clock.observe(1, 0.012, weight=1.0)  # the calibration step: 1.2x the idle speed now
    assert not clock.stale and clock.factor == pytest.approx(1.2)


def test_a_request_that_fits_is_admitted_and_released():
    adm = admission()
    d = adm.admit(tiles=4, steps=10)
    assert d.work is not None and adm.requests == 1 and adm.tiles == 4
    adm.release(d.work)
    assert adm.requests == 0 and adm.queue_s() == 0


def test_too_large_for_any_worker_is_422_naming_what_would_fit():
    adm = admission(deadline=10)
    d = adm.admit(tiles=100, steps=100)  # 7 chunks x 100 steps at >= 45 ms: far over 10 s even idle
    assert d.work is None and d.status == 422 and d.reason == "over_deadline"
    assert "at most" in d.message and "SRNAS_DEADLINE_S=10" in d.message
    steps = int(d.message.split("at most ")[1].split()[0])
    assert adm.admit(tiles=100, steps=steps).work is not None  # the advice holds
    assert adm.requests == 1


def test_a_full_queue_is_refused_at_once_with_retry_after_from_the_queue():
    adm = admission(deadline=10)
    first = adm.admit(tiles=16, steps=100)  # 8 s of work
    assert first.work is not None
    d = adm.admit(tiles=16, steps=100)
    assert d.work is None and d.status == 503 and d.reason == "queue"
    assert 1 <= d.retry_after_s <= 10  # when the queue ahead will have drained enough
    first.work.done = first.work.total  # the work ran: the same request now fits
    assert adm.admit(tiles=16, steps=100).work is not None


def test_cancelled_work_no_longer_counts_in_the_queue():
    adm = admission(deadline=10)
    first = adm.admit(tiles=16, steps=100)
    first.work.cancelled = True  # the client went away; released a moment later
    assert adm.queue_s() == 0 and adm.admit(tiles=16, steps=100).work is not None


def test_request_and_tile_bounds_still_hold():
    adm = admission(deadline=100, max_requests=2, max_tiles=10)
    assert adm.admit(1, 1).work and adm.admit(1, 1).work
    assert adm.admit(1, 1).reason == "requests"
    adm = admission(deadline=100, max_tiles=10)
    assert adm.admit(8, 1).work
    d = adm.admit(8, 1)
    assert d.status == 503 and d.reason == "tiles" and d.retry_after_s >= 1


def test_saturated_when_even_the_smallest_request_would_wait_past_the_deadline():
    adm = admission(deadline=10)
    assert not adm.saturated()
    adm.admit(16, 100)
    adm.admit(1, 10)
    assert not adm.saturated()
    big = Admission(StepClock({1: 0.010, 16: 0.080}), 16, 10.0, headroom=1.0)
    big.admit(16, 125)  # exactly the deadline
    assert big.saturated() and "past the 10 s budget" in big.why_saturated()


def test_answers_later_than_estimated_raise_later_estimates(monkeypatch):
    """What the step model leaves out (decoding, encoding, a busy event loop) is learnt from the answers."""
    import serving.admission as adm

    now = [100.0]
    monkeypatch.setattr(adm.time, "monotonic", lambda: now[0])
    a = admission(deadline=10)
    before = a.estimate_s(1, 10)
    for _ in range(30):
        w = a.admit(1, 10).work
        now[0] += w.estimate_s + 0.5  # every answer comes 0.5 s after its estimate
        a.release(w, answered=True)
    assert a.lag_s == pytest.approx(0.5, abs=0.01)
    assert a.estimate_s(1, 10) == pytest.approx(before + 0.5, abs=0.01)
    w = a.admit(1, 10).work
    a.release(w)  # cancelled or refused later: says nothing about the estimate
    assert a.lag_s == pytest.approx(0.5, abs=0.01)


def test_a_slower_models_tiles_are_charged_at_its_own_step_time():
    """Two served models: a request is estimated at its own model's speed, and so is the queue it joins; one
    factor follows contention for both. Requests of one model cost what they did when one model was served."""
    fast, slow = {1: 0.010, 16: 0.080}, {1: 0.030, 16: 0.240}
    two = Admission(StepClock(fast, models={"default": fast, "real": slow}), 16, 30.0, headroom=1.0)
    assert two.estimate_s(4, 10, "real") == pytest.approx(3 * two.estimate_s(4, 10, "default"))
    assert two.admit(4, 10, "real").work.model == "real"
    assert two.queue_s() == pytest.approx(10 * two.clock.step_s(4, "real"))  # 4 tiles x 10 steps, batch 4
    # a default request behind it waits for the real tiles at their speed, then runs at its own
    assert two.estimate_s(4, 10, "default") == pytest.approx(10 * two.clock.step_s(4, "real")
                                                             + 10 * two.clock.step_s(4, "default"))
    two.clock.observe(1, 0.060, weight=1.0, model="real")  # a real step at twice its idle time: the machine is busy
    assert two.clock.step_s(1, "default") == pytest.approx(0.020)
    same = Admission(StepClock(fast, models={"default": fast, "real": fast}), 16, 30.0, headroom=1.0)
    one = Admission(StepClock(fast), 16, 30.0, headroom=1.0)
    same.admit(5, 7, "real")
    one.admit(5, 7)
    assert same.queue_s() == pytest.approx(one.queue_s())
    assert same.estimate_s(3, 2, "real") == pytest.approx(one.estimate_s(3, 2))
    # the other model's tiles never share a network call with these, so they are not batched with them either
    assert same.estimate_s(3, 2, "default") > one.estimate_s(3, 2)


def test_a_model_too_slow_for_the_deadline_is_422_with_its_own_advice():
    fast, slow = {1: 0.010, 16: 0.080}, {1: 0.100, 16: 0.800}
    adm = Admission(StepClock(fast, models={"default": fast, "real": slow}), 16, 10.0, headroom=1.0)
    assert adm.admit(16, 100, "default").work is not None
    d = adm.admit(16, 100, "real")  # 80 s on an idle worker at the slow model's speed
    assert d.status == 422 and "at most 12 steps" in d.message
