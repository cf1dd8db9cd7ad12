"""The BentoML service: POST /upscale (x2 super-resolution of any image through 128x128 tiles).

/upscale validates the upload, cuts it into tiles and sends them, in chunks, to its own batchable
/denoise_tiles API, so BentoML's adaptive batching combines tiles
from concurrent requests; a batch is then grouped by (model, steps, sampler), one sampling loop per group.
Every model that SRNAS_MODELS names is loaded in every worker; a request picks one with `model=`.
The chunks go straight to BentoML's dispatcher for that API (serving/batching.py), and only references
to the tiles travel: the tiles stay in this worker's `TileStore` (serving/tiles.py).
Admission counts work (tiles x steps, serving/admission.py) and is decided from the image header, before
decoding: a request that cannot be answered within the deadline gets 503 + Retry-After at once, one that
no worker could finish in time gets 422. A request whose client leaves, or whose deadline passes, is
cancelled: its queued tiles are skipped and its admission released.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, NotFound
from bentoml.validators import ContentType
from pydantic import Field
from starlette.responses import JSONResponse, Response

from models.errors import UserError
from models.sampler import SamplerConfig
from models.upscaler import TileConfig, TilePlan, blend_tiles, make_tiles, tile_seeds
from serving import hardening, metrics
from serving.batching import BatchedCall
from serving.busy import BusyBoard
from serving.config import SERVICE_NAME, ServeConfig
from serving.edge import DRAIN, SHED
from serving.admission import Admission, StepClock, Work, tile_count
from serving.cancel import until_done_or_abandoned
from serving.imageio import BadImage, decode, encode_png, probe
from serving.info import app as info_app
from serving.middleware import BodyLimit, RetryAfter
from serving.model import Served, load_models
from serving.openapi import documented
from serving.store import import_missing, is_stored
from serving.tiles import JOB_JSON_BYTES, MAX_SEED, STORE, TileJob, TileModel, run_jobs, timed

log = logging.getLogger("srnas.serving")
# BentoML sets up logging itself, its root logger at WARNING: the product's INFO lines (what each worker serves,
# the shipped models imported, the drain) reach BentoML's log only with the product's logger at BentoML's level
logging.getLogger("srnas").setLevel(logging.getLogger("bentoml").getEffectiveLevel())
CFG = ServeConfig.from_env()
SERVE_PROCESS = bentoml.server_context.worker_index is None  # `bentoml serve` (or build) itself, not a worker


def served_tags() -> dict[str, str]:
    """{served name: store tag}. In the serve process, before BentoML resolves the service's models (and before
    any worker starts), a shipped model missing from the store is imported from this installation. Without
    SRNAS_MODELS, every shipped model that is then stored is served (the default one at least: a checkout
    without another one still starts, saying so); SRNAS_MODELS names models that must all be stored."""
    tags = CFG.model_tags
    if SERVE_PROCESS:
        import_missing(tags)
    if os.environ.get("SRNAS_MODELS", "").strip():
        return tags
    kept = {name: tag for name, tag in tags.items() if name == CFG.default_model or is_stored(tag)}
    if SERVE_PROCESS and kept != tags:
        log.warning("serving without the shipped models %s: not in the BentoML model store, and not importable from "
                    "this installation", ", ".join(f"{name} ({tag})" for name, tag in tags.items() if name not in kept))
    return kept


CFG.models = ",".join(f"{name}={tag}" for name, tag in served_tags().items())

Steps = Annotated[int | None, Field(default=None, ge=1, le=CFG.limits.max_steps, strict=True,
                                    description="denoising steps (default: the model's)")]
Sampler = Annotated[Literal["ddim", "ddpm"] | None, Field(default=None, description="default: the model's")]
Seed = Annotated[int, Field(default=0, ge=0, le=MAX_SEED, strict=True, description="same seed, same bytes")]
ModelName = Annotated[str | None, Field(default=None, max_length=64, description=(
    f"served model: {', '.join(CFG.model_tags)} (default: {CFG.default_model})"))]


def model_refs() -> dict[str, bentoml.models.BentoModel]:
    """{served name: store reference}. A model missing from the store stops the start here, naming the model,
    its tag and the import that puts it there (BentoML alone would only say that it found no cloud context);
    as BentoML's NotFound, which its command line prints as one line."""
    refs = {name: bentoml.models.BentoModel(tag) for name, tag in CFG.model_tags.items()}
    missing = [f"{name} ({ref.tag})" for name, ref in refs.items() if ref.stored is None]
    if missing:
        raise NotFound(f"SRNAS_MODELS names models that are not in the BentoML model store: {', '.join(missing)}; "
                       "import the shipped ones with `srnas store-import`, another folder with "
                       "`srnas store-import --model DIR --name TAG`")
    return refs


