"""Tile jobs: what the /upscale front sends to the batched denoiser, and how a mixed batch is run.

A job carries its own steps, sampler and seed, so one adaptive batch may mix requests; the batch is
split into groups of equal (steps, sampler) and each group runs as one batched sampling loop. A tile's
noise comes from its own seed, so its result does not depend on the other tiles in its batch.
"""
from __future__ import annotations

import base64
import binascii
import time
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from models.diffusion import Diffusion
from models.sampler import SamplerConfig, sample

TILE = 128  # HR px, the size the network was trained on
TILE_SHAPE = (3, TILE, TILE)
TILE_BYTES = 3 * TILE * TILE * 4  # float32
TILE_B64 = 4 * ((TILE_BYTES + 2) // 3)
MAX_SEED = 2**63 - 1


def pack(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).decode("ascii")


def unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32).reshape(TILE_SHAPE)


class TileJob(BaseModel):
    """One bicubic-upsampled 128x128 tile (float32 CHW in [-1, 1], base64) and how to sample it."""

    tile: str = Field(min_length=TILE_B64, max_length=TILE_B64)
    steps: int = Field(ge=1, le=100_000)  # the front enforces the configured maximum
    sampler: Literal["ddim", "ddpm"]
    seed: int = Field(ge=0, le=MAX_SEED)
    sent_at: float = 0.0  # wall clock when the front queued it (for the queue-wait histogram)

    _array: np.ndarray | None = PrivateAttr(default=None)  # the decoded tile, kept by validation

    @classmethod
    def of(cls, tile: np.ndarray, **fields) -> "TileJob":
        """A job from the front's own tile: built without re-validating (and so re-decoding) what it packed."""
        return cls.model_construct(tile=pack(tile), **fields)

    @model_validator(mode="after")
    def _decode(self) -> "TileJob":
        try:
            raw = base64.b64decode(self.tile, validate=True)
            if len(raw) != TILE_BYTES:
                raise ValueError
        except (binascii.Error, ValueError):
            raise ValueError(f"tile must be base64 of {TILE_BYTES} bytes (float32 3x{TILE}x{TILE})") from None
        self._array = np.frombuffer(raw, dtype=np.float32).reshape(TILE_SHAPE)
        return self

    def array(self) -> np.ndarray:
        """The tile as float32 CHW: decoded once, at validation."""
        return self._array if self._array is not None else unpack(self.tile)


StepObserver = Callable[[int, float], None]  # (batch size, seconds of one network call)


def timed(denoiser, observe: StepObserver, gate: AbstractContextManager = nullcontext()):
    """Wrap a denoiser so that every network call (one denoising step) is timed; inside `gate`, which
    the front's image work also takes, so the runtime's threads get the CPUs to themselves."""

    def run(x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        with gate:
            t0 = time.perf_counter()
            out = denoiser(x, noise_level)
            observe(int(x.shape[0]), time.perf_counter() - t0)
        return out

    return run


def run_jobs(jobs: list[TileJob], denoiser, diffusion: Diffusion, eta: float, max_steps: int) -> list[str]:
    """Sample every job's tile; jobs with the same (steps, sampler) share one batched loop."""
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[(min(job.steps, max_steps), job.sampler)].append(i)
    out: list[str] = [""] * len(jobs)
    for (steps, sampler), idx in groups.items():
        bic = torch.from_numpy(np.stack([jobs[i].array() for i in idx]))
        sr = sample(denoiser, diffusion, bic, SamplerConfig(sampler, steps, eta), [jobs[i].seed for i in idx])
        for i, tile in zip(idx, sr.numpy()):
            out[i] = pack(tile)
    return out
