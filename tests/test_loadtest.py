"""The Locust load test: configuration errors, load shapes, the SLO gate, the locustfile run by real
Locust (against a loopback stand-in and, marked slow, against the real `bentoml serve`)."""
import io
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

# Importing locust would gevent-patch this whole pytest process (threads, sockets, subprocess) for every
# later test; the load itself runs in a Locust subprocess, which patches as usual.
os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
from locust.env import Environment  # noqa: E402
from PIL import Image  # noqa: E402

from loadtest import config, images, shapes, slo  # noqa: E402
from loadtest.run import aggregated, locust, rss_growth, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, **overrides) -> Path:
    """The shipped config with top-level sections replaced (shallowly merged)."""
    data = yaml.safe_load(config.DEFAULT_CONFIG.read_text())
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "load.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_has_ramp_soak_spike():
    cfg = config.load()
    assert {"ramp", "soak", "spike"} <= set(cfg.shapes)
    soak = cfg.shapes["soak"]
    assert (soak.users, soak.duration_s) == (16, 600)
    assert cfg.slo.max_fail_ratio == 0 and cfg.slo.max_rss_growth == 0.05
    assert cfg.shapes["smoke"].duration_s <= 60


@pytest.mark.parametrize("overrides, message", [
    ({"slo": {"max_p95": 10}}, r"slo: unknown key\(s\) \['max_p95'\]"),
    ({"slo": {"max_fail_ratio": 2}}, r"max_fail_ratio must lie in \[0, 1\]"),
    ({"shape": "burst"}, r"shape 'burst' is not one of"),
    ({"shapes": {"soak": {"kind": "burst", "users": 1, "duration_s": 1}}}, r"kind must be ramp, soak or spike"),
    ({"shapes": {"soak": {"kind": "soak", "users": 0, "duration_s": 1}}}, r"shapes.soak.users must be a positive"),
    ({"shapes": {"spike": {"kind": "spike", "users": 9, "duration_s": 60, "spike_at_s": 50, "spike_s": 20}}},
     r"must lie within duration_s=60"),
    ({"mix": {"steps": {}}}, r"mix.steps must be a non-empty mapping"),
    ({"mix": {"wait_s": [2, 1]}}, r"wait_s must be \[min, max\]"),
    ({"mix": {"pacing_s": 0}}, r"mix.pacing_s must be a positive number"),
    ({"shapes": {"soak": {"kind": "soak", "users": 1, "duration_s": 9, "max_rss_growth": -1}}}, r"max_rss_growth"),
    ({"mix": {"images": [{"source": "sample:astronaut-lr.png", "crop": [0, 0, 4, 4]}]}}, r"crop must be"),
])
def test_bad_config_is_reported_with_file_and_key(tmp_path, overrides, message):
    path = write_config(tmp_path, **overrides)
    with pytest.raises(config.ConfigError, match=message) as err:
        config.load(path)
    assert str(path) in str(err.value)