MODEL_REFS = model_refs()
# BentoML finds a service's models among its class attributes (that is how `bentoml build` packs them), so every
# configured model gets one, on a base class of the service
ServedModels = type("ServedModels", (), {f"model_ref_{i}": ref for i, ref in enumerate(MODEL_REFS.values())})
REF_ATTRS = {name: f"model_ref_{i}" for i, name in enumerate(MODEL_REFS)}


DESCRIPTION = """x2 super-resolution of images by a diffusion model (SR3) whose network was slimmed by
hardware-aware neural architecture search.

POST an image (PNG, JPEG or WebP) to **/upscale** as the multipart field `image`; the answer is a PNG twice its
width and height. Optional fields: `steps`, `sampler`, `seed` (the same seed gives the same bytes) and `model`.
GET **/info** describes the served models, the limits and the step latency; /readyz, /livez and /metrics are for
the orchestrator and monitoring.

Every error answer is JSON, `{"error": "..."}`, and every 503 carries a Retry-After header."""
ERRORS = {  # what /upscale answers besides 200, for its OpenAPI entry
    400: "invalid request: an unknown or repeated form field, a value out of range, an unknown model, or an "
         "image that is empty, unreadable or smaller than the minimum side",
    408: "the upload was not complete within SRNAS_UPLOAD_TIMEOUT_S",
    413: "too large: the body is over SRNAS_MAX_BYTES, or the image over SRNAS_MAX_PIXELS or SRNAS_MAX_SIDE",
    415: "not a PNG, JPEG or WebP image",
    422: "this image at these steps would take longer than the server's deadline even on an idle worker; "
         "the message says how many steps would fit",
    503: "over capacity, still loading or shutting down; retry after the Retry-After header's seconds",
    500: "an unexpected server error",
}


# only the public API drains and sheds: where BentoML's dispatcher is not found, in-flight requests send
# their tile chunks through the /denoise_tiles route, which must keep working during the drain
hardening.install(CFG.dispatch_poll_ms / 1000, api_paths=("/upscale",),
                  retry_after_s=CFG.retry_after_s, drain_timeout_s=CFG.deadline_s + 5,  # admitted work ends by then
                  header_timeout_s=CFG.upload_timeout_s)


def decode_tiles(data: bytes) -> tuple[np.ndarray, TilePlan]:
    """The upload as bicubic 128x128 tiles (one thread hop for both)."""
    return make_tiles(decode(data, CFG.limits), TileConfig(overlap=CFG.overlap))


