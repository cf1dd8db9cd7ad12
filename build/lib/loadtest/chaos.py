"""`make chaos`: the abuse and fault scenarios of tests/test_serving_abuse.py, longer and timed, against real
`bentoml serve` processes on loopback; writes runs/chaos/chaos.json and a table into BENCHMARKS.md.

    python -m loadtest.chaos [--out runs/chaos] [--results bench/results/chaos.json] [--markdown BENCHMARKS.md]
                             [--rounds 3] [--only spike,...]

With --only, the scenarios run replace theirs in --results and the table keeps the others' earlier figures.

Scenarios: `abandoned` (20 clients give up after 1 s on 256x256 x 100 steps, then a 64x64 request),
`admitted` (the same against a 300 s deadline, so that the work is admitted and then cancelled), `burst`
(12 concurrent 256x256 x 100 steps, then 600x400 x 1 step, five times), `paths` (1,000 random unknown
paths against the size of /metrics), `mistakes` (the corpus of bad inputs: any 5xx?), `spike` (real Locust,
paced users at half the measured sustainable rate, twice it for the spike, then half again), `drain` (SIGTERM
with 5 requests in flight) and `kill` (SIGKILL of one worker under load).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import secrets
import signal
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from loadtest.config import RECORDS_ENV
from loadtest.server import prepare_store
from serving.launch import Server, start, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"
SPIKE_SIZE, SPIKE_STEPS = (96, 80), 10  # the spike's request: a small photo crop, a few steps


@dataclass
class ChaosConfig:
    rounds: int = 3  # repeats of the short scenarios (medians reported)
    flood: int = 20  # abandoning clients
    burst: int = 12
    paths: int = 1000
    spike_deadline_s: float = 2.0  # SRNAS_DEADLINE_S for the spike: the backlog a spike may leave behind
    base_s: float = 15.0  # spike: seconds at half the sustainable rate before and after
    spike_s: float = 15.0  # seconds at twice the sustainable rate
    pacing_s: float = 4.0  # spike: each Locust user sends one request per this many seconds
    only: list[str] = field(default_factory=list)


def png(w: int, h: int | None = None, seed: int = 0) -> bytes:
    img = Image.open(SAMPLE).convert("RGB").resize((w, h or w), Image.Resampling.BICUBIC)
    if seed:  # another image of the same size (no cache anywhere could serve it)
        arr = np.asarray(img).copy()
        arr[0, 0] = seed % 256
        img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def upscale(url: str, data: bytes, timeout: float = 120, **fields) -> tuple[int | str, float, httpx.Response | None]:
    """(status or 'gave up' / 'dropped', seconds, response)."""
    t0 = time.perf_counter()
    try:
        r = httpx.post(url + "/upscale", files={"image": ("a.png", data)}, timeout=timeout,
                       data={k: str(v) for k, v in fields.items()})
        return r.status_code, time.perf_counter() - t0, r
    except httpx.TimeoutException:
        return "gave up", time.perf_counter() - t0, None
    except httpx.TransportError:
        return "dropped", time.perf_counter() - t0, None


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def wait_for(cond: Callable[[], bool], timeout: float, poll: float = 0.05) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(poll)
    return None


class Servers:
    """Fresh servers from one model store."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.home = os.environ.get("BENTOML_HOME") or tempfile.mkdtemp(prefix="bentoml-chaos-")
        self.env = {"BENTOML_HOME": self.home, "BENTOML_DO_NOT_TRACK": "True"}
        prepare_store({**os.environ, **self.env})

    def start(self, name: str, **env: str) -> Server:
        srv = start({**self.env, **env}, self.out / f"{name}.log")
        wait_ready(srv, 300)
        return srv


