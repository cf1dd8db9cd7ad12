"""The BentoML (and uvicorn) internals the service patches or reads, each checked to exist in the shape the
patch expects, and the installed BentoML to be the exact version pyproject.toml pins. A BentoML upgrade that
moves any of them fails here, by name, instead of quietly disabling a defence in serving/."""
from __future__ import annotations

import inspect
import logging
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


def test_the_internals_behind_the_openapi_document_and_the_serve_process():
    """serving/openapi.py: the service class BentoML builds the service with, its `openapi_spec` (what /docs.json
    and a bento's apis/openapi.yaml are made of) and the spec's classes; serving/service.py: the serve process
    tells itself from a worker by `server_context.worker_index` (set before a worker loads the service), and
    BentoML's server logging leaves the root logger at WARNING with the handler on it."""
    import bentoml
    import yaml
    from _bentoml_impl.server.app import ServiceAppFactory
    from _bentoml_impl.worker import service as worker
    from bentoml._internal.bento import bento
    from bentoml._internal.log import SERVER_LOGGING_CONFIG

    from serving.openapi import documented

    assert "service_class" in inspect.signature(bentoml.service).parameters
    assert isinstance(inspect.getattr_static(bentoml.Service, "openapi_spec"), property)
    assert "self.service.openapi_spec" in inspect.getsource(ServiceAppFactory.openapi_spec_view)
    assert "svc.openapi_spec" in inspect.getsource(bento.Bento.create)
    main = inspect.getsource(worker.main.callback)  # a click command
    assert main.index("server_context.worker_index = worker_id") < main.index("load(bento_identifier")
    assert SERVER_LOGGING_CONFIG["root"]["handlers"] and SERVER_LOGGING_CONFIG["root"]["level"] == logging.WARNING

    class Probe:
        @bentoml.api(route="/public")
        def public(self, x: int) -> int:
            return x

        @bentoml.api(route="/hidden", batchable=True)
        def hidden(self, jobs: list[int]) -> list[int]:
            return jobs

    svc = bentoml.service(Probe, service_class=documented("probe", ("hidden",), {"/public": {503: "busy"}}))
    spec = svc.openapi_spec
    doc = spec.asdict()
    assert doc["info"]["description"] == "probe" and "contact" not in doc["info"]
    assert "/hidden" not in doc["paths"] and not any(k.startswith("hidden__") for k in doc["components"]["schemas"])
    assert "/public" in doc["paths"] and "public__Input" in doc["components"]["schemas"]
    responses = {str(code): answer for code, answer in doc["paths"]["/public"]["post"]["responses"].items()}
    assert set(responses) == {"200", "503"} and responses["503"]["description"] == "busy"
    dumped = yaml.dump(spec)  # how `bentoml build` writes a bento's apis/openapi.yaml
    assert "/public" in dumped and "/hidden" not in dumped and "#/components/schemas/Error" in dumped


def test_bento_env_schema_is_what_bentos_build_takes():
    """srnas bento hands BentoML's builder its env entries as BentoEnvSchema, as bentofile.yaml's loader does."""
    from bentoml._internal.bento.build_config import BentoBuildConfig, BentoEnvSchema

    cfg = BentoBuildConfig(service="serving.service:SRNAS", envs=[BentoEnvSchema(name="SRNAS_BACKEND", value="auto")])
    assert cfg.envs[0].name == "SRNAS_BACKEND" and cfg.envs[0].value == "auto"