def error(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    if status == 503 and retry_after_s is None:
        retry_after_s = CFG.retry_after_s
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@bentoml.asgi_app(info_app, path="/")
# runner_connection: the client behind self.to_async is otherwise replaced every 100 calls or 300 s, and
# BentoML closes the old one with calls still in flight (ServerDisconnectedError, ~10% of requests in a soak).
# service_class: the OpenAPI document (/docs.json) in the product's terms, without the internal batchable API
@bentoml.service(name=SERVICE_NAME, workers=CFG.workers, threads=1, traffic={"timeout": CFG.timeout_s},
                 runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
                 service_class=documented(DESCRIPTION, internal=("denoise_tiles",), errors={"/upscale": ERRORS}))
class SRNAS(ServedModels):
    def __init__(self) -> None:
        self.models: dict[str, Served] = {}  # every configured model, the default first
        self.served: Served | None = None  # the default model, set last: the worker is ready then
        self.load_error: str | None = None
        self.admission: Admission | None = None
        self._calibrating: asyncio.Future | None = None
        self.gate = threading.Lock() if CFG.cpu_gate else contextlib.nullcontext()
        self.board = BusyBoard.for_this_server(bentoml.server_context.worker_index)
        # BentoML's stored models, resolved: their versions and folders
        self.stored_models = {name: getattr(self, attr) for name, attr in REF_ATTRS.items()}
        self.denoise_batched = BatchedCall(self, "denoise_tiles")
        dead = metrics.reap_dead_workers()  # a worker that replaces a killed one clears its stale gauges
        if dead:
            log.warning("removed the live gauges of dead workers %s", dead)
        # load in the background so /livez answers at once and /readyz stays false until warm
        threading.Thread(target=self._load, name="srnas-load", daemon=True).start()

    def _load(self) -> None:
        try:
            models = load_models({name: (Path(m.path), str(m.tag)) for name, m in self.stored_models.items()}, CFG)
            # each model charged at its own idle speed, all from the largest start-up contention, so that the
            # first requests are not admitted on an idle machine's speed
            default = models[CFG.default_model]
            clock = StepClock(default.idle_step_s(), factor=max(s.contention() for s in models.values()),
                              models={name: s.idle_step_s() for name, s in models.items()})
            self.admission = Admission(clock, CFG.max_batch_size, CFG.deadline_s, CFG.admit_headroom,
                                       CFG.max_inflight_requests, CFG.max_inflight_tiles)
            self.models, self.served = models, default
            SHED.check = self._shed
            for name, s in models.items():  # BentoML's stored models: their versions are resolved
                tag = self.stored_models[name].tag
                metrics.MODEL_INFO.labels(tag.name, tag.version or "", s.denoiser.label, s.denoiser.provider).set(1)
            metrics.WORKERS_READY.set(1)
        except Exception as exc:  # /livez turns false, so the orchestrator restarts us
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    def __is_ready__(self) -> bool:
        # /readyz reaches any one worker: ready only once every worker has the model, so that no request
        # after a true /readyz meets a worker that is still loading; not ready while any worker is past its
        # queue bound (so that Kubernetes routes elsewhere) or while draining (serving/edge.py answers that)
        self._publish_saturation()
        return (self.served is not None and metrics.workers_ready() >= CFG.workers
                and metrics.workers_saturated() == 0 and not DRAIN.draining)

    def _shed(self) -> tuple[int, str] | None:
        """(Retry-After, why) for a request refused before its body is read (this worker is saturated)."""
        adm = self.admission
        if adm is None or adm.clock.stale:  # a stale estimate is refreshed first, by admitting normally
            return None
        why = adm.why_saturated()
        if why is None:
            return None
        metrics.REFUSED.labels("shed").inc()
        return adm.retry_after_s(adm.queue_s() / max(adm.requests, 1)), why

    def _publish_saturation(self) -> None:
        if self.admission is not None:
            metrics.WORKERS_SATURATED.set(int(self.admission.saturated()))

    def __is_alive__(self) -> bool:
        return self.load_error is None

    def limits_info(self) -> dict:
        lim = CFG.limits
        return {"max_bytes": lim.max_bytes, "max_pixels": lim.max_pixels, "max_side": lim.max_side,
                "min_side": lim.min_side, "max_steps": lim.max_steps, "max_batch_size": CFG.max_batch_size,
                "max_latency_ms": CFG.max_latency_ms, "deadline_s": CFG.deadline_s,
                "admit_headroom": CFG.admit_headroom, "workers": CFG.workers, "threads": CFG.threads,
                "max_inflight_requests": CFG.max_inflight_requests, "max_inflight_tiles": CFG.max_inflight_tiles,
                "tile_batching": self.denoise_batched.resolve(), "solo_direct": bool(CFG.solo_direct),
                "upload_timeout_s": CFG.upload_timeout_s,
                # the worker that answered: the step speed it assumes now and the work it holds
                "admission": self.admission.describe() if self.admission else None}

    def models_info(self) -> dict:
        """The served models for /info, by name, and which one a request without `model` gets."""
        return {"default_model": CFG.default_model, "models": {name: s.describe() for name, s in self.models.items()}}

    @bentoml.api(route="/upscale")
    async def upscale(self, image: Path, steps: Steps = None, sampler: Sampler = None,
                      seed: Seed = 0, model: ModelName = None) -> Annotated[Path, ContentType("image/png")]:
        """x2 super-resolution of a PNG, JPEG or WebP image; returns a PNG twice the size."""
        admission = self.admission
        if self.served is None or admission is None:
            return error(503, "model is loading")
        name = model or CFG.default_model
        served = self.models.get(name)
        if served is None:
            return error(400, f"unknown model {name!r}; choose from {', '.join(self.models)}")
        d = served.bundle.defaults
        cfg = SamplerConfig(sampler or d["sampler"], steps or d["steps"], d.get("eta", 0.0))
        try:
            cfg.validate(min(served.bundle.diffusion.schedule.T, CFG.limits.max_steps))
            size = image.stat().st_size
            if size > CFG.limits.max_bytes:
                raise BadImage(f"image is {size} bytes; at most {CFG.limits.max_bytes} are accepted", 413)
            data = image.read_bytes()
            width, height = probe(data, CFG.limits)  # the header only: admission before any pixel
        except UserError as exc:
            return error(400, str(exc))
        except BadImage as exc:
            return error(exc.status, str(exc))
        if admission.clock.stale:
            await self._calibrate(served)
        decision = admission.admit(tile_count(width, height, CFG.overlap), cfg.steps, name)
        self._publish_saturation()
        if decision.work is None:
            metrics.REFUSED.labels(decision.reason).inc()
            return error(decision.status, decision.message, decision.retry_after_s)
        work = decision.work
        metrics.INFLIGHT.inc()
        answer: Response | None = None
        try:
            answer = await self._until_done_or_abandoned(work, self._upscale(data, name, cfg, seed, work))
            return answer
        finally:
            admission.release(work, answered=answer is not None and answer.status_code == 200)
            self._publish_saturation()
            metrics.INFLIGHT.dec()

    async def _until_done_or_abandoned(self, work: Work, job) -> Response:
        outcome, answer = await until_done_or_abandoned(work, job, SRNAS.context.request.receive)
        if outcome == "done":
            return answer
        metrics.ABANDONED.labels(outcome).inc()
        if outcome == "disconnect":  # nobody reads this answer; 499 as nginx logs a client that left
            return error(499, "client closed the request")
        return error(503, f"deadline of {CFG.deadline_s:g} s passed before the answer was ready")

    async def _calibrate(self, served: Served) -> None:
        """One timed batch-1 step, so that admission after idle time decides on the machine's speed now
        (other programs may have taken the CPUs meanwhile); concurrent arrivals share it."""
        if self._calibrating is None or self._calibrating.done():
            size = served.bundle.unet.image_size
            x, level = np.zeros((1, 6, size, size), np.float32), np.full((1,), 0.5, np.float32)

            def step() -> None:
                with self.gate:
                    t0 = time.perf_counter()
                    served.denoiser.run(x, level)
                    self.admission.clock.observe(1, time.perf_counter() - t0, weight=1.0, model=served.name)

            self._calibrating = asyncio.ensure_future(anyio.to_thread.run_sync(step))
        await asyncio.shield(self._calibrating)

    async def _upscale(self, data: bytes, model: str, cfg: SamplerConfig, seed: int, work: Work) -> Response:
        try:
            tiles, plan = await self._cpu(decode_tiles, data)
        except BadImage as exc:
            return error(exc.status, str(exc))
        metrics.REQUEST_TILES.observe(len(tiles))
        metrics.REQUESTED_STEPS.observe(cfg.steps)
        try:
            sr = await self._denoise(tiles, model, cfg, seed, work)
        except BentoMLException as exc:
            if int(getattr(exc.error_code, "value", 500)) == 503:
                return error(503, "over capacity: tile queue past its latency bound")
            raise
        png = await self._cpu(lambda: encode_png(blend_tiles(sr, plan), CFG.png_level))
        return Response(png, media_type="image/png")

    async def _cpu(self, fn, *args):
        """Image work off the event loop, and never during a network call (see `timed`)."""
        def gated():
            with self.gate:
                return fn(*args)

        return await anyio.to_thread.run_sync(gated)

    async def _denoise(self, tiles: np.ndarray, model: str, cfg: SamplerConfig, seed: int, work: Work
                       ) -> np.ndarray:
        """Send the tiles in chunks of at most one batch; BentoML batches chunks of all requests together."""
        now = time.time()
        refs = [STORE.put(t, work) for t in tiles]
        try:
            jobs = [TileJob.of(r, model=model, steps=cfg.steps, sampler=cfg.sampler, seed=s, sent_at=now)
                    for r, s in zip(refs, tile_seeds(seed, len(tiles)))]
            n = CFG.max_batch_size
            if CFG.solo_direct and self.admission.requests == 1 and len(jobs) <= n:
                # alone in this worker: BentoML's dispatcher would only hold the tiles for company that
                # is not there (its learned wait), so run them at once; concurrent requests still batch
                metrics.SOLO_DIRECT.inc()
                await anyio.to_thread.run_sync(self._run_tiles, jobs)
            else:
                await asyncio.gather(*(self.denoise_batched(jobs[i: i + n]) for i in range(0, len(jobs), n)))
            return np.stack([STORE.get(r).result for r in refs])
        finally:  # also when the client goes away mid-request: nothing stays behind
            STORE.drop(refs)

    @bentoml.api(route="/denoise_tiles", batchable=True, max_batch_size=CFG.max_batch_size,
                 max_latency_ms=CFG.dispatcher_latency_ms)
    def denoise_tiles(self, jobs: list[TileJob]) -> list[bool]:
        """Internal: sample tiles that /upscale in this worker holds (by reference), batched across requests."""
        return self._run_tiles(jobs)

    def _run_tiles(self, jobs: list[TileJob]) -> list[bool]:
        if self.served is None:
            raise bentoml.exceptions.ServiceUnavailable("model is loading")
        now = time.time()
        for job in jobs:
            metrics.QUEUE_WAIT.observe(min(max(now - job.sent_at, 0.0), CFG.timeout_s))
        models = {name: TileModel(timed(s.denoiser.run, self._observer(s), self.gate, self.board.busy),
                                  s.bundle.diffusion, s.bundle.defaults.get("eta", 0.0))
                  for name, s in self.models.items()}
        return run_jobs(jobs, models, CFG.limits.max_steps)

    def _observer(self, served: Served):
        """What every network call of `served` records: its metrics, and its time for the admission clock."""
        label, clock = served.denoiser.label, self.admission.clock

        def observe(batch: int, seconds: float, cpu_seconds: float, load: int) -> None:
            metrics.DENOISE_STEP.labels(label, str(batch)).observe(seconds)
            metrics.DENOISE_CPU.labels(label, str(batch)).inc(cpu_seconds)
            if batch in served.predicted:  # this model's prediction at the load this step ran under
                metrics.EXPECTED_STEP.labels(label, str(batch)).inc(served.predicted[batch] * served.slowdown_at(load))
            metrics.TILE_STEPS.labels(served.name).inc(batch)
            clock.observe(batch, seconds, model=served.name)
            self._publish_saturation()  # the queue drains as steps run

        return observe


_body = CFG.limits.max_bytes + 64 * 1024  # the image plus the small form fields
SRNAS.add_asgi_middleware(BodyLimit, limits={"/upscale": _body},
                          default=CFG.max_batch_size * JOB_JSON_BYTES + 4096, upload_timeout_s=CFG.upload_timeout_s,
                          notes={"/upscale": f"an image of at most {CFG.limits.max_bytes} bytes (SRNAS_MAX_BYTES) "
                                             "and the form fields"})
SRNAS.add_asgi_middleware(RetryAfter, seconds=CFG.retry_after_s)
