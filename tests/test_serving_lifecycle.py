"""Start-up, overload and shutdown of the real server: /readyz waits for the model, past capacity the
answer is 503 + Retry-After, and SIGTERM lets an in-flight request finish."""
from __future__ import annotations

import io
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from serving.launch import start, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").resize((side, side)).save(buf, format="PNG")
    return buf.getvalue()


def post(url: str, data: bytes, **fields) -> httpx.Response:
    return httpx.post(url + "/upscale", files={"image": ("a.png", data)},
                      data={k: str(v) for k, v in fields.items()}, timeout=300)


def inflight(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("sr_inflight_requests "):
            return float(line.split()[1])
    return 0.0


def wait_for(cond, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_readyz_false_until_model_loaded(bento_home, tmp_path):
    """Also: the backend is chosen by SRNAS_BACKEND (torch here; ONNX Runtime is the default elsewhere)."""
    # many warm-up runs keep the model loading for a while after the process is up
    srv = start({"BENTOML_HOME": str(bento_home), "SRNAS_WARMUP_RUNS": "60", "SRNAS_BACKEND": "torch"},
                tmp_path / "serve.log")
    try:
        wait_ready(srv, path="/livez")
        r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503
        busy = post(srv.url, png(16))
        assert busy.status_code == 503 and busy.headers["retry-after"] and busy.json()["error"] == "model is loading"
        wait_ready(srv)
        assert post(srv.url, png(16)).status_code == 200
        assert httpx.get(srv.url + "/info").json()["backend"]["label"] == "torch"
    finally:
        stop(srv)


@pytest.mark.parametrize("bound,why,retry", [
    # our admission bound: Retry-After from the work queued ahead
    ({"SRNAS_MAX_INFLIGHT_REQUESTS": "2"}, "requests in flight (at most 2)", None),
    # BentoML's batching queue drops late tile jobs when its own bound is set: the configured Retry-After. Every
    # request goes through that queue: one that arrives alone would otherwise run direct, past the bound
    ({"SRNAS_MAX_LATENCY_MS": "100", "SRNAS_SOLO_DIRECT": "0"}, "latency bound", "3"),
])
def test_overload_answers_503_with_retry_after(bento_home, tmp_path, bound, why, retry):
    srv = start({"BENTOML_HOME": str(bento_home), "SRNAS_RETRY_AFTER_S": "3", **bound}, tmp_path / "serve.log")
    try:
        wait_ready(srv)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: post(srv.url, png(64), steps=40, seed=i), range(8)))
        codes = sorted(r.status_code for r in answers)
        assert set(codes) == {200, 503}, codes
        for r in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] == retry if retry else int(r.headers["retry-after"]) >= 1
                assert why in r.json()["error"]
        assert post(srv.url, png(16)).status_code == 200  # and it recovers
    finally:
        stop(srv)


def test_sigterm_finishes_inflight_request(bento_home, tmp_path):
    """SIGTERM drains: the request in flight finishes, while a new one gets 503 at once (not a connection
    left waiting in the listen backlog) and /readyz turns false, until the worker exits."""
    srv = start({"BENTOML_HOME": str(bento_home), "SRNAS_WORKERS": "1", "SRNAS_THREADS": "1"}, tmp_path / "serve.log")
    wait_ready(srv)
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.setdefault("r", post(srv.url, png(96), steps=100)))
    try:
        slow.start()
        assert wait_for(lambda: inflight(srv.url) >= 1)
        srv.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: httpx.get(srv.url + "/readyz", timeout=10).status_code == 503, 30)
        new = httpx.post(srv.url + "/upscale", files={"image": ("a.png", png(16))}, timeout=10)
        assert new.status_code == 503 and new.json()["error"] == "server is shutting down"
        assert int(new.headers["retry-after"]) >= 1
        assert slow.is_alive()  # the drain was still waiting for it
        slow.join(300)
        r = result["r"]
        assert r.status_code == 200
        assert Image.open(io.BytesIO(r.content)).size == (192, 192)
        assert srv.proc.wait(60) == 0
    finally:
        stop(srv)


def test_readyz_false_while_the_worker_is_past_its_queue_bound(bento_home, tmp_path):
    """One worker admitting one request: while it runs, the worker is saturated and /readyz says so (so that
    Kubernetes routes elsewhere); once it is done, /readyz is true again."""
    srv = start({"BENTOML_HOME": str(bento_home), "SRNAS_WORKERS": "1", "SRNAS_THREADS": "1",
                 "SRNAS_MAX_INFLIGHT_REQUESTS": "1"}, tmp_path / "serve.log")
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.setdefault("r", post(srv.url, png(96), steps=100)))
    try:
        wait_ready(srv)
        slow.start()
        assert wait_for(lambda: inflight(srv.url) >= 1)
        r = httpx.get(srv.url + "/readyz", timeout=10)
        assert r.status_code == 503 and slow.is_alive()
        slow.join(300)
        assert result["r"].status_code == 200
        assert httpx.get(srv.url + "/readyz", timeout=10).status_code == 200
    finally:
        stop(srv)


def test_two_workers_share_one_metrics_view(bento_home, tmp_path):
    """SRNAS_WORKERS x SRNAS_THREADS = 2 x 1 on this quota (the default). /readyz, which any one worker
    answers, turns true only once both have the model, so no request after it meets a loading worker;
    /metrics adds up both workers' samples."""
    # SRNAS_SOLO_DIRECT=0: BentoML's per-worker batch metric counts only dispatched tiles, and a worker
    # whose requests all arrived alone would otherwise be missing from it
    srv = start({"BENTOML_HOME": str(bento_home), "SRNAS_WORKERS": "2", "SRNAS_THREADS": "1", "SRNAS_WARMUP_RUNS": "20",
                 "SRNAS_SOLO_DIRECT": "0"}, tmp_path / "serve.log")
    try:
        wait_ready(srv)
        n = 16
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda i: post(srv.url, png(32), seed=i).status_code, range(n)))
        assert codes == [200] * n
        text = httpx.get(srv.url + "/metrics").text
        workers = set()
        for line in text.splitlines():
            if line.startswith("bentoml_service_adaptive_batch_size_count"):
                workers.add(line.split('worker_index="')[1].split('"')[0])
            if line.startswith("sr_request_tiles_count "):
                assert float(line.split()[1]) == n
        assert len(workers) == 2, workers  # both workers ran tiles, and their counts add up to n
        assert httpx.get(srv.url + "/info").json()["limits"]["workers"] == 2
    finally:
        stop(srv)