def abandoned(url: str, cfg: ChaosConfig) -> dict[str, Any]:
    big = png(256)
    ran0, refused0, gone0 = (metric(url, n) for n in ("sr_tile_steps_total", "sr_refused_requests_total",
                                                      "sr_abandoned_requests_total"))
    with ThreadPoolExecutor(cfg.flood) as pool:
        out = list(pool.map(lambda i: upscale(url, big, 1.0, steps=100, seed=i)[0], range(cfg.flood)))
    status, seconds, _ = upscale(url, png(64), 60)
    settle = wait_for(lambda: metric(url, "sr_inflight_requests") == 0, 60)
    return {"small_status": status, "small_s": seconds, "inflight_zero_after_s": settle,
            "gave_up": out.count("gave up"), "refused": metric(url, "sr_refused_requests_total") - refused0,
            "abandoned": metric(url, "sr_abandoned_requests_total") - gone0,
            "tile_steps_run": metric(url, "sr_tile_steps_total") - ran0,
            "tile_steps_asked": cfg.flood * 25 * 100}


def admitted(servers: Servers, cfg: ChaosConfig) -> list[dict[str, Any]]:
    """The abandoned flood with a 300 s deadline, so that admission takes every request it can hold and
    what is measured is the cancellation."""
    srv = servers.start("admitted", SRNAS_DEADLINE_S="300")
    try:
        return [abandoned(srv.url, cfg) for _ in range(cfg.rounds)]
    finally:
        stop(srv)


def burst(url: str, cfg: ChaosConfig) -> dict[str, Any]:
    big = png(256)
    with ThreadPoolExecutor(cfg.burst) as pool:
        res = list(pool.map(lambda i: upscale(url, big, 300, steps=100, seed=i), range(cfg.burst)))
    refusals = [s for st, s, _ in res if st == 503]
    after = [upscale(url, png(600, 400), 60, steps=1) for _ in range(5)]
    return {"codes": sorted(str(st) for st, _, _ in res), "refusal_s_max": max(refusals, default=None),
            "refusal_s_median": statistics.median(refusals) if refusals else None,
            "after_codes": [st for st, _, _ in after], "after_s_median": statistics.median(s for _, s, _ in after)}


def paths(url: str, cfg: ChaosConfig) -> dict[str, Any]:
    before = len(httpx.get(url + "/metrics").content)
    with httpx.Client(timeout=30) as client:
        codes = {client.get(f"{url}/{secrets.token_hex(8)}").status_code for _ in range(cfg.paths)}
    return {"codes": sorted(codes), "metrics_growth_bytes": len(httpx.get(url + "/metrics").content) - before}


def raw(url: str, request: bytes) -> int:
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(request)
        return int(s.recv(65536).split()[1])


