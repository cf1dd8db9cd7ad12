"""Adjustments to BentoML's request handling, installed when the service module loads."""
from __future__ import annotations

import io
import logging

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect


def form_error(where: str, allowed: list[str], problems: list[tuple[str, str]]) -> ValidationError:
    """A pydantic ValidationError, which BentoML answers as 400 {"error", "detail"} and logs as one line."""
    from pydantic_core import InitErrorDetails, PydanticCustomError

    title = f"the {where} form (allowed fields: {', '.join(allowed)})"
    return ValidationError.from_exception_data(title, [
        InitErrorDetails(type=PydanticCustomError("form_field", msg), loc=(name,), input=name)
        for name, msg in problems])


def strict_forms() -> None:
    """A multipart form may hold only the API's fields, each once: BentoML silently dropped unknown fields
    (a typo such as `step=50` ran with the default steps) and all but one copy of a repeated field. And an
    uploaded file's client-given name is dropped before BentoML writes the upload to a temporary file,
    which it named after it (a 255-byte name was an OSError and a 500)."""
    from _bentoml_impl.serde import MultipartSerde
    from collections import Counter

    original = MultipartSerde.parse_request
    if getattr(original, "__srnas_strict__", False):
        return

    async def parse_request(self, request, cls):
        form = await request.form()  # Starlette keeps it: the original parse reads the same form
        allowed = list(cls.model_fields)
        counts = Counter(k for k, _ in form.multi_items())
        problems = [(k, f"unknown field {k!r}") for k in counts if k not in cls.model_fields]
        problems += [(k, f"field {k!r} given {n} times; send it once") for k, n in counts.items()
                     if n > 1 and k in cls.model_fields]
        if problems:
            raise form_error(request.url.path, allowed, problems)
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                value.filename = None
        return await original(self, request, cls)

    parse_request.__srnas_strict__ = True
    MultipartSerde.parse_request = parse_request


def no_url_downloads() -> None:
    """BentoML fetches a file field sent as text ("http://...") from that URL: no size bound, and a
    request-triggered outbound call. Here a text value is treated as the (non-image) bytes it is."""
    from _bentoml_impl.serde import MultipartSerde

    async def as_upload(obj: str | UploadFile) -> UploadFile:
        return obj if isinstance(obj, UploadFile) else UploadFile(io.BytesIO(str(obj).encode()), size=len(str(obj)))

    MultipartSerde.ensure_file = staticmethod(as_upload)


class UserErrorsWithoutTraceback(logging.Filter):
    """BentoML logs a rejected form field (a 400 already sent to the client) or a body cut off at the
    size limit as an ERROR with a traceback; keep it as one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (ValidationError, ClientDisconnect)):
            what = "body cut off" if isinstance(exc, ClientDisconnect) else "invalid input (" + ",".join(
                str(e["loc"][-1]) for e in exc.errors() if e.get("loc")) + ")"
            record.msg, record.args = f"{record.getMessage()}: {what}", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def listening_hosts(port: int) -> list[str]:
    """The addresses this process listens on at `port` (where `bentoml serve` bound its socket)."""
    import psutil

    try:
        conns = psutil.Process().net_connections(kind="inet")
    except (psutil.Error, OSError):
        return []
    return sorted({c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port})


class TrueBindAddress(logging.Filter):
    """BentoML logs "listening on http://localhost:3000" when it bound 0.0.0.0 (every interface, reachable
    from other hosts); log the address actually bound, and say what it means."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Starting production") and len(record.args or ()) == 5:
            *head, host, port = record.args
            bound = listening_hosts(int(port)) or [host]
            record.args = (*head, ",".join(bound), port)
            if any(h in ("0.0.0.0", "::") for h in bound):
                record.msg = (f"{record.msg}; that is every network interface: pass --host 127.0.0.1 to keep it "
                              "on this machine")
        return True


def respawn_workers() -> None:
    """BentoML's supervisor restarts a dead worker except inside a container (BENTOML_CONTAINERIZED, set in
    the images it builds), where a worker killed by the OOM killer would leave the pod at half capacity and
    not ready for good, with /livez still true. Restart it there too; a worker that cannot load turns
    /livez false, so a crash loop still reaches the orchestrator."""
    import bentoml.serving

    bentoml.serving.running_inside_container = lambda: False


def dispatcher_poll(seconds: float) -> None:
    """BentoML's batch dispatcher wakes every TICKET_INTERVAL while jobs wait for a running batch; each
    wake-up preempts a runtime thread, so the poll interval is configurable."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    CorkDispatcher.TICKET_INTERVAL = seconds


def install(poll_seconds: float, api_paths: tuple[str, ...] = (), retry_after_s: int = 2,
            drain_timeout_s: float = 300, header_timeout_s: float = 30) -> None:
    from serving.edge import install_drain, install_edge, install_header_timeout, install_json_400

    install_edge(api_paths=api_paths, shed_paths=api_paths[:1], retry_after_s=retry_after_s)
    install_json_400()
    install_header_timeout(header_timeout_s)
    install_drain(drain_timeout_s)
    dispatcher_poll(poll_seconds)
    no_url_downloads()
    strict_forms()
    respawn_workers()
    logging.getLogger("bentoml.serve").addFilter(TrueBindAddress())
    logging.getLogger("bentoml._internal.server.http_app").addFilter(UserErrorsWithoutTraceback())
