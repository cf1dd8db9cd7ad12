"""A real Prometheus on loopback, with the project's recording rules, scraping the real service under a
Locust load; then the recorded observed/predicted step-latency ratio, read through the HTTP API, gives a
one-line verdict on how the search's latency estimate held up.

    python -m loadtest.observe [--shape observe] [--out runs/observe]"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import yaml

from loadtest import config, promrules
from loadtest.run import aggregated, locust
from loadtest.server import ROOT, free_port, serve

RATIO = "sr:step_latency_ratio:observed_over_predicted"  # per backend and batch size
OVERALL = "sr:step_time_ratio:observed_over_predicted"  # per backend, weighted by steps
BAND = (0.8, 1.25)  # the alert's band in the rules


def prometheus_config(target: str, rule_file: Path, scrape_s: int = 2) -> dict:
    return {"global": {"scrape_interval": f"{scrape_s}s", "evaluation_interval": f"{scrape_s}s"},
            "rule_files": [str(Path(rule_file).resolve())],  # a relative one is read from the config's folder
            "scrape_configs": [{"job_name": "srnas", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}]}]}


@contextmanager
def prometheus(out: Path, target: str, ready_timeout_s: float = 60):
    """Debian's prometheus on a free loopback port; yields its base URL."""
    rule_file = promrules.write_rule_files(out / "rules")
    cfg = out / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(prometheus_config(target, rule_file)))
    port = free_port()
    with (out / "prometheus.log").open("w") as log:
        proc = subprocess.Popen([_prometheus_bin(), f"--config.file={cfg}", f"--storage.tsdb.path={out / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/-/ready", proc, ready_timeout_s)
        if not rule_groups(url):  # a rule_files glob that matches nothing is no error to Prometheus
            raise RuntimeError(f"prometheus loaded no rules from {rule_file}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _prometheus_bin() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        raise FileNotFoundError("prometheus not found: apt-get install -y prometheus (Debian)")
    return exe


def _wait(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prometheus not ready at {url}")


def rule_groups(base: str) -> list[str]:
    with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as r:
        return [g["name"] for g in json.load(r)["data"]["groups"]]


def query(base: str, promql: str) -> list[dict]:
    """Instant query; [{labels..., "value": float}]."""
    with urllib.request.urlopen(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {body}")
    return [{**s["metric"], "value": float(s["value"][1])} for s in body["data"]["result"]]


def verdict(overall: list[dict], per_batch: list[dict]) -> tuple[bool, str]:
    """One line on how the search-time latency estimate held up under load: the step-weighted ratio
    per backend, with the range over batch sizes."""
    overall = [r for r in overall if math.isfinite(r["value"])]
    if not overall:
        return False, ("no observed/predicted ratio was recorded: the served model's deploy.json has no "
                       "predicted step latencies (sr_predicted_step_seconds), or no step ran")
    parts = []
    for r in sorted(overall, key=lambda r: r.get("backend", "")):
        batches = [b["value"] for b in per_batch if b.get("backend") == r.get("backend") and math.isfinite(b["value"])]
        spread = f" (batch sizes {min(batches):.2f}-{max(batches):.2f})" if batches else ""
        parts.append(f"{r.get('backend', '?')} {r['value']:.2f}x{spread}")
    held = all(BAND[0] <= r["value"] <= BAND[1] for r in overall)
    word = "held up" if held else "missed"
    return held, (f"search latency estimate {word}: denoising steps took {', '.join(parts)} the predicted time "
                  f"(alert band {BAND[0]}-{BAND[1]})")


def observe(shape: str, out: Path, cfg_path: Path = config.DEFAULT_CONFIG, model_dir: Path | None = None) -> dict:
    cfg = config.load(cfg_path, shape)
    out.mkdir(parents=True, exist_ok=True)
    with serve(out, model_dir=model_dir) as server, prometheus(out, server.url.removeprefix("http://")) as prom:
        result = locust(server.url, cfg_path, cfg.shape, out, cfg.selected.duration_s + 180)
        time.sleep(6)  # one more scrape and rule evaluation after the last request
        ratios, overall = query(prom, RATIO), query(prom, OVERALL)
        recorded = {name: query(prom, name) for name in
                    ("sr:request_duration_seconds:p95_5m", "sr:requests:rate5m", "sr:denoise_step_seconds:mean5m",
                     "sr:predicted_step_seconds", "sr:adaptive_batch_size:mean5m")}
    held, line = verdict(overall, ratios)
    summary = {"shape": cfg.shape, "locust_exit_code": result.returncode, **aggregated(out / "locust"),
               "overall": overall, "ratios": ratios, "recorded": recorded, "held": held, "verdict": line}
    (out / "observe.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.observe", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=config.DEFAULT_CONFIG)
    p.add_argument("--shape", default="observe")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "observe")
    p.add_argument("--model", type=Path, help="model folder to serve (default: the shipped model); its "
                   "deploy.json must record predicted step latencies for a ratio")
    args = p.parse_args(argv)
    try:
        summary = observe(args.shape, args.out, args.config, args.model)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary["verdict"])
    return 0 if summary["locust_exit_code"] == 0 and summary["overall"] else 1


if __name__ == "__main__":
    sys.exit(main())
