"""Running one admitted request's work until it answers, its client leaves or its deadline passes.

In the last two cases the work is cancelled at once: `work.cancelled` makes the batch runner skip its
queued tiles and stop a sampling loop before its next step once no live request is left in it
(serving/tiles.py), and the task is cancelled, so the caller can release its admission right away.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from serving.admission import Work

Receive = Callable[[], Awaitable[dict[str, Any]]]


async def client_gone(receive: Receive) -> None:
    """Returns once the client has disconnected. The body has been read by then, so the only message
    left is the disconnect (uvicorn also sends it once the answer is complete; the caller stops first)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _retrieve(task: asyncio.Future) -> None:
    """An abandoned request's task ends on its own; its outcome is nobody's, so it is not logged."""
    if not task.cancelled():
        task.exception()


async def until_done_or_abandoned(work: Work, job: Awaitable[Any], receive: Receive) -> tuple[str, Any]:
    """("done", the job's result), or ("disconnect" | "deadline", None) with the work cancelled."""
    task = asyncio.ensure_future(job)
    gone = asyncio.ensure_future(client_gone(receive))
    done: set = set()
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=max(work.deadline - time.monotonic(), 0),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the handler itself is cancelled (BentoML's request timeout)
        gone.cancel()
        if task not in done:
            work.cancelled = True
            task.cancel()
            task.add_done_callback(_retrieve)
    if task in done:
        return "done", task.result()
    return ("disconnect" if gone in done else "deadline"), None
