"""The outermost ASGI layer of each worker, in front of BentoML's own middleware (metrics, tracing, access log).

- Unknown paths get a JSON 404 here, before BentoML's metrics middleware labels a series with the path:
  random paths would otherwise grow /metrics without bound (about 20 series each).
- Every error answer has a JSON body `{"error": ...}`: Starlette's plain-text 404/405 and BentoML's other
  plain answers are rewritten.
- The drain: after SIGTERM the worker keeps accepting, answers new requests to the service's APIs with
  503 + Retry-After at once and /readyz with 503, and exits once its in-flight requests are done (uvicorn
  would stop accepting, and new connections would wait in the listen backlog until they were reset).
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from http import HTTPStatus
from typing import Any, Awaitable, Callable

log = logging.getLogger("srnas.serving")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Drain:
    """This worker's drain state, and its requests in flight on the service's APIs."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.inflight = 0

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()

    def wait(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Block (off the event loop) until nothing is in flight; False if the timeout came first."""
        end = time.monotonic() + timeout_s
        while self.inflight > 0:
            if time.monotonic() > end:
                return False
            time.sleep(poll_s)
        return True


DRAIN = Drain()


class Shedding:
    """Refusal before the body is read: `check()` (set by the service) returns (seconds for Retry-After,
    why) when this worker is past its queue bound, else None. Reading and parsing a large upload
    costs CPU that the running batches need, and only to refuse it afterwards."""

    def __init__(self) -> None:
        self.check: Callable[[], tuple[int, str] | None] = lambda: None


SHED = Shedding()


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


def _known(routes: list, scope: Scope) -> bool:
    """Whether some route (through mounts) would take this path, whatever the method."""
    from starlette.routing import Match, Mount

    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        sub = getattr(route, "routes", None) if isinstance(route, Mount) else None
        if not sub:
            return True
        if _known(sub, {**scope, **child}):
            return True
    return False


class Edge:
    def __init__(self, app, api_paths: tuple[str, ...] = (), readyz: str = "/readyz", shed_paths: tuple[str, ...] = (),
                 retry_after_s: int = 2, drain: Drain = DRAIN, shed: Shedding = SHED) -> None:
        self.app, self.api_paths, self.readyz, self.drain = app, set(api_paths), readyz, drain
        self.shed_paths, self.shed = set(shed_paths), shed
        self.retry = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        routes = getattr(scope.get("app"), "routes", None)
        if routes is not None and not _known(routes, scope):
            return await send_json(send, 404, {"error": f"no route {path}"})
        if self.drain.draining and (path in self.api_paths or path == self.readyz):
            return await send_json(send, 503, {"error": "server is shutting down"},
                                   [(b"retry-after", self.retry), (b"connection", b"close")])
        if path in self.shed_paths and (refusal := self.shed.check()) is not None:
            retry, why = refusal
            return await send_json(send, 503, {"error": f"over capacity: {why}"},
                                   [(b"retry-after", str(retry).encode())])
        counted = path in self.api_paths
        self.drain.inflight += counted
        try:
            await self.app(scope, receive, json_errors(send))
        finally:
            self.drain.inflight -= counted


def json_errors(send: Send) -> Send:
    """Rewrite an error answer that is not JSON into {"error": its text, or the status phrase}."""
    held: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def patched(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            headers = dict((k.lower(), v) for k, v in msg.get("headers", []))
            if msg["status"] >= 400 and not headers.get(b"content-type", b"").startswith(b"application/json"):
                held.update(msg)
                return
        elif msg["type"] == "http.response.body" and held:
            chunks.append(msg.get("body", b""))
            if msg.get("more_body"):
                return
            text = b"".join(chunks).decode(errors="replace").strip()
            status = held["status"]
            keep = [(k, v) for k, v in held.get("headers", [])
                    if k.lower() not in (b"content-type", b"content-length")]
            return await send_json(send, status, {"error": text or _phrase(status)}, keep)
        await send(msg)

    return patched


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def install_edge(**options: Any) -> None:
    """Put `Edge` in front of every middleware BentoML adds to the service's app (outermost first)."""
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.middleware import Middleware

    original = ServiceAppFactory.middlewares
    if getattr(original.fget, "__srnas_edge__", False):
        return

    def middlewares(self) -> list:
        return [Middleware(Edge, **options), *original.fget(self)]

    middlewares.__srnas_edge__ = True
    ServiceAppFactory.middlewares = property(middlewares)


def install_json_400() -> None:
    """uvicorn answers a malformed request (e.g. `Content-Length: abc`) itself, before any ASGI app, in
    plain text; make that answer JSON too."""
    from uvicorn.protocols.http import h11_impl

    if getattr(h11_impl.H11Protocol.send_400_response, "__srnas_json__", False):
        return

    def send_400_response(self, msg: str) -> None:
        import h11

        data = json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=data),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    send_400_response.__srnas_json__ = True
    h11_impl.H11Protocol.send_400_response = send_400_response
    try:  # uvicorn takes httptools instead of h11 where it is installed
        from uvicorn.protocols.http import httptools_impl
    except ImportError:
        return

    def raw_400_response(self, msg: str) -> None:
        data = json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()
        head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: " + str(len(data)).encode() + b"\r\n\r\n")
        self.transport.write(head + data)
        self.transport.close()

    httptools_impl.HttpToolsProtocol.send_400_response = raw_400_response


