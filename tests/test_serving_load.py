"""The service under concurrent load: zero failures, shared batches, mixed (steps, sampler) grouping,
and observed per-step latency against the model's search-time prediction."""
from __future__ import annotations

import io
import os
import re
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.launch import serving

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"
SAMPLE_LINE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


@pytest.fixture(scope="module")
def server(bento_home, tmp_path_factory):
    with serving({"BENTOML_HOME": str(bento_home), "SRNAS_MAX_BATCH_SIZE": "8", "SRNAS_WARMUP_RUNS": "5"},
                 log=tmp_path_factory.mktemp("log") / "serve.log") as srv:
        yield srv


def png(h: int, w: int, seed: int = 0) -> bytes:
    img = Image.open(SAMPLE).convert("RGB")
    x0 = seed % max(1, img.width - w)
    buf = io.BytesIO()
    img.crop((x0, 0, x0 + w, h)).save(buf, format="PNG")
    return buf.getvalue()


def upscale(server, data: bytes, **fields) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    try:
        r = httpx.post(server.url + "/upscale", files={"image": ("a.png", data)},
                       data={k: str(v) for k, v in fields.items()}, timeout=300)
        return r.status_code, r.content, time.perf_counter() - t0
    except httpx.HTTPError as exc:  # a dropped connection counts as a failure
        return -1, repr(exc).encode(), time.perf_counter() - t0


def metrics(server) -> dict[str, dict[tuple, float]]:
    """{metric sample name: {sorted label items: value}} from the Prometheus text on /metrics."""
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        m = SAMPLE_LINE.match(line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2))))
            out[m.group(1)][labels] = float(m.group(3))
    return out


def batch_sizes_over_one(m) -> float:
    """Adaptive batches that merged more than one tile job, from BentoML's own histogram."""
    buckets = m["bentoml_service_adaptive_batch_size_bucket"]
    total = sum(v for k, v in buckets.items() if ("le", "+Inf") in k)
    ones = sum(v for k, v in buckets.items() if ("le", "1.0") in k)
    return total - ones


def run_load(server, jobs: list[tuple[bytes, dict]], concurrency: int) -> list[tuple[int, bytes, float]]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda j: upscale(server, j[0], **j[1]), jobs))


# Clients in the steady-load check. The test's own client shares the server's 2 CPUs here, so with 2
# concurrent clients its CPU time lands inside the server's step timings: the ratio then ran 1.04-1.29 over
# six runs (one CI failure). One client keeps the load steady without the test oversubscribing the host;
# a larger host can raise it.
LOAD_CONCURRENCY = int(os.environ.get("SRNAS_TEST_CONCURRENCY", "1"))
# Many steps per request: while one batch's network calls run, other requests' tiles reach the queue between
# its steps and the dispatcher merges them. On the 2-core AMD EPYC host of the shipped table (3.8 ms steps) 1-3 steps gave 3 merged
# batches per run and one CI run saw none; 8-16 steps gave 7-9.
MIXED = [{"steps": 8}, {"steps": 16, "sampler": "ddpm"}, {"steps": 12, "sampler": "ddim"}, {"steps": 16}]


def test_concurrent_requests_share_batches_and_never_fail(server):
    before = batch_sizes_over_one(metrics(server))
    jobs = [(png(64, 64, i), {**MIXED[i % len(MIXED)], "seed": i}) for i in range(32)]
    results = run_load(server, jobs, concurrency=8)
    failures = [(s, body[:200]) for s, body, _ in results if s != 200]
    assert failures == []
    assert batch_sizes_over_one(metrics(server)) - before > 0  # tiles of different requests shared a batch
    # grouped by (steps, sampler) inside shared batches: each result equals the same request made alone
    for i in (0, 1, 2, 3):
        status, alone, _ = upscale(server, jobs[i][0], **jobs[i][1])
        a = np.asarray(Image.open(io.BytesIO(alone)), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(results[i][1])), dtype=int)
        assert status == 200 and np.abs(a - b).max() <= 1  # runtime batch-size rounding at most


def test_multi_tile_requests_under_load(server):
    jobs = [(png(96 + 8 * (i % 3), 120, i), {"steps": 2, "seed": i}) for i in range(8)]
    results = run_load(server, jobs, concurrency=4)
    assert [s for s, _, _ in results] == [200] * len(jobs)
    for (data, _), (_, body, _) in zip(jobs, results):
        lr, sr = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(body))
        assert sr.size == (2 * lr.width, 2 * lr.height)