def mistakes(url: str, cfg: ChaosConfig) -> dict[str, Any]:
    """Every user mistake of the issue and the README's error table; any 5xx is a failure."""
    ok = png(16)
    grey16 = io.BytesIO()
    Image.fromarray((np.asarray(Image.open(io.BytesIO(ok)).convert("L")).astype(np.uint16) * 257)).save(grey16, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(png(48, 32))).save(jpeg, "JPEG", exif=exif.tobytes())
    files = lambda name, data: {"image": (name, data)}  # noqa: E731
    cases: dict[str, Callable[[], int]] = {
        "missing image": lambda: httpx.post(url + "/upscale", data={"steps": "1"}).status_code,
        "empty": lambda: httpx.post(url + "/upscale", files=files("a.png", b"")).status_code,
        "text": lambda: httpx.post(url + "/upscale", files=files("a.png", b"not an image" * 9)).status_code,
        "truncated": lambda: httpx.post(url + "/upscale", files=files("a.png", ok[: len(ok) // 2])).status_code,
        "filename 300 bytes": lambda: httpx.post(url + "/upscale", files=files("x" * 300 + ".png", ok)).status_code,
        "unknown field": lambda: httpx.post(url + "/upscale", files=files("a.png", ok), data={"step": "5"}).status_code,
        "image twice": lambda: httpx.post(url + "/upscale",
                                          files=[("image", ("a", ok)), ("image", ("b", ok))]).status_code,
        "steps 0": lambda: httpx.post(url + "/upscale", files=files("a.png", ok), data={"steps": "0"}).status_code,
        "steps text": lambda: httpx.post(url + "/upscale", files=files("a.png", ok), data={"steps": "x"}).status_code,
        "sampler": lambda: httpx.post(url + "/upscale", files=files("a.png", ok), data={"sampler": "e"}).status_code,
        "seed -1": lambda: httpx.post(url + "/upscale", files=files("a.png", ok), data={"seed": "-1"}).status_code,
        "too large for the deadline": lambda: httpx.post(url + "/upscale", files=files("a.png", png(512)),
                                                         data={"steps": "100"}, timeout=60).status_code,
        "16-bit grey": lambda: httpx.post(url + "/upscale", files=files("a.png", grey16.getvalue())).status_code,
        "EXIF 6 JPEG": lambda: httpx.post(url + "/upscale", files=files("a.jpg", jpeg.getvalue())).status_code,
        "404": lambda: httpx.get(url + "/nope").status_code,
        "405": lambda: httpx.get(url + "/upscale").status_code,
        "Content-Length: abc": lambda: raw(url, b"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
    }
    codes = {name: fn() for name, fn in cases.items()}
    return {"codes": codes, "server_errors": sorted(k for k, v in codes.items() if v >= 500)}


def sustainable_rate(url: str, data: bytes, steps: int, seconds: float = 10, clients: int = 8) -> float:
    done, stop_at = [], time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop_at:
            if upscale(url, data, 60, steps=steps, seed=i)[0] == 200:
                done.append(1)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    return len(done) / seconds


def spike_config(rate: float, cfg: ChaosConfig) -> dict[str, Any]:
    """A Locust configuration (loadtest/config.py's schema) for the spike: constant pacing, so that the arrival
    rate is users / pacing_s while answers come within it; half the sustainable rate, twice it, half again.
    Users are spawned over one pacing period so that their requests interleave instead of arriving together."""
    base, peak = max(1, round(0.5 * rate * cfg.pacing_s)), max(2, round(2 * rate * cfg.pacing_s))
    total = 2 * cfg.base_s + cfg.spike_s
    return {"shape": "spike",
            "shapes": {"spike": {"kind": "spike", "base_users": base, "users": peak, "duration_s": total,
                                 "spike_at_s": cfg.base_s, "spike_s": cfg.spike_s,
                                 "spawn_rate": peak / cfg.pacing_s}},
            "mix": {"steps": {SPIKE_STEPS: 1}, "samplers": {"ddim": 1}, "pacing_s": cfg.pacing_s, "timeout_s": 60,
                    "images": [{"source": "skimage:chelsea", "crop": [120, 60, *SPIKE_SIZE]}]},
            "slo": {"max_fail_ratio": 1.0, "max_p95_ms": 60000, "min_requests": 1}}


def spike(servers: Servers, cfg: ChaosConfig) -> dict[str, Any]:
    """Real Locust against a server with a short deadline: half the sustainable rate, twice it, half again."""
    from loadtest.run import locust

    srv = servers.start("spike", SRNAS_DEADLINE_S=str(cfg.spike_deadline_s))
    out = servers.out / "spike-locust"
    out.mkdir(parents=True, exist_ok=True)
    try:
        rate = sustainable_rate(srv.url, png(*SPIKE_SIZE), SPIKE_STEPS)
        spec = spike_config(rate, cfg)
        (out / "config.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        records_file = out / "requests.jsonl"
        records_file.unlink(missing_ok=True)
        done = locust(srv.url, out / "config.yaml", "spike", out, spec["shapes"]["spike"]["duration_s"] + 180,
                      extra_env={RECORDS_ENV: str(records_file)})
        if done.returncode not in (0, 1):  # 1: Locust counted failures (the refusals), as expected here
            raise RuntimeError(f"locust exited with {done.returncode}; see {out / 'locust.log'}")
        rows = [json.loads(line) for line in records_file.read_text().splitlines() if line.strip()]
    finally:
        stop(srv)
    t0 = min(r["sent"] for r in rows)
    records = [(r["sent"] - t0, r["status"], r["seconds"], r["error"]) for r in rows]
    users = spec["shapes"]["spike"]
    return {**spike_summary(records, rate, cfg), "driver": "locust", "pacing_s": cfg.pacing_s,
            "users": [users["base_users"], users["users"], users["base_users"]]}


def spike_summary(records: list[tuple[float, Any, float, str]], rate: float, cfg: ChaosConfig) -> dict[str, Any]:
    """The spike's figures from (sent at, status, seconds, error) per request, time from the first request."""
    spike_end = cfg.base_s + cfg.spike_s
    ok = [(t, s) for t, st, s, _ in records if st == 200]
    pre = statistics.median(s for t, s in ok if t < cfg.base_s)
    refused = [s for _, st, s, e in records if st == 503 and e.startswith("over capacity")]
    late = [s for _, st, s, e in records if st == 503 and e.startswith("deadline")]
    back = None
    for k in range(int(cfg.base_s)):  # 1-s windows of sending time after the spike
        window = [s for t, s in ok if spike_end + k <= t < spike_end + k + 1]
        if window and statistics.median(window) <= 1.2 * pre + 0.005:
            back = k + 1
            break
    return {"deadline_s": cfg.spike_deadline_s, "sustainable_rps": rate, "requests": len(records),
            "ok": len(ok), "refused": len(refused), "deadline_missed": len(late) + sum(
                1 for _, s in ok if s > cfg.spike_deadline_s),
            "other_5xx": sum(1 for _, st, _, e in records if isinstance(st, int) and st >= 500
                             and not e.startswith(("over capacity", "deadline"))),
            "errors": sum(1 for _, st, _, _ in records if not isinstance(st, int)),
            "refusal_s_median": statistics.median(refused) if refused else None,
            "refusal_s_p95": float(np.percentile(refused, 95)) if refused else None,
            "p50_pre_s": pre, "p50_spike_s": statistics.median(
                [s for t, s in ok if cfg.base_s <= t < spike_end] or [float("nan")]),
            "p50_back_within_s": back}


def drain(servers: Servers, cfg: ChaosConfig) -> dict[str, Any]:
    srv = servers.start("drain", SRNAS_DEADLINE_S="300")
    try:
        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(upscale, srv.url, png(128), 300, steps=100, seed=i) for i in range(5)]
            wait_for(lambda: metric(srv.url, "sr_inflight_requests") >= 5, 60)
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            new = upscale(srv.url, png(16), 10)
            inflight = [f.result()[0] for f in futures]
        code = srv.proc.wait(300)
    finally:
        stop(srv)
    return {"inflight_codes": inflight, "new_status": new[0], "new_s": new[1], "exit_code": code}


def kill(servers: Servers, cfg: ChaosConfig) -> dict[str, Any]:
    srv = servers.start("kill", SRNAS_DEADLINE_S="300", BENTOML_CONTAINERIZED="1")
    try:
        workers = [p for p in psutil.Process(srv.proc.pid).children(recursive=True)
                   if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(upscale, srv.url, png(128), 300, steps=60, seed=i) for i in range(6)]
            wait_for(lambda: metric(srv.url, "sr_inflight_requests") >= 6, 60)
            t0 = time.monotonic()
            workers[0].send_signal(signal.SIGKILL)
            not_ready = wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 503, 30)
            ready_again = wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 300, 0.25)
            codes = [f.result()[0] for f in futures]
        return {"codes": codes, "readyz_false_after_s": not_ready,
                "readyz_true_again_after_s": None if ready_again is None else time.monotonic() - t0,
                "after": upscale(srv.url, png(64), 60)[0]}
    finally:
        stop(srv)


def run(cfg: ChaosConfig, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    servers = Servers(out)
    want = lambda name: not cfg.only or name in cfg.only  # noqa: E731
    # the load average before: these figures are only comparable on an otherwise idle host
    results: dict[str, Any] = {"config": cfg.__dict__, "loadavg": {}}  # 1-min load average before each scenario
    if any(want(n) for n in ("abandoned", "burst", "paths", "mistakes")):
        srv = servers.start("main")
        try:
            for name, fn in (("abandoned", abandoned), ("burst", burst), ("paths", paths), ("mistakes", mistakes)):
                if want(name):
                    results["loadavg"][name] = os.getloadavg()[0]
                    rounds = cfg.rounds if name in ("abandoned", "burst") else 1
                    results[name] = [fn(srv.url, cfg) for _ in range(rounds)]
                    print(name, json.dumps(results[name])[:400], flush=True)
        finally:
            stop(srv)
    for name, fn in (("admitted", admitted), ("spike", spike), ("drain", drain), ("kill", kill)):
        if want(name):
            results["loadavg"][name] = os.getloadavg()[0]
            results[name] = fn(servers, cfg)
            print(name, json.dumps(results[name])[:400], flush=True)
    (out / "chaos.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def _med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def markdown(res: dict[str, Any], host: str, raw: str = "runs/chaos/chaos.json") -> str:
    rows = []
    if "abandoned" in res:
        a = res["abandoned"]
        rows.append(("20 clients abandon 256×256 × 100 steps after 1 s, then 64×64 (goal: 200 within 1 s)",
                     f"64×64: {', '.join(str(r['small_status']) for r in a)} in median {_med(a, 'small_s'):.3f} s "
                     f"(max {max(r['small_s'] for r in a):.3f}); tile-steps run {_med(a, 'tile_steps_run'):.0f} of "
                     f"{a[0]['tile_steps_asked']:,} asked; refused at admission {_med(a, 'refused'):.0f}, "
                     f"cancelled on disconnect {_med(a, 'abandoned'):.0f}"))
    if "admitted" in res:
        a = res["admitted"]
        rows.append(("the same with `SRNAS_DEADLINE_S=300` (admitted, then cancelled on disconnect)",
                     f"64×64: {', '.join(str(r['small_status']) for r in a)} in median {_med(a, 'small_s'):.3f} s "
                     f"(max {max(r['small_s'] for r in a):.3f}); tile-steps run {_med(a, 'tile_steps_run'):.0f} of "
                     f"{a[0]['tile_steps_asked']:,} asked (2,500 per request); cancelled on disconnect "
                     f"{_med(a, 'abandoned'):.0f}, "
                     f"refused {_med(a, 'refused'):.0f}; in flight back to 0 after "
                     f"{_med(a, 'inflight_zero_after_s') or float('nan'):.2f} s"))
    if "burst" in res:
        b = res["burst"]
        rows.append(("12 concurrent 256×256 × 100 steps, then 600×400 × 1 step (was 503 for minutes)",
                     f"burst codes {' / '.join(' '.join(r['codes']) for r in b)}; refusals median "
                     f"{_med(b, 'refusal_s_median') or 0:.3f} s; then 600×400: "
                     f"{sorted({c for r in b for c in r['after_codes']})} in median {_med(b, 'after_s_median'):.3f} s"))
    if "paths" in res:
        p = res["paths"][0]
        rows.append(("1,000 random unknown paths (goal: /metrics grows ≤ 1 KB)",
                     f"codes {p['codes']}, /metrics grew {p['metrics_growth_bytes']} bytes"))
    if "mistakes" in res:
        m = res["mistakes"][0]
        rows.append((f"{len(m['codes'])} user mistakes and image edge cases (goal: zero 5xx)",
                     f"5xx: {m['server_errors'] or 'none'}; " + ", ".join(f"{k} {v}" for k, v in m["codes"].items())))
    if "spike" in res:
        s = res["spike"]
        driver = "Locust, paced users" if s.get("driver") == "locust" else "open-loop threads"
        rows.append((f"spike ({driver}), 96×80 × 10 steps: {0.5 * s['sustainable_rps']:.1f} → "
                     f"{2 * s['sustainable_rps']:.1f} → {0.5 * s['sustainable_rps']:.1f} req/s "
                     f"(sustainable {s['sustainable_rps']:.1f}), `SRNAS_DEADLINE_S={s['deadline_s']:g}`",
                     f"{s['requests']} requests: {s['ok']} 200, {s['refused']} refused (503 in median "
                     f"{s['refusal_s_median'] or 0:.3f} s, p95 {s['refusal_s_p95'] or 0:.3f} s), "
                     f"{s['deadline_missed']} past the deadline, {s['other_5xx']} other 5xx, {s['errors']} "
                     f"connection errors; p50 {s['p50_pre_s']:.3f} s before, {s['p50_spike_s']:.3f} s in the "
                     f"spike, back within {s['p50_back_within_s']} s after it"))
    if "drain" in res:
        d = res["drain"]
        rows.append(("SIGTERM with 5 requests in flight",
                     f"in flight: {d['inflight_codes']}; a new request: {d['new_status']} in {d['new_s']:.3f} s; "
                     f"exit code {d['exit_code']}"))
    if "kill" in res:
        k = res["kill"]
        rows.append(("SIGKILL of one of 2 workers, 6 requests in flight",
                     f"codes {k['codes']}; /readyz false after {k['readyz_false_after_s']:.2f} s, true again "
                     f"after {k['readyz_true_again_after_s'] or float('nan'):.1f} s; next request {k['after']}"))
    verdicts = goals(res)
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    if verdicts:
        table += "\n\nGoals: " + "; ".join(f"{name}: **{v}**" for name, v in verdicts.items()) + "."
    return (f"{BEGIN}\n## Serving under abuse and faults (`make chaos`)\n\n`python -m loadtest.chaos` on {host}, "
            f"client on the same machine; 1-min load average before each scenario: "
            f"{', '.join(f'{k} {v:.1f}' for k, v in res.get('loadavg', {}).items())}; raw: `{raw}`.\n\n| scenario | measured |\n| --- | --- |\n"
            f"{table}\n{END}\n")


def goals(res: dict[str, Any]) -> dict[str, str]:
    """Each goal of the serving-under-abuse work, met or not, from the measurements."""
    out: dict[str, str] = {}
    for key in ("abandoned", "admitted"):
        if key in res:
            worst = max(r["small_s"] for r in res[key])
            ok = all(r["small_status"] == 200 for r in res[key]) and worst <= 1.0
            out[f"64×64 within 1 s after the flood ({key})"] = f"{'met' if ok else 'not met'}, max {worst:.2f} s"
    if "paths" in res:
        g = res["paths"][0]["metrics_growth_bytes"]
        out["/metrics +≤ 1 KB for 1,000 paths"] = f"{'met' if g <= 1024 else 'not met'}, {g} B"
    if "mistakes" in res:
        bad = res["mistakes"][0]["server_errors"]
        out["no 5xx for user mistakes"] = "met" if not bad else f"not met ({', '.join(bad)})"
    if "spike" in res:
        s = res["spike"]
        misses = [f"refusals p95 {s['refusal_s_p95']:.3f} s > 0.05" for _ in [0] if (s["refusal_s_p95"] or 0) > 0.05]
        misses += [f"{s['deadline_missed']} accepted past the deadline"] if s["deadline_missed"] else []
        misses += [f"{s['other_5xx']} other 5xx"] if s["other_5xx"] else []
        back = s["p50_back_within_s"]
        misses += [f"p50 back after {back} s"] if back is None or back > 5 else []
        out["spike"] = "met" if not misses else "not met (" + ", ".join(misses) + ")"
    return out


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_markdown(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "chaos")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=None, help="also keep the raw results here (JSON)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated scenarios")
    ap.add_argument("--host-name", default=None, help="how the table names this host")
    ap.add_argument("--from-json", type=Path, default=None, help="only write the table of an earlier run")
    args = ap.parse_args(argv)
    cfg = ChaosConfig(rounds=args.rounds, only=[s for s in args.only.split(",") if s])
    res = json.loads(args.from_json.read_text()) if args.from_json else run(cfg, args.out)
    raw = args.from_json or args.out / "chaos.json"
    if args.results:  # scenarios run now replace theirs; the others' earlier results stay
        earlier = json.loads(args.results.read_text()) if args.results.is_file() and cfg.only else {}
        res = {**earlier, **res, "loadavg": {**earlier.get("loadavg", {}), **res.get("loadavg", {})}}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(res, indent=1, default=str) + "\n")
        raw = args.results
    if args.markdown:
        from export.runtime import host_id

        write_markdown(args.markdown, markdown(res, args.host_name or host_id(), _relative(raw)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