def test_unreadable_config(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read load-test config"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("shape: [\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")


def users_over_time(spec: config.Shape, times: list[float]) -> list:
    shape = shapes.shape_class(spec)()
    out = []
    for t in times:
        shape.start_time = time.perf_counter() - t  # run time t, measured by Locust's own clock
        tick = shape.tick()
        out.append(None if tick is None else tick[0])
    return out


def test_shapes_follow_their_configuration():
    ramp = config.Shape(kind="ramp", users=4, duration_s=100, start_users=1, step_s=10)
    assert users_over_time(ramp, [0, 9.9, 10, 25, 60, 99, 100]) == [1, 1, 2, 3, 4, 4, None]
    spike = config.Shape(kind="spike", users=16, base_users=2, duration_s=90, spike_at_s=30, spike_s=30)
    assert users_over_time(spike, [0, 29, 30, 59, 60, 89, 91]) == [2, 2, 16, 16, 2, 2, None]
    soak = config.Shape(kind="soak", users=16, duration_s=600)
    assert users_over_time(soak, [0, 300, 599, 600]) == [16, 16, 16, None]


def test_locustfile_exposes_the_selected_shape_only(monkeypatch):
    from locust.util.load_locustfile import load_locustfile
    monkeypatch.setenv(config.SHAPE_ENV, "spike")
    users, found = load_locustfile(str(ROOT / "loadtest" / "locustfile.py"))
    assert list(users) == ["Upscaler"]
    assert len(found) == 1 and isinstance(found[0], shapes.SpikeShape)
    assert found[0].spec.kind == "spike" and found[0].spec.users == 16


def stats_env(times_ms: list[float], failures: int) -> Environment:
    env = Environment()
    for ms in times_ms:
        env.stats.log_request("POST", "/upscale", ms, 1000)
    for _ in range(failures):
        env.stats.log_error("POST", "/upscale", "HTTP 503")
    return env


def test_slo_gate_sets_the_exit_code_on_breach():
    bounds = config.SLO(max_fail_ratio=0.0, max_p95_ms=1000, min_requests=10)
    ok = stats_env([100] * 20, failures=0)
    assert slo.gate(ok, bounds) == [] and ok.process_exit_code is None
    slow = stats_env([100] * 10 + [5000] * 10, failures=0)
    assert slo.gate(slow, bounds) == ["p95 5000 ms > 1000 ms"] and slow.process_exit_code == 1
    failing = stats_env([100] * 20, failures=1)
    assert re.match(r"fail ratio 0\.0500 > 0\.0", slo.gate(failing, bounds)[0])
    assert failing.process_exit_code == 1
    idle = stats_env([100] * 3, failures=0)
    assert slo.gate(idle, bounds) == ["only 3 requests (< 10)"]


def test_payloads_are_real_pngs_of_the_configured_size():
    cfg = config.load()
    for spec in cfg.mix.images:
        p = images.payload(spec)
        assert images.png_size(p.png) == (p.width, p.height)
        if spec.crop:
            assert (p.width, p.height) == tuple(spec.crop[2:])
    assert images.png_size(b"GIF89a" + bytes(30)) is None
    with pytest.raises(config.ConfigError, match="exceeds"):
        images.payload(config.ImageSpec("skimage:coffee", crop=[590, 0, 64, 64]))
    with pytest.raises(config.ConfigError, match="skimage.data has no"):
        images.payload(config.ImageSpec("skimage:no_such_photo"))


def test_rss_growth_compares_window_medians_after_warm_up():
    mb = 2**20
    # warm-up to 200 MB, then a +-10 MB swing around a plateau: a point-to-point growth would read +10 %
    swing = [(20 + 2 * i, (200 + (10 if i % 2 else -10)) * mb) for i in range(40)]
    samples = [(0, 100 * mb), (10, 180 * mb)] + swing[:-1] + [(98, 210 * mb)]
    g = rss_growth(samples, baseline_s=20, window_s=20)
    assert g["baseline_mb"] == 200 and g["end_mb"] == 200 and g["peak_mb"] == 210 and g["start_mb"] == 100
    assert g["growth"] == pytest.approx(0.0) and abs(g["slope_mb_per_min"]) < 2
    leak = [(t, r + int(t * mb)) for t, r in samples]  # +1 MB/s after warm-up shows in both measures
    g = rss_growth(leak, baseline_s=20, window_s=20)
    assert g["growth"] == pytest.approx((289 - 229) / 229, rel=0.02) and g["slope_mb_per_min"] == pytest.approx(60, rel=0.1)


class StandIn(BaseHTTPRequestHandler):
    """A loopback stand-in for the service: answers POST /upscale with a blank PNG twice the size of
    the uploaded one, or with `status` when that is not 200."""
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        start = body.find(images.PNG_SIGNATURE)
        size = images.png_size(body[start:]) if start >= 0 else None
        if self.status != 200 or size is None:
            self.send_response(self.status if self.status != 200 else 400)
            self.end_headers()
            return
        buf = io.BytesIO()
        Image.new("RGB", (2 * size[0], 2 * size[1])).save(buf, format="PNG")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(buf.getvalue())))
        self.end_headers()
        self.wfile.write(buf.getvalue())

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    def start(status: int) -> str:
        handler = type("Handler", (StandIn,), {"status": status})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    servers = []
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("status, exit_code", [(200, 0), (503, 1)])
def test_locust_run_passes_or_fails_the_slo_gate(tmp_path, stand_in, status, exit_code):
    """Real Locust, headless, with the shipped locustfile: the gate decides the exit code."""
    cfg = write_config(tmp_path, shapes={"smoke": {"kind": "soak", "users": 2, "spawn_rate": 2, "duration_s": 4}},
                       slo={"min_requests": 5})
    result = locust(stand_in(status), cfg, "smoke", tmp_path, timeout_s=60)
    stats = aggregated(tmp_path / "locust")
    log = (tmp_path / "locust.log").read_text()
    assert result.returncode == exit_code, log[-2000:]
    assert stats["requests"] >= 5 and (tmp_path / "report.html").stat().st_size > 0
    if status == 200:
        assert stats["failures"] == 0 and "SLO met" in log
    else:
        assert stats["failures"] == stats["requests"] and "SLO breached: fail ratio 1.0000" in log


def test_paced_users_write_one_record_per_request(tmp_path, stand_in):
    """With mix.pacing_s each user sends one request per period (Locust's constant_pacing), and
    SRNAS_LOAD_RECORDS gets one JSON line per request with its status and the service's error."""
    cfg = write_config(tmp_path, shapes={"smoke": {"kind": "soak", "users": 2, "spawn_rate": 2, "duration_s": 4}},
                       mix={"pacing_s": 1.0}, slo={"min_requests": 1})
    records = tmp_path / "requests.jsonl"
    locust(stand_in(503), cfg, "smoke", tmp_path, timeout_s=60, extra_env={config.RECORDS_ENV: str(records)})
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    stats = aggregated(tmp_path / "locust")
    # the CSV is written as the run stops; a user's last answer may come in after it
    assert stats["requests"] <= len(rows) <= stats["requests"] + 2
    # 2 users x one request per second for 4 s, not as fast as the stand-in answers
    assert 4 <= len(rows) <= 12, rows
    assert {r["status"] for r in rows} == {503} and all(0 <= r["seconds"] < 1 for r in rows)


@pytest.mark.slow
def test_smoke_load_against_the_real_service(tmp_path):
    """45 s of 4 users on `bentoml serve` with the default model: no failures, RSS recorded and bounded."""
    summary = run(config.DEFAULT_CONFIG, "smoke", tmp_path)
    print(json.dumps(summary))
    assert summary["failures"] == 0 and summary["requests"] >= 20
    bound = config.load(shape="smoke").max_rss_growth
    assert summary["rss"]["baseline_mb"] > 0 and summary["rss"]["growth"] <= bound, summary["rss"]
    assert summary["exit_code"] == 0
    assert (tmp_path / "report.html").is_file() and (tmp_path / "locust_stats.csv").is_file()
    assert len((tmp_path / "rss.csv").read_text().splitlines()) > 10  # a sample every 2 s


def test_importing_the_load_test_leaves_this_process_unpatched():
    """Other tests (threads, DDP, subprocesses) share this process: locust must not gevent-patch it."""
    from gevent import monkey
    assert not monkey.is_module_patched("socket") and not monkey.is_module_patched("threading")