def test_every_step_under_load_has_a_prediction_to_compare_with(server):
    """Steady load, then observed / predicted per (backend, batch_size) from /metrics: the plumbing of the ratio.
    Whether the estimate holds is a measurement (bench/prediction.py, BENCHMARKS.md), not a unit test: it depends
    on the host and on what else runs there."""
    info = httpx.get(server.url + "/info").json()
    assert info["prediction_source"]["kind"] in ("table", "calibrated"), info["prediction_source"]
    jobs = [(png(64, 64, i), {"steps": 4, "seed": i}) for i in range(24)]
    results = run_load(server, jobs, concurrency=LOAD_CONCURRENCY)
    assert all(s == 200 for s, _, _ in results)
    after = metrics(server)
    predicted = after.get("sr_predicted_step_seconds", {})
    label = info["backend"]["label"]
    assert {dict(k)["batch_size"] for k in predicted if dict(k)["backend"] == label} == {
        str(b) for b in range(1, info["limits"]["max_batch_size"] + 1)}
    expected = after.get("sr_expected_step_seconds_total", {})
    slow = info["prediction_source"].get("slowdown") or {"1": 1.0}
    for labels, count in after["sr_denoise_step_seconds_count"].items():
        if count:  # every batch size that ran has a prediction at the loads it ran under, and a finite ratio
            assert labels in predicted and labels in expected
            assert count * predicted[labels] <= expected[labels] * (1 + 1e-9) <= count * predicted[labels] * max(
                slow.values()) * (1 + 1e-3)  # /info rounds the slowdown to 3 decimals
            assert 0 < after["sr_denoise_step_seconds_sum"][labels] / expected[labels] < float("inf")


def test_request_benchmark_measures_latency_overhead_and_throughput(server):
    """bench/requests.py against the real server: every figure it reports comes from real requests."""
    from bench.requests import measure

    report = measure(server.url, requests=4, clients=2, concurrent=6, repeats=3)
    assert len(report["ratios_per_round"]) == 3 and report["concurrent"]["requests"] == 6
    assert report["concurrent"]["ratio_to_one_client"] == sorted(report["ratios_per_round"])[1]  # the median round
    assert report["steps"] == report["defaults"]["steps"] >= 1
    # every request holds its steps, so the mean request outlasts them; a median need not (one slow step moves the
    # mean step but not the median request when the default takes a single step)
    assert 0 < report["steps"] * report["mean_step_s_batch1"] < 1 / report["single"]["images_per_s"]
    assert report["single"]["p50_s"] <= report["single"]["p95_s"]
    assert report["overhead_s"] == report["single"]["p50_s"] - report["steps"] * report["mean_step_s_batch1"]
    assert report["mean_step_s_batch1"] < report["server_mean_s"]  # BentoML's own request histogram, server side
    assert report["server_overhead_s"] == report["server_mean_s"] - report["steps"] * report["mean_step_s_batch1"]
    assert report["concurrent"]["images_per_s"] > 0 and report["concurrent"]["clients"] == 2
    assert report["tile_batching"] == "bentoml-dispatcher"  # tiles reach BentoML's batcher without an HTTP hop
    assert report["solo_direct"] is True and report["queue_wait_s"] >= 0


def test_paired_benchmark_alternates_servers(server, capsys):
    """--versus's paired mode: every figure from real requests, one set per server; bad settings exit 2."""
    from bench.requests import main, paired, paired_throughput

    (one,) = paired([server.url], rounds=2, block=3)
    steps = httpx.get(server.url + "/info").json()["defaults"]["steps"]
    assert 0 < steps * one["mean_step_s_batch1"] < 1 / one["images_per_s"] and one["p50_s"] <= one["p95_s"]
    assert one["server_overhead_s"] == one["server_mean_s"] - steps * one["mean_step_s_batch1"]
    assert one["overhead_s"] == one["p50_s"] - steps * one["mean_step_s_batch1"] and one["images_per_s"] > 0
    for bad in ("WORKERS=2", "SRNAS_WORKERS", ""):
        with pytest.raises(SystemExit) as exc:
            main(["--versus", bad])
        assert exc.value.code == 2
    assert "SRNAS_VAR=VALUE" in capsys.readouterr().err
    for bad in (["--concurrent", "0"], ["--repeats", "0"]):  # refused before any server starts
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # another checkout that is not one of this project
        main(["--versus-checkout", "/tmp"])
    assert exc.value.code == 2 and "not a checkout of this project" in capsys.readouterr().err
    throughput = paired_throughput([server.url, server.url], clients=2, rounds=2, per_client=2)
    assert throughput["rounds"] == 2 and throughput["this_images_per_s"] > 0 < throughput["versus_images_per_s"]


def test_footprint_refuses_a_folder_without_bentoml(tmp_path, capsys):
    from bench.footprint import main

    with pytest.raises(SystemExit) as exc:
        main(["--venv", str(tmp_path)])
    assert exc.value.code == 2 and "no bin/bentoml there" in capsys.readouterr().err
