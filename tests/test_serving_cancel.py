"""serving/cancel.py without a server: an admitted request's work ends with its answer, its client's
disconnect or its deadline, and in the last two cases the work is marked cancelled and the job stopped."""
from __future__ import annotations

import asyncio
import time

from serving.admission import Work
from serving.cancel import until_done_or_abandoned


def receive_after(seconds: float | None):
    """An ASGI receive whose only message is the disconnect, after `seconds` (None: never)."""
    async def receive():
        await asyncio.sleep(3600 if seconds is None else seconds)
        return {"type": "http.disconnect"}

    return receive


async def job(seconds: float, state: dict):
    try:
        await asyncio.sleep(seconds)
        return "png"
    except asyncio.CancelledError:
        state["cancelled"] = True
        raise


def run(job_s: float, deadline_s: float, disconnect_s: float | None) -> tuple[str, object, Work, dict]:
    state: dict = {}
    work = Work(tiles=1, steps=1, deadline=time.monotonic() + deadline_s)

    async def go():
        out = await until_done_or_abandoned(work, job(job_s, state), receive_after(disconnect_s))
        await asyncio.sleep(0.01)  # let the cancelled job unwind
        return out

    outcome, result = asyncio.run(go())
    return outcome, result, work, state


def test_an_answer_in_time_is_returned():
    outcome, result, work, state = run(job_s=0.01, deadline_s=5, disconnect_s=None)
    assert (outcome, result) == ("done", "png") and not work.cancelled and not state


def test_a_disconnect_cancels_the_work():
    outcome, result, work, state = run(job_s=5, deadline_s=5, disconnect_s=0.02)
    assert (outcome, result) == ("disconnect", None) and work.cancelled and state["cancelled"]


def test_a_passed_deadline_cancels_the_work():
    outcome, result, work, state = run(job_s=5, deadline_s=0.05, disconnect_s=None)
    assert (outcome, result) == ("deadline", None) and work.cancelled and state["cancelled"]
