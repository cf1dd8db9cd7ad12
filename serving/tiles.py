"""Tile jobs: what the /upscale front sends to the batched denoiser, and how a mixed batch is run.

The front and the batched denoiser run in the same worker process (BentoML's self-proxy is an in-process
ASGI transport), so tiles never cross the self-call: the front parks each tile in this worker's
`TileStore` and sends only its reference, and the denoiser writes the result back into the same slot.
A job carries its own model, steps, sampler and seed, so one adaptive batch may mix requests; the batch is
split into groups of equal (model, steps, sampler) and each group runs as one batched sampling loop, so the
tiles of two models never share a network call. A tile's noise comes from its own seed, so its result does not
depend on the other tiles in its batch.
"""
from __future__ import annotations

import secrets
import time
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import numpy as np
from pydantic import BaseModel, Field, model_validator

from models.diffusion import Denoiser, Diffusion
from models.sampler import SamplerConfig, sample
from serving.admission import Work
from serving.config import MODEL_NAME

MAX_SEED = 2**63 - 1
REF_PATTERN = r"^[0-9a-f]{32}$"
JOB_JSON_BYTES = 512  # generous upper bound of one job's JSON, for the self-call body limit


@dataclass
class Slot:
    tile: np.ndarray  # bicubic-upsampled float32 CHW in [-1, 1]
    result: np.ndarray | None = None
    work: Work | None = None  # the request it belongs to (its progress, and whether it was abandoned)

    @property
    def live(self) -> bool:
        return self.work is None or not self.work.cancelled


class Abandoned(Exception):
    """Every request in a sampling group has gone: stop the loop before its next step."""


class TileStore:
    """This worker's tiles in flight, by unguessable reference. Only the front adds and removes them."""

    def __init__(self) -> None:
        self._slots: dict[str, Slot] = {}

    def put(self, tile: np.ndarray, work: Work | None = None) -> str:
        ref = secrets.token_hex(16)
        self._slots[ref] = Slot(np.ascontiguousarray(tile, dtype=np.float32), work=work)
        return ref

    def get(self, ref: str) -> Slot | None:
        return self._slots.get(ref)

    def drop(self, refs: list[str]) -> None:
        for ref in refs:
            self._slots.pop(ref, None)

    def __len__(self) -> int:
        return len(self._slots)


STORE = TileStore()


class TileJob(BaseModel):
    """A reference to one 128x128 tile held by this worker's front, and how to sample it."""

    ref: str = Field(pattern=REF_PATTERN)
    model: str = Field(pattern=f"^{MODEL_NAME.pattern}$")  # the served model's name (SRNAS_MODELS)
    steps: int = Field(ge=1, le=100_000)  # the front enforces the configured maximum
    sampler: Literal["ddim", "ddpm"]
    seed: int = Field(ge=0, le=MAX_SEED)
    sent_at: float = 0.0  # wall clock when the front queued it (for the queue-wait histogram)

    @model_validator(mode="after")
    def _known(self) -> "TileJob":
        # checked per request, before batching, so a bad job never fails the batch it would have joined
        if STORE.get(self.ref) is None:
            raise ValueError("unknown tile reference: /denoise_tiles only runs tiles that /upscale in the "
                             "same worker holds")
        return self

    @classmethod
    def of(cls, ref: str, **fields) -> "TileJob":
        """A job for the front's own tile (known to be valid, so not re-validated)."""
        return cls.model_construct(ref=ref, **fields)


# (batch size, seconds of one network call, CPU seconds in it, workers in a network call when it started)
StepObserver = Callable[[int, float, float, int], None]


def timed(denoiser, observe: StepObserver, gate: AbstractContextManager = nullcontext(),
          busy: Callable[[], AbstractContextManager[int]] = lambda: nullcontext(1)):
    """Wrap a denoiser so that every network call (one denoising step) is timed, in wall-clock and in the
    process's CPU seconds: where the CPUs are shared, the step waits for one and its wall time grows while its
    CPU time does not. Inside `gate`, which the front's image work also takes, so the runtime's threads get the
    CPUs to themselves, and inside `busy`, which counts the server's workers in a network call."""

    def run(x: np.ndarray, noise_level: np.ndarray) -> np.ndarray:
        with gate, busy() as load:
            t0, c0 = time.perf_counter(), time.process_time()
            out = denoiser(x, noise_level)
            observe(int(x.shape[0]), time.perf_counter() - t0, time.process_time() - c0, load)
        return out

    return run


@dataclass
class TileModel:
    """What sampling a tile of one served model needs: its network (one step) and its diffusion settings."""

    denoiser: Denoiser
    diffusion: Diffusion
    eta: float = 0.0


def run_jobs(jobs: list[TileJob], models: Mapping[str, TileModel], max_steps: int) -> list[bool]:
    """Sample every job's tile into its slot; jobs with the same (model, steps, sampler) share one batched loop,
    and no loop mixes models. A job whose request has gone (its slot dropped, or its work cancelled) is skipped
    and answered False, and so is one naming a model not served here; a group whose requests have all gone
    stops at its next step."""
    slots = [STORE.get(job.ref) for job in jobs]
    groups: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for i, (job, slot) in enumerate(zip(jobs, slots)):
        if slot is not None and slot.live and job.model in models:
            groups[(job.model, min(job.steps, max_steps), job.sampler)].append(i)
    ran = [False] * len(jobs)
    for (name, steps, sampler), idx in groups.items():
        group, model = [slots[i] for i in idx], models[name]
        bic = np.stack([s.tile for s in group])
        try:
            sr = sample(_watched(model.denoiser, group), model.diffusion, bic, SamplerConfig(sampler, steps, model.eta),
                        [jobs[i].seed for i in idx])
        except Abandoned:
            continue
        for i, slot, tile in zip(idx, group, sr):
            slot.result, ran[i] = tile, True
    return ran


def _watched(denoiser, group: list[Slot]):
    """The denoiser, checking before each step that some request in the group is still waiting for it,
    and counting each request's tile-steps as they run (its progress, for the admission estimate)."""
    per_work: dict[int, tuple[Work, int]] = {}
    for slot in group:
        if slot.work is not None:
            w, n = per_work.get(id(slot.work), (slot.work, 0))
            per_work[id(slot.work)] = (w, n + 1)
    tracked = len(per_work) == len({id(s.work) for s in group})  # every tile belongs to some request

    def run(x: np.ndarray, noise_level: np.ndarray) -> np.ndarray:
        if tracked and all(w.cancelled for w, _ in per_work.values()):
            raise Abandoned
        out = denoiser(x, noise_level)
        for w, n in per_work.values():
            w.done += n
        return out

    return run
