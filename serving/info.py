"""Non-inference routes, as a FastAPI app mounted into the BentoML service (so they appear in its OpenAPI).

The service has one API page: BentoML's, at / (its document at /docs.json). FastAPI's own pages for this app
(/docs, /redoc, /openapi.json) would be a second one that shows /info alone, so they are off, and /docs, where
FastAPI users look first, leads to BentoML's."""
from __future__ import annotations

from typing import Any

import bentoml
from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.metrics import step_latency_summary

app = FastAPI(title="srnas model information", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(StarletteHTTPException)
async def json_error(request, exc: StarletteHTTPException) -> JSONResponse:
    """The service's error shape, {"error": ...}, instead of FastAPI's {"detail": ...}."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


@app.get("/docs", include_in_schema=False)
def docs() -> RedirectResponse:
    return RedirectResponse("/")


@app.get("/info", summary="The served models (preset, arch, params, FLOPs, backend, defaults, prediction), limits "
                           "and step latency")
def info() -> Any:
    svc = bentoml.get_current_service()
    served = getattr(svc, "served", None)
    if served is None:
        return JSONResponse({"error": "model is still loading"}, status_code=503)
    body = served.describe()  # the default model at the top level, as when one model was served
    body.update(svc.models_info())  # every served model by name, and which one is the default
    body["limits"] = svc.limits_info()
    body["step_latency"] = step_latency_summary()  # observed so far, all workers, beside the prediction
    return body
