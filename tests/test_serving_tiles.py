"""The tile store and mixed-batch runner behind /denoise_tiles (no server: the same code the worker runs)."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from models.checkpoint import load_model
from models.sampler import SamplerConfig
from models.eager import torch_denoiser
from models.upscaler import sample_tiles
from serving.tiles import STORE, TileJob, TileModel, run_jobs


@pytest.fixture(scope="module")
def bundle():
    return load_model()


def tiles(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 3, 128, 128)).astype(np.float32)


def test_jobs_must_name_a_tile_the_worker_holds():
    ref = STORE.put(tiles(1)[0])
    try:
        assert TileJob.model_validate({"ref": ref, "model": "default", "steps": 1, "sampler": "ddim",
                                       "seed": 0}).ref == ref
        with pytest.raises(ValidationError, match="model"):  # every job names its model
            TileJob.model_validate({"ref": ref, "steps": 1, "sampler": "ddim", "seed": 0})
    finally:
        STORE.drop([ref])
    with pytest.raises(ValidationError, match="unknown tile reference"):
        TileJob.model_validate({"ref": ref, "model": "default", "steps": 1, "sampler": "ddim", "seed": 0})


def test_a_mixed_batch_matches_each_tile_run_alone_and_skips_dropped_jobs(bundle):
    x = tiles(4)
    setting = [(1, "ddim"), (2, "ddim"), (1, "ddim"), (2, "ddpm")]
    refs = [STORE.put(t) for t in x]
    jobs = [TileJob.model_validate({"ref": r, "model": "default", "steps": st, "sampler": sa, "seed": 10 + i})
            for i, (r, (st, sa)) in enumerate(zip(refs, setting))]
    STORE.drop(refs[3:])  # this request went away while its job waited
    try:
        denoiser = torch_denoiser(bundle.net)
        models = {"default": TileModel(denoiser, bundle.diffusion)}
        assert run_jobs(jobs, models, max_steps=100) == [True, True, True, False]
        for i in range(3):
            alone = sample_tiles(denoiser, bundle.diffusion, x[i: i + 1], SamplerConfig(setting[i][1], setting[i][0]),
                                 [10 + i], batch=1)[0]
            np.testing.assert_allclose(STORE.get(refs[i]).result, alone, atol=1e-5)
    finally:
        STORE.drop(refs)
    assert len(STORE) == 0


def test_a_group_stops_at_the_next_step_once_every_request_in_it_is_abandoned(bundle):
    """An abandoned request costs at most the step already running; a group it shares with a live request
    runs on, and each request's progress is counted in tile-steps."""
    from serving.admission import Work

    gone, live = Work(tiles=2, steps=20, deadline=0), Work(tiles=1, steps=20, deadline=0)
    net = torch_denoiser(bundle.net)
    calls = []

    def denoiser(x, noise_level):
        calls.append(x.shape[0])
        if len(calls) == 3:
            gone.cancelled = True  # the client disconnects during the third step
        return net(x, noise_level)

    refs = [STORE.put(t, gone) for t in tiles(2)]
    other = [STORE.put(t, live) for t in tiles(1)]
    try:
        jobs = [TileJob.of(r, model="default", steps=20, sampler="ddim", seed=i) for i, r in enumerate(refs)]
        models = {"default": TileModel(denoiser, bundle.diffusion)}
        assert run_jobs(jobs, models, max_steps=100) == [False, False]
        assert calls == [2, 2, 2] and gone.done == 6  # stopped before the fourth step
        calls.clear()
        mixed = jobs + [TileJob.of(other[0], model="default", steps=20, sampler="ddim", seed=9)]
        assert run_jobs(mixed, models, max_steps=100) == [False, False, True]
        assert calls == [1] * 20 and live.done == 20  # abandoned tiles were not even queued into the batch
    finally:
        STORE.drop(refs + other)


def test_a_mixed_batch_groups_by_model_and_no_network_call_mixes_models(bundle):
    """Two served models in one adaptive batch: each network call sees one model's tiles only, every tile is
    sampled by its own model (with its own diffusion settings), and a job naming a model not served is skipped."""
    from models.diffusion import Diffusion, DiffusionConfig

    def fake(scale: float, calls: list):
        def run(x, noise_level):  # records which tiles it was given; a model-specific output
            calls.append(x[:, :3, 0, 0].copy())  # channels 3..5 carry y_t, 0..2 the bicubic tile
            return np.full_like(x[:, :3], scale)
        return run

    x = np.stack([np.full((3, 128, 128), v, np.float32) for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)])
    owner = ["a", "b", "a", "b", "b", "nope"]  # interleaved, as concurrent requests arrive
    calls = {"a": [], "b": []}
    models = {"a": TileModel(fake(0.25, calls["a"]), bundle.diffusion),
              "b": TileModel(fake(-0.25, calls["b"]), Diffusion(DiffusionConfig(prediction="eps")))}
    refs = [STORE.put(t) for t in x]
    try:
        jobs = [TileJob.of(r, model=m, steps=2, sampler="ddim", seed=i) for i, (r, m) in enumerate(zip(refs, owner))]
        assert run_jobs(jobs, models, max_steps=100) == [True] * 5 + [False]
        assert [len(c) for c in calls["a"]] == [2, 2] and [len(c) for c in calls["b"]] == [3, 3]  # one loop each
        for name, values in (("a", {0.1, 0.3}), ("b", {0.2, 0.4, 0.5})):
            for c in calls[name]:
                assert set(np.round(c[:, 0].astype(np.float64), 3).tolist()) == values  # only this model's tiles
        for i, name in enumerate(owner[:5]):  # each tile as its own model samples it alone
            alone = sample_tiles(models[name].denoiser, models[name].diffusion, x[i: i + 1], SamplerConfig("ddim", 2),
                                 [i], batch=1)[0]
            np.testing.assert_allclose(STORE.get(refs[i]).result, alone, atol=1e-5)
        assert STORE.get(refs[5]).result is None
    finally:
        STORE.drop(refs)
