"""Does the served per-step prediction hold? observed / predicted step latency under 1, 2 and 4 clients.

    python -m bench.prediction [--prediction calibrated] [--clients 1,2,4] [--requests 24] [--out FILE]

One real `bentoml serve` (its settings from the environment as usual, plus SRNAS_PREDICTION), then each load
level on its own: `clients` clients send `requests` 64x64 images at 4 steps each, and the ratio per batch size
comes from the differences of the server's own metrics over that level: the steps' time
(sr_denoise_step_seconds) over their prediction at the load each ran under (sr_expected_step_seconds), beside
the idle prediction (sr_predicted_step_seconds). The step-weighted ratio over all batch sizes is the headline.
Each run appends one JSON row (with the host and /info's prediction_source) to --out
(default bench/results/prediction-<host>.json).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.requests import png
from export.runtime import host_id, host_slug
from loadtest.server import serve

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4  # per request: many network calls per image, so that the steps dominate what is measured


def step_totals(url: str) -> tuple[dict[str, list[float]], dict[str, float]]:
    """({batch_size: [sum, count, CPU seconds, predicted at load]} of the step metrics, {batch_size: predicted
    idle seconds})."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    predicted = {}
    for metric in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for s in metric.samples:
            b = s.labels.get("batch_size")
            if s.name == "sr_denoise_step_seconds_sum":
                sums[b][0] += s.value
            elif s.name == "sr_denoise_step_seconds_count":
                sums[b][1] += s.value
            elif s.name == "sr_denoise_step_cpu_seconds_total":
                sums[b][2] += s.value
            elif s.name == "sr_expected_step_seconds_total":
                sums[b][3] += s.value
            elif s.name == "sr_predicted_step_seconds":
                predicted[b] = max(predicted.get(b, 0.0), s.value)
    return dict(sums), predicted


def _post(client: httpx.Client, url: str, data: bytes) -> None:
    r = client.post(url + "/upscale", files={"image": ("x.png", data, "image/png")}, data={"steps": str(STEPS)},
                    timeout=300)
    if r.status_code != 200:
        raise RuntimeError(f"POST /upscale -> {r.status_code}: {r.text[:200]}")


def level(url: str, clients: int, requests: int) -> dict[str, Any]:
    before, _ = step_totals(url)
    images = [png(64, 1000 * clients + i) for i in range(requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool, httpx.Client(limits=httpx.Limits(max_connections=clients)) as client:
        list(pool.map(lambda d: _post(client, url, d), images))
    wall = time.perf_counter() - t0
    after, predicted = step_totals(url)
    rows, spent, cpu, idle, at_load = {}, 0.0, 0.0, 0.0, 0.0
    for b, now in after.items():
        ds, dn, dc, de = (x - y for x, y in zip(now, before.get(b, [0.0, 0.0, 0.0, 0.0])))
        if dn < 1 or b not in predicted:
            continue
        rows[b] = {"steps": int(dn), "observed_s": ds / dn, "cpu_s": dc / dn, "predicted_s": predicted[b],
                   "predicted_at_load_s": de / dn, "observed_over_predicted": ds / de if de else None,
                   "observed_over_idle_prediction": ds / dn / predicted[b]}
        spent, cpu, idle, at_load = spent + ds, cpu + dc, idle + dn * predicted[b], at_load + de
    return {"clients": clients, "requests": requests, "wall_s": wall, "by_batch": rows,
            "observed_over_predicted": spent / at_load if at_load else None,  # held to the prediction at its load
            "observed_over_idle_prediction": spent / idle if idle else None,
            "load_factor": at_load / idle if idle else None, "wall_over_cpu": spent / cpu if cpu else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prediction", default="calibrated", choices=["auto", "table", "calibrated"])
    p.add_argument("--clients", default="1,2,4")
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--out")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",") if c]
    if not levels or min(levels) < 1 or args.requests < 1:
        p.error("--clients takes positive integers and --requests must be >= 1")
    with serve(Path(tempfile.mkdtemp(prefix="bench-prediction-")), {"SRNAS_PREDICTION": args.prediction}) as server:
        info = httpx.get(server.url + "/info", timeout=30).json()
        rows = [level(server.url, c, args.requests) for c in levels]
    row = {"host": host_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "prediction": args.prediction, "prediction_source": info["prediction_source"],
           "workers": info["limits"].get("workers"), "threads": info["limits"].get("threads"), "levels": rows}
    out = Path(args.out or ROOT / "bench" / "results" / f"prediction-{host_slug()}.json")
    history = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(history + [row], indent=2) + "\n", encoding="utf-8")
    for r in rows:
        ratio = r["observed_over_predicted"]
        print(f"{r['clients']} clients: observed/predicted at load {ratio:.2f} (idle prediction "
              f"{r['observed_over_idle_prediction']:.2f}, load factor {r['load_factor']:.2f}, wall/CPU "
              f"{r['wall_over_cpu']:.2f}); " + ", ".join(
            f"batch {b}: {v['observed_over_predicted'] or 0:.2f} ({v['steps']} steps)" for b, v in sorted(
                r["by_batch"].items(), key=lambda kv: int(kv[0]))))
    print(f"prediction: {info['prediction_source'].get('kind')} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
