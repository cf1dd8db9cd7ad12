"""Run a Locust load test headless against the service and write CSV, HTML and a JSON summary.

    python -m loadtest.run [--shape soak] [--config loadtest/config.yaml] [--out runs/load] [--host URL]

Without --host it starts `bentoml serve` on loopback and samples the server's RSS during the run.
Exit code: Locust's (1 on an SLO breach), or 1 when RSS grew past slo.max_rss_growth."""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from loadtest import config
from loadtest.server import ROOT, rss_bytes, serve

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class RssSampler(threading.Thread):
    """Samples the server's RSS every period_s seconds: [(seconds since start, bytes)]."""

    def __init__(self, server, period_s: float = 2.0):
        super().__init__(daemon=True)
        self.server, self.period_s, self.samples = server, period_s, []
        self._halt = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self._halt.is_set():
            self.samples.append((time.monotonic() - t0, rss_bytes(self.server.proc.pid)))
            self._halt.wait(self.period_s)

    def stop(self) -> list[tuple[float, int]]:
        self._halt.set()
        self.join()
        return self.samples


def rss_growth(samples: list[tuple[float, int]], baseline_s: float, window_s: float) -> dict:
    """Growth from the median RSS of the window after warm-up (from baseline_s) to that of the last window.

    Under load a single sample swings by several percent with the tiles and batches in flight, so the
    growth between two samples mostly says where in that swing each fell; window medians do not. The
    least-squares slope after warm-up is reported beside them (MB/min), to tell a plateau from a leak."""
    if not samples:
        return {}
    mb = [(t, r / 2**20) for t, r in samples]
    after = [(t, r) for t, r in mb if t >= baseline_s] or mb[-1:]
    t0, t_end = after[0][0], after[-1][0]
    base = statistics.median(r for t, r in after if t < t0 + window_s)
    end = statistics.median(r for t, r in after if t > t_end - window_s)
    slope = statistics.linear_regression(*zip(*after)).slope * 60 if len(after) > 2 else 0.0
    return {"baseline_mb": base, "end_mb": end, "peak_mb": max(r for _, r in mb), "start_mb": mb[0][1],
            "baseline_at_s": t0, "window_s": window_s, "growth": end / base - 1, "slope_mb_per_min": slope}


def aggregated(csv_prefix: Path) -> dict:
    """The Aggregated row of Locust's <prefix>_stats.csv."""
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "p50_ms": float(row["50%"]), "p95_ms": float(row["95%"]), "rps": float(row["Requests/s"])}


def locust(host: str, cfg_path: Path, shape: str, out: Path, timeout_s: float,
           extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(extra_env or {}), config.CONFIG_ENV: str(cfg_path), config.SHAPE_ENV: shape,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)  # set by the test process for itself; Locust needs gevent
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
           "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--only-summary"]
    with (out / "locust.log").open("w") as log:
        return subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)


def run(cfg_path: Path, shape: str | None, out: Path, host: str | None = None, server_env: dict | None = None):
    cfg = config.load(cfg_path, shape)
    out.mkdir(parents=True, exist_ok=True)
    started = serve(out, server_env) if host is None else nullcontext()
    with started as server:
        sampler = RssSampler(server) if server else None
        if sampler:
            sampler.start()
        result = locust(host or server.url, cfg_path, cfg.shape, out, cfg.selected.duration_s + 180)
        samples = sampler.stop() if sampler else []
    summary = {"shape": cfg.shape, "locust_exit_code": result.returncode, **aggregated(out / "locust"),
               "rss": rss_growth(samples, cfg.selected.baseline_s, cfg.selected.window_s)}
    rss_ok = not samples or summary["rss"]["growth"] <= cfg.max_rss_growth
    summary["exit_code"] = result.returncode or (0 if rss_ok else 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "rss.csv").write_text("seconds,rss_mb\n" + "".join(f"{t:.1f},{r / 2**20:.1f}\n" for t, r in samples))
    return summary


def describe(s: dict) -> str:
    rss = f", server RSS {s['rss']['baseline_mb']:.0f} -> {s['rss']['end_mb']:.0f} MB " \
          f"({100 * s['rss']['growth']:+.1f} %, median of {s['rss']['window_s']:.0f} s windows; " \
          f"slope {s['rss']['slope_mb_per_min']:+.1f} MB/min)" if s["rss"] else ""
    return (f"{s['shape']}: {s['requests']} requests, {s['failures']} failed, p50 {s['p50_ms']:.0f} ms, "
            f"p95 {s['p95_ms']:.0f} ms, {s['rps']:.2f} req/s{rss}; exit {s['exit_code']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=config.DEFAULT_CONFIG)
    p.add_argument("--shape", help="shape name from the config (default: its 'shape')")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "load")
    p.add_argument("--host", help="test a running server instead of starting one (no RSS then)")
    args = p.parse_args(argv)
    try:
        summary = run(args.config, args.shape, args.out, args.host)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(summary))
    print(f"reports: {args.out}/report.html, {args.out}/locust_stats.csv, {args.out}/summary.json")
    return summary["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
