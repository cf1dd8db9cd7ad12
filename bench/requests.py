"""End-to-end POST /upscale against a real `bentoml serve`: request latency at the default setting, the
server's overhead beyond the network, and throughput with many clients against one.

    python -m bench.requests [--model DIR] [--requests 40] [--clients 16] [--concurrent 640] [--repeats 3]
        [--out bench/results/requests.json]
    python -m bench.requests --versus SRNAS_SOLO_DIRECT=0 [--rounds 8] [--out bench/results/requests-versus.json]
    python -m bench.requests --versus-checkout ../old [--versus SRNAS_VAR=VALUE] [--rounds 8] [--clients 16]

The server takes its settings from the environment as usual (e.g. SRNAS_WORKERS=2 SRNAS_THREADS=1).
`--versus VAR=VALUE[,VAR=VALUE]` starts a second server with those settings beside the first and sends
one client's sequential requests to both in alternating blocks, so that the machine's drift (a noisy
2-core VM) falls on both alike: the two overheads are a paired comparison from one run. With
`--versus-checkout DIR` the second server runs another checkout's code (an older commit, say), and the
16-client throughput is compared too, in alternating rounds.

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
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from loadtest.server import serve


def png(side: int, seed: int) -> bytes:
    from search.data import builtin_pairs
    from models.imaging import to_uint8

    lr = to_uint8(builtin_pairs("test")[seed % 2].lr)  # astronaut or coffee
    y, x = (np.random.default_rng(seed).integers(0, s - side) for s in lr.shape[:2])
    buf = io.BytesIO()
    Image.fromarray(lr[y: y + side, x: x + side]).save(buf, format="PNG")
    return buf.getvalue()


HISTOGRAMS = {"step": ("sr_denoise_step_seconds", {"batch_size": "1"}),  # network calls at batch 1
              "request": ("bentoml_service_request_duration_seconds",
                          {"endpoint": "/upscale", "http_response_code": "200"}),
              "queue_wait": ("sr_queue_wait_seconds", {})}  # tile queued -> its batch starts


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


def one_client(url: str, before: dict, after: dict, latencies: list[float], steps: int) -> dict:
    """One client's figures from its sequential latencies and the server's histograms over them."""
    step_s, server_s = mean_between(before, after, "step"), mean_between(before, after, "request")
    p50 = statistics.median(latencies)
    return {"p50_s": p50, "p95_s": float(np.percentile(latencies, 95)), "images_per_s": len(latencies) / sum(latencies),
            "mean_step_s_batch1": step_s, "overhead_s": p50 - steps * step_s,
            "queue_wait_s": mean_between(before, after, "queue_wait"),
            # the same, timed inside the server (BentoML's request histogram): without the client and the socket
            "server_mean_s": server_s, "server_overhead_s": server_s - steps * step_s}


def paired(urls: list[str], rounds: int, block: int, side: int = 64) -> list[dict]:
    """Sequential requests from one client, `block` at a time to each server in turn, `rounds` times."""
    images = [png(side, i) for i in range(block)]
    latencies: list[list[float]] = [[] for _ in urls]
    with httpx.Client() as client:
        for url in urls:
            for data in images[:3]:
                timed_post(client, url, data)
        steps = [int(client.get(url + "/info", timeout=30).json()["defaults"]["steps"]) for url in urls]
        before = [totals(url) for url in urls]
        for _ in range(rounds):
            for i, url in enumerate(urls):
                latencies[i] += [timed_post(client, url, data) for data in images]
        after = [totals(url) for url in urls]
    return [one_client(url, b, a, lat, n) for url, b, a, lat, n in zip(urls, before, after, latencies, steps)]


def measure(url: str, requests: int, clients: int, side: int = 64, concurrent: int | None = None,
            repeats: int = 1) -> dict:
    """`repeats` rounds of one client's sequential requests then `clients` concurrent ones (`concurrent`
    requests in all, default 40 per client); each figure is the median over the rounds, so that the ratio
    of the two phases is taken within a round and the VM's drift between rounds does not enter it."""
    images = [png(side, i) for i in range(requests)]
    many_images = [images[i % requests] for i in range(concurrent or 40 * clients)]
    rounds = []
    with httpx.Client() as client:
        for data in images[:3]:  # warm the connection and the service
            timed_post(client, url, data)
        info = client.get(url + "/info", timeout=30).json()
        steps = int(info["defaults"]["steps"])
        for _ in range(repeats):
            before = totals(url)
            single = [timed_post(client, url, data) for data in images]
            one = one_client(url, before, totals(url), single, steps)
            rounds.append({**one, **concurrent_load(url, many_images, clients)})
    for r in rounds:
        r["ratio_to_one_client"] = r["concurrent_images_per_s"] / r["images_per_s"]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    med["overhead_s"] = med["p50_s"] - steps * med["mean_step_s_batch1"]  # consistent with the medians shown
    med["server_overhead_s"] = med["server_mean_s"] - steps * med["mean_step_s_batch1"]
    return {"model": info["path"], "backend": info["backend"]["label"], "defaults": info["defaults"],
            "workers": info["limits"]["workers"], "threads": info["limits"]["threads"],
            "tile_batching": info["limits"]["tile_batching"], "solo_direct": info["limits"].get("solo_direct"),
            "input": f"{side}x{side}", "requests": requests, "repeats": repeats,
            "single": {k: med.pop(k) for k in ("p50_s", "p95_s", "images_per_s")},
            "steps": steps, "predicted_step_s_batch1": info["predicted_step_seconds"].get("1"),
            **{k: v for k, v in med.items() if not k.startswith(("concurrent_", "ratio_"))},
            "concurrent": {"clients": clients, "requests": len(many_images),
                           **{k.removeprefix("concurrent_"): v for k, v in med.items() if k.startswith("concurrent_")},
                           "ratio_to_one_client": med["ratio_to_one_client"]},
            "ratios_per_round": [r["ratio_to_one_client"] for r in rounds]}


