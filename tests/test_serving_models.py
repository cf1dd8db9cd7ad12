"""Two served models over real HTTP: a real `bentoml serve` on 127.0.0.1 whose SRNAS_MODELS maps `default` to the
shipped default and `real` to a second network (a copy of the shipped hard-Gumbel subnet, imported under a test
tag into the test's own model store), chosen per request with `model=`."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.launch import serving, start, stop

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"
TEST_TAG = "srnas-test-real"
SECOND = ROOT / "models" / "weights" / "gumbel-hard-tiny"  # another network than the default


def srnas(home: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("srnas")
    return subprocess.run([str(exe), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BENTOML_HOME": str(home)})


@pytest.fixture(scope="module")
def home(tmp_path_factory, import_shipped) -> Path:
    home = tmp_path_factory.mktemp("bentoml")
    import_shipped(home)
    second = tmp_path_factory.mktemp("second") / "real"
    shutil.copytree(SECOND, second)
    r = srnas(home, "store-import", "--model", second, "--name", TEST_TAG)
    assert r.returncode == 0 and r.stdout.startswith(f"stored {TEST_TAG}:"), r.stderr
    return home


@pytest.fixture(scope="module")
def server(home, tmp_path_factory):
    env = {"BENTOML_HOME": str(home), "SRNAS_MODELS": f"default=srnas-default,real={TEST_TAG}",
           "SRNAS_MAX_BATCH_SIZE": "8"}
    with serving(env, log=tmp_path_factory.mktemp("log") / "serve.log") as srv:
        yield srv
        assert "Traceback" not in srv.log_text()


def png(h: int, w: int, x0: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").crop((x0, 0, x0 + w, h)).save(buf, format="PNG")
    return buf.getvalue()


def post(server, data: bytes, **fields) -> httpx.Response:
    return httpx.post(server.url + "/upscale", files={"image": ("a.png", data)},
                      data={k: str(v) for k, v in fields.items()}, timeout=300)


def pixels(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)), dtype=int)


def test_each_model_answers_with_a_2x_png_of_its_own(server):
    data = png(40, 56)
    default, real = (pixels(post(server, data, model=m, steps=4, seed=3)) for m in ("default", "real"))
    assert default.shape == real.shape == (80, 112, 3)
    assert np.abs(default - real).max() > 1  # two networks: which one ran shows in the pixels
    assert post(server, data, steps=4, seed=3).content == post(server, data, model="default", steps=4, seed=3).content


@pytest.mark.parametrize("value", ["fancy", "DEFAULT", "x" * 65])
def test_an_unknown_model_is_400_json_naming_the_choices(server, value):
    r = post(server, png(16, 16), model=value)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert ("choose from default, real" in err) if len(value) <= 64 else "64" in str(r.json())
    assert httpx.get(server.url + "/livez").status_code == 200


def test_info_lists_every_served_model_and_the_default(server):
    from export.record import network_facts

    info = httpx.get(server.url + "/info", timeout=30).json()
    assert info["default_model"] == "default" and list(info["models"]) == ["default", "real"]
    default, real = info["models"]["default"], info["models"]["real"]
    assert default["tag"].startswith("srnas-default:") and real["tag"].startswith(f"{TEST_TAG}:")
    facts = network_facts(SECOND)
    assert (real["params"], real["flops_per_step"]) == (facts["params"], facts["flops_per_step"])
    assert real["params"] != default["params"]
    for m in (default, real):
        assert m["defaults"]["steps"] >= 1 and m["defaults"]["sampler"] in ("ddim", "ddpm")
        assert m["prediction_source"]["kind"] in ("table", "calibrated", "none")
        if m["prediction_source"]["kind"] == "calibrated":
            assert m["predicted_step_seconds"]
    both = default["prediction_source"], real["prediction_source"]
    if all(s["kind"] == "calibrated" for s in both) and both[0]["table"] == both[1]["table"]:
        assert real["prediction_source"]["calibration_cached"] is True  # the same kit: one fit, timed once
        assert real["prediction_source"]["fit"] == default["prediction_source"]["fit"]
    assert {k: info[k] for k in ("params", "tag", "defaults")} == {k: default[k] for k in ("params", "tag", "defaults")}
    assert set(info["limits"]["admission"]["idle_step_s_by_model"]) == {"default", "real"}


def merged_batches(server) -> float:
    """Adaptive batches that merged more than one tile job, from BentoML's own histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=30).text
    count: dict[str, float] = {}
    for s in (s for f in text_string_to_metric_families(text) for s in f.samples):
        if s.name == "bentoml_service_adaptive_batch_size_bucket":
            count[s.labels["le"]] = count.get(s.labels["le"], 0.0) + s.value
    return count.get("+Inf", 0.0) - count.get("1.0", 0.0)


def test_concurrent_requests_of_both_models_batch_apart(server):
    """Requests of both models at once share adaptive batches; inside one, each model's tiles run in their own
    sampling loop: every answer equals the same request made alone (runtime batch-size rounding at most)."""
    jobs = [(png(64, 64, 8 * i), {"model": ("default", "real")[i % 2], "steps": 12, "seed": i}) for i in range(12)]
    before = merged_batches(server)
    for _ in range(4):  # a burst can reach a busy host spread out, each request alone in its worker: try again
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda j: post(server, j[0], **j[1]), jobs))
        if merged_batches(server) > before:
            break
    assert merged_batches(server) > before  # tiles of concurrent requests did share adaptive batches
    for (data, fields), r in zip(jobs[:4], together[:4]):
        alone = pixels(post(server, data, **fields))
        other = pixels(post(server, data, **{**fields, "model": "real" if fields["model"] == "default" else "default"}))
        assert np.abs(pixels(r) - alone).max() <= 1
        assert np.abs(other - alone).max() > 1  # so a tile sampled by the other model would have shown
    assert all(r.status_code == 200 for r in together)


def test_metrics_say_which_model_ran(server):
    def tile_steps(model: str) -> float:
        text = httpx.get(server.url + "/metrics", timeout=30).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(f'sr_tile_steps_total{{model="{model}"}}'))

    before = tile_steps("real")
    pixels(post(server, png(16, 16), model="real", steps=3))
    assert tile_steps("real") == before + 3  # one tile, three steps
    text = httpx.get(server.url + "/metrics", timeout=30).text
    info = [line for line in text.splitlines() if line.startswith("sr_model_info{")]
    assert any('model="srnas-default"' in line for line in info) and any(f'model="{TEST_TAG}"' in line
                                                                         for line in info)


def test_a_model_missing_from_the_store_stops_the_start_saying_which(home, tmp_path):
    srv = start({"BENTOML_HOME": str(home), "SRNAS_MODELS": "default=srnas-default,real=srnas-not-imported"},
                log=tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 120
        while srv.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert srv.proc.returncode not in (None, 0)
    finally:
        stop(srv)
    log = srv.log_text()
    assert "real (srnas-not-imported)" in log and "srnas store-import" in log and "Traceback" not in log, log
