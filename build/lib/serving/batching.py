"""The front's way into BentoML's adaptive batching of its own batchable API.

BentoML routes a service's call to its own batchable API (`self.to_async.<api>`) through an in-process
HTTP client: every chunk of tiles pays a second trip through the whole request stack (JSON, validation,
tracing, access log, metrics middleware), which on 2 cores cost about as much CPU as the network itself.
`BatchedCall` hands the chunk straight to the same BentoML dispatcher the HTTP route feeds, so batches,
`max_batch_size`, `max_latency_ms` and BentoML's adaptive-batch metric all stay BentoML's. It finds that
dispatcher through the self-proxy's ASGI app; where a BentoML release lays this out differently it falls
back to the self-proxy, and `/info` says which path is in use.
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger("srnas.serving")

IN_PROCESS, HTTP = "bentoml-dispatcher", "self-proxy-http"


def _batch_infer(instance: Any, api: str) -> Callable[..., Awaitable[Any]] | None:
    """ServiceAppFactory.batch_infer of the server that runs `instance`, or None."""
    try:
        app = instance.__self_proxy__._async.app  # the Starlette app BentoML built for this worker
        route = next(r for r in app.routes if getattr(r, "name", None) == api)
        factory = route.endpoint.func.__self__  # Route(endpoint=partial(factory.api_endpoint_wrapper, api))
        return factory.batch_infer
    except (AttributeError, StopIteration, TypeError):
        return None


class BatchedCall:
    """Call the service's batchable API `api` with one chunk of items, batched with other callers'."""

    def __init__(self, instance: Any, api: str) -> None:
        self.instance, self.api = instance, api
        self._infer: Callable[..., Awaitable[Any]] | None = None
        self.path: str | None = None  # known after the first call (the self-proxy exists only once serving)

    def resolve(self) -> str:
        """Which way chunks go (the self-proxy exists only once serving, so this is asked late)."""
        if self.path is None:
            self._infer = _batch_infer(self.instance, self.api)
            self.path = IN_PROCESS if self._infer else HTTP
            if self._infer is None:
                log.warning("BentoML's batch dispatcher not found; tiles go through the HTTP self-proxy")
        return self.path

    async def __call__(self, items: list) -> list:
        if self.resolve() == IN_PROCESS:
            return await self._infer(self.api, (items,), {})
        return await getattr(self.instance.to_async, self.api)(items)
