"""The tile store and mixed-batch runner behind /denoise_tiles (no server: the same code the worker runs)."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from models.checkpoint import load_model
from models.sampler import SamplerConfig
from models.upscaler import sample_tiles, torch_denoiser
from serving.tiles import STORE, TileJob, run_jobs


@pytest.fixture(scope="module")
def bundle():
    return load_model()


def tiles(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 3, 128, 128)).astype(np.float32)


def test_jobs_must_name_a_tile_the_worker_holds():
    ref = STORE.put(tiles(1)[0])
    try:
        assert TileJob.model_validate({"ref": ref, "steps": 1, "sampler": "ddim", "seed": 0}).ref == ref
    finally:
        STORE.drop([ref])
    with pytest.raises(ValidationError, match="unknown tile reference"):
        TileJob.model_validate({"ref": ref, "steps": 1, "sampler": "ddim", "seed": 0})


def test_a_mixed_batch_matches_each_tile_run_alone_and_skips_dropped_jobs(bundle):
    x = tiles(4)
    setting = [(1, "ddim"), (2, "ddim"), (1, "ddim"), (2, "ddpm")]
    refs = [STORE.put(t) for t in x]
    jobs = [TileJob.model_validate({"ref": r, "steps": st, "sampler": sa, "seed": 10 + i})
            for i, (r, (st, sa)) in enumerate(zip(refs, setting))]
    STORE.drop(refs[3:])  # this request went away while its job waited
    try:
        denoiser = torch_denoiser(bundle.net)
        assert run_jobs(jobs, denoiser, bundle.diffusion, 0.0, max_steps=100) == [True, True, True, False]
        for i in range(3):
            alone = sample_tiles(denoiser, bundle.diffusion, x[i: i + 1], SamplerConfig(setting[i][1], setting[i][0]),
                                 [10 + i], batch=1)[0]
            np.testing.assert_allclose(STORE.get(refs[i]).result, alone, atol=1e-5)
    finally:
        STORE.drop(refs)
    assert len(STORE) == 0
