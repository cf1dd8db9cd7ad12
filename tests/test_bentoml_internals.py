"""The BentoML (and uvicorn) internals the service patches or reads, each checked to exist in the shape the
patch expects, and the installed BentoML to be the exact version pyproject.toml pins. A BentoML upgrade that
moves any of them fails here, by name, instead of quietly disabling a defence in serving/."""
from __future__ import annotations

import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bentoml_is_the_pinned_version():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(r"bentoml\b", d)]
    assert pin.startswith("bentoml=="), f"{pin}: the service patches internals, so BentoML must be pinned exactly"
    assert version("bentoml") == pin.split("==")[1]


def test_the_patched_bentoml_internals_exist():
    import bentoml.serving
    from _bentoml_impl.serde import MultipartSerde
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    # serving/hardening.py: strict forms, no URL downloads, worker respawn in containers, dispatcher poll
    assert inspect.iscoroutinefunction(MultipartSerde.parse_request)
    assert callable(MultipartSerde.ensure_file)
    assert callable(bentoml.serving.running_inside_container)
    assert isinstance(CorkDispatcher.TICKET_INTERVAL, (int, float))
    # serving/edge.py: the edge middleware goes into the app factory's middleware list
    assert isinstance(inspect.getattr_static(ServiceAppFactory, "middlewares"), property)
    # serving/batching.py: tiles reach the batch dispatcher in-process through the factory's batch_infer
    assert inspect.iscoroutinefunction(ServiceAppFactory.batch_infer)
    assert "api_endpoint_wrapper" in dir(ServiceAppFactory)
    # the loggers whose records serving/hardening.py filters: the start-up line, and request errors
    from _bentoml_impl.server import serving as impl_serving
    from bentoml._internal.server import http_app

    assert impl_serving.logger.name == "bentoml.serve" and "Starting production" in inspect.getsource(impl_serving)
    assert http_app.logger.name == "bentoml._internal.server.http_app"


def test_the_patched_uvicorn_internals_exist():
    import uvicorn
    from uvicorn.protocols.http import h11_impl

    # serving/edge.py: JSON 400s, the header timeout, and the drain on SIGTERM
    for attr in ("send_400_response", "connection_made", "data_received"):
        assert callable(getattr(h11_impl.H11Protocol, attr)), attr
    assert "cycle" in inspect.getsource(h11_impl.H11Protocol.__init__)
    assert callable(uvicorn.Server.handle_exit)
