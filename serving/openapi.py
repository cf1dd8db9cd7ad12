"""The service's OpenAPI document (/docs.json, which the page at / shows, and a bento's apis/openapi.yaml) in the
product's own terms.

BentoML writes its own README boilerplate as the description and "None" as the version outside a bento, lists
every API (the internal batchable one too) and documents only its own 400/404/500 answers. The service is
built with `DocumentedService` (BentoML's `service_class`), which takes BentoML's document and sets the
description and the project's version, leaves out the internal APIs and their schemas, and documents each
public API's error answers with the service's JSON error body.
"""
from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import attrs
import bentoml

ROOT = Path(__file__).resolve().parents[1]
ERROR_SCHEMA = "Error"


def project_version() -> str:
    """pyproject.toml's version (a bento carries the file), else the installed package's."""
    try:
        return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return version("srnas")
    except PackageNotFoundError:
        return "unknown"


def _error_schema():
    from bentoml._internal.service.openapi.specification import Schema

    return Schema(type="object", title=ERROR_SCHEMA, required=["error"], description="every error answer",
                  properties={"error": Schema(type="string", title="Message", description="what went wrong"),
                              "detail": Schema(title="Detail", description="the rejected form fields (400 only)")})


def _error_response(meaning: str):
    from bentoml._internal.service.openapi.specification import MediaType, Reference, Response

    return Response(description=meaning, content={"application/json": MediaType(
        schema=Reference(f"#/components/schemas/{ERROR_SCHEMA}"))})


def _components(api: Any) -> set[str]:
    """The schema names an API adds to the document (its input, its output and the models they use)."""
    return {*api.input_spec.openapi_components(api.name), *api.output_spec.openapi_components(api.name)}


class DocumentedService(bentoml.Service):
    """A BentoML service whose OpenAPI document carries `DESCRIPTION`, the project's version, no `INTERNAL` API
    and, for each route in `ERRORS`, its error answers {status: meaning} in place of BentoML's generic ones."""

    DESCRIPTION = ""
    INTERNAL: tuple[str, ...] = ()  # API names
    ERRORS: dict[str, dict[int, str]] = {}

    @property
    def openapi_spec(self):
        spec = super().openapi_spec
        # BentoML's team is not this product's contact
        info = attrs.evolve(spec.info, description=self.DESCRIPTION or spec.info.description,
                            version=project_version(), contact=None)
        spec = attrs.evolve(spec, info=info)
        internal = [api for api in self.apis.values() if api.name in self.INTERNAL]
        public = [api for api in self.apis.values() if api.name not in self.INTERNAL]
        for api in internal:
            spec.paths.pop(api.route, None)
        schemas = spec.components["schemas"]
        for name in set().union(*map(_components, internal)) - set().union(*map(_components, public)):
            schemas.pop(name, None)
        schemas[ERROR_SCHEMA] = _error_schema()
        for route, errors in self.ERRORS.items():
            post = spec.paths[route].post
            kept = {code: answer for code, answer in post["responses"].items() if int(code) < 400}
            post["responses"] = {**kept, **{code: _error_response(text) for code, text in sorted(errors.items())}}
        return spec


def documented(description: str, internal: tuple[str, ...], errors: dict[str, dict[int, str]]
               ) -> type[DocumentedService]:
    """The service class to pass to `bentoml.service(service_class=...)`."""
    return type("SRNASService", (DocumentedService,), {"DESCRIPTION": description, "INTERNAL": internal,
                                                       "ERRORS": errors})
