"""ASGI middleware: bound request bodies before they are read, and give every 503 a Retry-After."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """413 for a body over `limits[path]` bytes (or `default`): by Content-Length up front, else while streaming.
    408 for a body not complete within `upload_timeout_s`: a client trickling its upload holds a connection
    and a worker's memory, and never reaches admission."""

    def __init__(self, app, limits: dict[str, int], default: int, upload_timeout_s: float = 0,
                 notes: dict[str, str] | None = None) -> None:
        self.app, self.limits, self.default, self.upload_timeout_s = app, limits, default, upload_timeout_s
        self.notes = notes or {}  # what the limit allows, in the service's own terms, for the 413 message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope.get("path", ""), self.default)
        note = self.notes.get(scope.get("path", ""))
        too_big = f"request body over {limit} bytes" + (f": at most {note}" if note else "")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _json(send, 413, {"error": too_big})
        seen, cut, body_done = 0, None, False
        deadline = time.monotonic() + self.upload_timeout_s if self.upload_timeout_s else None

        async def counted() -> dict[str, Any]:
            nonlocal seen, cut, body_done
            if body_done or deadline is None:  # after the body only the disconnect is left: no deadline
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                cut = (408, f"upload not complete within {self.upload_timeout_s:g} s")
                return {"type": "http.disconnect"}
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                body_done = not msg.get("more_body", False)
                if seen > limit:  # stop reading; the app's answer is replaced below
                    cut = (413, too_big)
                    return {"type": "http.disconnect"}
            return msg

        async def replaced(msg: dict[str, Any]) -> None:
            if cut is None:
                await send(msg)
            elif msg["type"] == "http.response.start":
                await _json(send, cut[0], {"error": cut[1]}, [(b"connection", b"close")])

        await self.app(scope, counted, replaced)


class RetryAfter:
    """Every 503 (ours, or BentoML's own 'overloaded' answer) tells the client when to come back."""

    def __init__(self, app, seconds: int) -> None:
        self.app, self.value = app, str(seconds).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def patched(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start" and msg["status"] == 503:
                headers = list(msg.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    msg = {**msg, "headers": [*headers, (b"retry-after", self.value)]}
            await send(msg)

        await self.app(scope, receive, patched)