def concurrent_load(url: str, images: list[bytes], clients: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool, httpx.Client(limits=httpx.Limits(max_connections=clients)) as client:
        many = list(pool.map(lambda d: timed_post(client, url, d), images))
    wall = time.perf_counter() - t0
    return {"concurrent_p50_s": statistics.median(many), "concurrent_p95_s": float(np.percentile(many, 95)),
            "concurrent_images_per_s": len(many) / wall}


def settings(text: str) -> dict[str, str]:
    """VAR=VALUE[,VAR=VALUE] -> {VAR: VALUE}."""
    pairs = [kv.split("=", 1) for kv in text.split(",") if kv.strip()]
    if not pairs or any(len(kv) != 2 or not kv[0].startswith("SRNAS_") for kv in pairs):
        raise ValueError(f"--versus takes SRNAS_VAR=VALUE[,SRNAS_VAR=VALUE], got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def versus(model: str | None, other: dict[str, str], rounds: int, block: int, checkout: Path | None = None,
           clients: int = 16) -> dict:
    """Paired one-client figures: this environment's server against one with `other` settings (or another
    checkout's code); with another checkout, also `clients`-client throughput in alternating rounds."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        servers = [stack.enter_context(serve(Path(tmp) / name, extra_env=env, model_dir=model, checkout=code))
                   for name, env, code in (("a", {}, None), ("b", other, checkout))]
        urls = [s.url for s in servers]
        a, b = paired(urls, rounds, block)
        throughput = paired_throughput(urls, clients, max(2, rounds // 2), block) if checkout else None
    return {"input": "64x64", "rounds": rounds, "block": block, "this": a,
            "versus": {"settings": other, "checkout": str(checkout) if checkout else None, **b},
            "overhead_difference_s": b["overhead_s"] - a["overhead_s"],
            "server_overhead_difference_s": b["server_overhead_s"] - a["server_overhead_s"],
            **({"throughput": throughput} if throughput else {})}


def paired_throughput(urls: list[str], clients: int, rounds: int, per_client: int) -> dict:
    """Images per second with `clients` concurrent clients (`per_client` requests each), the servers in turn."""
    images = [png(64, i) for i in range(per_client)]
    many = [images[i % len(images)] for i in range(per_client * clients)]
    per = [[concurrent_load(url, many, clients)["concurrent_images_per_s"] for url in urls] for _ in range(rounds)]
    this, other = ([r[i] for r in per] for i in range(2))
    return {"clients": clients, "rounds": rounds, "this_images_per_s": statistics.median(this),
            "versus_images_per_s": statistics.median(other),
            "ratio_this_over_versus": statistics.median(t / o for t, o in zip(this, other))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.requests", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--out", help="default: bench/results/requests.json, or requests-versus.json with --versus")
    p.add_argument("--versus", metavar="VAR=VALUE[,VAR=VALUE]", help="paired comparison with a second server")
    p.add_argument("--versus-checkout", type=Path, metavar="DIR",
                   help="the second server runs this checkout's code (e.g. `git worktree add ../old COMMIT`)")
    p.add_argument("--rounds", type=int, default=8, help="--versus: alternating blocks per server")
    p.add_argument("--concurrent", type=int, help="requests in each concurrent phase (default: 40 per client)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of (sequential, concurrent); medians are reported")
    args = p.parse_args(argv)
    if min(args.requests, args.clients, args.rounds, args.repeats, 1 if args.concurrent is None else args.concurrent) < 1:
        p.error("--requests, --clients, --rounds, --repeats and --concurrent must be >= 1")
    if args.versus_checkout is not None and not (args.versus_checkout / "serving" / "service.py").is_file():
        p.error(f"--versus-checkout {args.versus_checkout}: not a checkout of this project")
    if args.versus is not None or args.versus_checkout is not None:
        try:
            other = settings(args.versus) if args.versus is not None else {}
        except ValueError as exc:
            p.error(str(exc))
        return write(versus(args.model, other, args.rounds, args.requests, args.versus_checkout, args.clients),
                     args.out or "bench/results/requests-versus.json")
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), model_dir=args.model) as server:
        report = measure(server.url, args.requests, args.clients, concurrent=args.concurrent, repeats=args.repeats)
    return write(report, args.out or "bench/results/requests.json")


def write(report: dict, out: str) -> int:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