def install_header_timeout(seconds: float) -> None:
    """uvicorn waits for a request's headers without a limit (its keep-alive timer only runs between
    requests): a client sending a header line now and then holds a connection for ever. A connection that
    has not completed its request headers within `seconds` gets a JSON 408 and is closed."""
    from uvicorn.protocols.http import h11_impl

    proto = h11_impl.H11Protocol
    if getattr(proto.data_received, "__srnas_headers__", False):
        return
    made, received = proto.connection_made, proto.data_received
    data = json.dumps({"error": f"request headers not complete within {seconds:g} s"}).encode()
    answer = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
              b"content-length: " + str(len(data)).encode() + b"\r\n\r\n" + data)

    def waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def expire(self) -> None:
        self._srnas_headers_timer = None
        if waiting_for_headers(self) and not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()

    def watch(self) -> None:
        timer = getattr(self, "_srnas_headers_timer", None)
        if waiting_for_headers(self):
            if timer is None:
                self._srnas_headers_timer = self.loop.call_later(seconds, expire, self)
        elif timer is not None:
            timer.cancel()
            self._srnas_headers_timer = None

    def connection_made(self, transport) -> None:
        made(self, transport)
        self._srnas_headers_timer = self.loop.call_later(seconds, expire, self)

    def data_received(self, data: bytes) -> None:
        received(self, data)
        watch(self)

    data_received.__srnas_headers__ = True
    proto.connection_made, proto.data_received = connection_made, data_received


def install_drain(timeout_s: float, drain: Drain = DRAIN) -> None:
    """Make uvicorn's SIGTERM start the drain; the exit it would have begun at once follows when the
    worker's requests are done (or after `timeout_s`). SIGINT and a second SIGTERM act as before."""
    import uvicorn

    original = uvicorn.Server.handle_exit
    if getattr(original, "__srnas_drain__", False):
        return

    def handle_exit(self, sig: int, frame) -> None:
        if sig != signal.SIGTERM or drain.draining:
            return original(self, sig, frame)
        drain.start()
        log.info("SIGTERM: draining (%d requests in flight); new requests get 503", drain.inflight)

        def finish() -> None:
            if not drain.wait(timeout_s):
                log.warning("drain timed out after %.0f s with %d requests in flight", timeout_s, drain.inflight)
            original(self, sig, frame)

        threading.Thread(target=finish, name="srnas-drain", daemon=True).start()

    handle_exit.__srnas_drain__ = True
    uvicorn.Server.handle_exit = handle_exit
