"""serving/edge.py without a server: the outermost layer answers unknown paths, sheds load before reading a
body, drains, and turns every error into JSON (the real server: tests/test_serving*.py)."""
from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from serving.edge import Drain, Edge, Shedding


def run(shed: Shedding | None = None, drain: Drain | None = None, path: str = "/upscale", method: str = "POST"):
    seen: list[str] = []

    async def upscale(request):
        seen.append((await request.body()).decode())
        return PlainTextResponse("fine")

    async def readyz(request):
        return PlainTextResponse("")

    app = Starlette(routes=[Route("/upscale", upscale, methods=["POST"]), Route("/readyz", readyz)])
    app.add_middleware(Edge, api_paths=("/upscale",), shed_paths=("/upscale",), retry_after_s=2,
                       drain=drain or Drain(), shed=shed or Shedding())
    sent: list[dict] = []

    async def go():
        msgs = [{"type": "http.request", "body": b"payload", "more_body": False}]

        async def receive():
            return msgs.pop(0) if msgs else {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)

        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
                 "query_string": b"", "headers": [], "scheme": "http", "server": ("t", 80), "client": ("c", 1)}
        await app(scope, receive, send)

    asyncio.run(go())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, seen


def test_a_saturated_worker_refuses_before_reading_the_body():
    shed = Shedding()
    shed.check = lambda: (7, "3 requests in flight (at most 3)")
    status, headers, body, seen = run(shed)
    assert status == 503 and headers[b"retry-after"] == b"7"
    assert json.loads(body)["error"] == "over capacity: 3 requests in flight (at most 3)"
    assert seen == []  # the app never ran, the upload was never read
    status, _, body, seen = run(Shedding())
    assert status == 200 and seen == ["payload"]


def test_draining_refuses_new_requests_and_readiness():
    drain = Drain()
    drain.start()
    for path, method in (("/upscale", "POST"), ("/readyz", "GET")):
        status, headers, body, _ = run(drain=drain, path=path, method=method)
        assert status == 503 and json.loads(body)["error"] == "server is shutting down"
        assert headers[b"connection"] == b"close" and headers[b"retry-after"] == b"2"


def test_unknown_paths_and_plain_errors_become_json():
    status, _, body, _ = run(path="/no/such")
    assert status == 404 and json.loads(body) == {"error": "no route /no/such"}
    status, headers, body, _ = run(path="/upscale", method="GET")  # Starlette's plain-text 405
    assert status == 405 and headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"error": "Method Not Allowed"}
