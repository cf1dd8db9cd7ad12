"""Live gauges across workers (prometheus_client's multiprocess files, as BentoML runs them): a worker killed
with SIGKILL leaves its file behind, and its values must stop counting."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, directory: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_dead_workers_ready_gauge_stops_counting(tmp_path):
    # two "workers" that set ready and exit without cleanup, as after SIGKILL
    for _ in range(2):
        run("from serving import metrics; metrics.WORKERS_READY.set(1); metrics.INFLIGHT.inc()", tmp_path)
    assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 2
    out = run("from serving import metrics; metrics.WORKERS_READY.set(1)\n"
              "print(metrics.workers_ready())\n"
              "dead = metrics.reap_dead_workers(); print(len(dead))\n"
              "from prometheus_client import CollectorRegistry, generate_latest\n"
              "from prometheus_client.multiprocess import MultiProcessCollector\n"
              "reg = CollectorRegistry(); MultiProcessCollector(reg)\n"
              "print([l for l in generate_latest(reg).decode().splitlines() if l.startswith('sr_inflight')])",
              tmp_path)
    ready, reaped, inflight = out.splitlines()
    assert ready == "1"  # only the live worker, not 3
    assert reaped == "2" and len(list(tmp_path.glob("gauge_livesum_*.db"))) == 1
    assert inflight == "['sr_inflight_requests 0.0']"  # the dead workers' in-flight requests are gone too
