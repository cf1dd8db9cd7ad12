"""End-to-end POST /upscale against a real `bentoml serve`: request latency at the default setting, the
server's overhead beyond the network, and throughput with many clients against one.

    python -m bench.requests [--model DIR] [--requests 40] [--clients 16] [--out bench/results/requests.json]

The server takes its settings from the environment as usual (e.g. SRNAS_WORKERS=2 SRNAS_THREADS=1).

Overhead = median request latency (one client, sequential) - steps x mean observed step latency at
batch 1 (from the server's own sr_denoise_step_seconds histogram over the same requests). The server-side
overhead does the same with BentoML's own request-duration histogram (mean), which leaves out the client
and the socket.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from loadtest.server import serve


def png(side: int, seed: int) -> bytes:
    from search.data import builtin_pairs
    from models.imaging import to_uint8

    lr = to_uint8(builtin_pairs("val")[seed % 2].lr)
    y, x = (np.random.default_rng(seed).integers(0, s - side) for s in lr.shape[:2])
    buf = io.BytesIO()
    Image.fromarray(lr[y: y + side, x: x + side]).save(buf, format="PNG")
    return buf.getvalue()


HISTOGRAMS = {"step": ("sr_denoise_step_seconds", {"batch_size": "1"}),  # network calls at batch 1
              "request": ("bentoml_service_request_duration_seconds",
                          {"endpoint": "/upscale", "http_response_code": "200"})}


def totals(url: str) -> dict[str, dict[str, float]]:
    """(sum, count) of each histogram in HISTOGRAMS, over the label sets that match (summed over backends)."""
    out = {k: {"sum": 0.0, "count": 0.0} for k in HISTOGRAMS}
    wanted = {name: (k, labels) for k, (name, labels) in HISTOGRAMS.items()}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        if family.name not in wanted:
            continue
        k, labels = wanted[family.name]
        for s in family.samples:
            key = s.name.removeprefix(family.name + "_")  # _sum, _count (buckets are left out)
            if key in out[k] and labels.items() <= s.labels.items():
                out[k][key] += s.value
    return out


def mean_between(before: dict, after: dict, k: str) -> float:
    return (after[k]["sum"] - before[k]["sum"]) / max(after[k]["count"] - before[k]["count"], 1)


def timed_post(client: httpx.Client, url: str, data: bytes) -> float:
    t0 = time.perf_counter()
    r = client.post(url + "/upscale", files={"image": ("x.png", data, "image/png")}, timeout=300)
    if r.status_code != 200:
        raise RuntimeError(f"POST /upscale -> {r.status_code}: {r.text[:200]}")
    return time.perf_counter() - t0


def measure(url: str, requests: int, clients: int, side: int = 64) -> dict:
    images = [png(side, i) for i in range(requests)]
    with httpx.Client() as client:
        for data in images[:3]:  # warm the connection and the service
            timed_post(client, url, data)
        before = totals(url)
        single = [timed_post(client, url, data) for data in images]
        after = totals(url)
        info = client.get(url + "/info", timeout=30).json()
    steps = int(info["defaults"]["steps"])
    step_s, server_s = mean_between(before, after, "step"), mean_between(before, after, "request")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool, httpx.Client(limits=httpx.Limits(max_connections=clients)) as client:
        many = list(pool.map(lambda d: timed_post(client, url, d), images * 3))
    wall = time.perf_counter() - t0
    one_client_rate = len(single) / sum(single)
    return {"model": info["path"], "backend": info["backend"]["label"], "defaults": info["defaults"],
            "workers": info["limits"]["workers"], "threads": info["limits"]["threads"],
            "tile_batching": info["limits"]["tile_batching"],
            "input": f"{side}x{side}", "requests": requests,
            "single": {"p50_s": statistics.median(single), "p95_s": float(np.percentile(single, 95)),
                       "images_per_s": one_client_rate},
            "mean_step_s_batch1": step_s, "steps": steps,
            "predicted_step_s_batch1": info["predicted_step_seconds"].get("1"),
            "overhead_s": statistics.median(single) - steps * step_s,
            # the same, timed inside the server (BentoML's request histogram): without the client and the socket
            "server_mean_s": server_s, "server_overhead_s": server_s - steps * step_s,
            "concurrent": {"clients": clients, "p50_s": statistics.median(many),
                           "p95_s": float(np.percentile(many, 95)), "images_per_s": len(many) / wall,
                           "ratio_to_one_client": len(many) / wall / one_client_rate}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.requests", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--out", default="bench/results/requests.json")
    args = p.parse_args(argv)
    if args.requests < 1 or args.clients < 1:
        p.error("--requests and --clients must be >= 1")
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), model_dir=args.model) as server:
        report = measure(server.url, args.requests, args.clients)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
