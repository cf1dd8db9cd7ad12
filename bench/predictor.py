"""The network-wise latency predictor (`search.predictor`) against the lookup table: MAPE and Kendall's tau.

    python -m bench.predictor [--subnets 50] [--out FILE]

- on each shipped table's stored check (the base, the fastest and 20 random subnets per batch, measured on the
  table's host): the table's own prediction, and the predictor cross-validated (5 folds) on those measurements;
- leave-one-host-out: the predictor trained on one host's check ranks the other host's networks (tau only: a
  predictor learned on another host has that host's speed);
- on this host: `--subnets` new random subnets timed at batch 1 (each the fastest of 3 medians of 7 runs):
  tau of each table and of the predictor (cross-validated here, and trained on each stored check).
Writes bench/results/predictor-<host>.json with every measurement, so other predictors can be scored on them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from tqdm import tqdm

from bench.calibration import ROOT, TABLES, supernet
from export.calibration import mape
from export.runtime import host_id, host_slug
from models.checkpoint import read_json, write_json
from search.latency import LatencyTable, ProfileConfig, check_archs, fastest_of, make_timer, time_network
from search.predictor import Featurizer, RidgePredictor, cross_validated
from search.supernet import extract, random_arch

SEED = 3000  # other networks than the checks' (1000) and the calibration's (2000)


def tau(a: Any, b: Any) -> float:
    return float(kendalltau(a, b)[0])


def stored(tables: dict[str, LatencyTable], net, feat: Featurizer) -> dict[str, Any]:
    """{table: {batch: (features, measured, table's prediction)}} from the stored checks."""
    out = {}
    for path, table in tables.items():
        check = read_json(ROOT / Path(path).with_suffix(".check.json"))
        batches = sorted(int(b) for b in check["batches"])
        out[path] = {}
        for b, archs in check_archs(table, net, batches, check["subnets"]).items():
            rows = check["batches"][str(b)]["subnets"]
            out[path][b] = (np.stack([feat(a, net) for _, a in archs]), np.array([r["measured_s"] for r in rows]),
                            np.array([r["predicted_s"] for r in rows]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subnets", type=int, default=50)
    p.add_argument("--out")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    net, tables = supernet(), {path: LatencyTable.load(ROOT / path) for path in TABLES}
    feat = Featurizer.of(net)
    data = stored(tables, net, feat)
    result: dict[str, Any] = {"host": host_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "stored": {}, "leave_one_host_out": {}, "this_host": {}}
    for path, per_batch in data.items():
        result["stored"][path] = {str(b): {
            "networks": len(y), "table_mape": mape(t, y), "table_tau": tau(t, y),
            "predictor_mape_cv": mape(cv := cross_validated(x, y), y), "predictor_tau_cv": tau(cv, y)}
            for b, (x, y, t) in per_batch.items()}
    for src in data:
        for dst in data:
            if src != dst:
                result["leave_one_host_out"][f"{src} -> {dst}"] = {str(b): tau(
                    RidgePredictor().fit(*data[src][b][:2]).predict(data[dst][b][0]), data[dst][b][1])
                    for b in data[dst]}
    rng = torch.Generator().manual_seed(SEED)
    archs = [random_arch(net, rng) for _ in range(args.subnets)]
    timer = fastest_of(make_timer(ProfileConfig("onnxruntime", [1], 1, 3, 7)), 3)
    measured = np.array([time_network(extract(net, a), 1, timer)
                         for a in tqdm(archs, desc="time networks", unit="net")])
    x = np.stack([feat(a, net) for a in archs])
    here = {"networks": len(archs), "measured_s": measured.tolist(),
            "predictor_tau_cv": tau(cross_validated(x, measured), measured),
            "predictor_mape_cv": mape(cross_validated(x, measured), measured)}
    for path, table in tables.items():
        here[f"table_tau {path}"] = tau([table.predict(a, 1, corrected=False) for a in archs], measured)
        here[f"predictor_tau trained on {path}"] = tau(RidgePredictor().fit(*data[path][1][:2]).predict(x), measured)
    result["this_host"] = here
    out = Path(args.out or ROOT / "bench" / "results" / f"predictor-{host_slug()}.json")
    write_json(out, result)
    for path, rows in result["stored"].items():
        print(f"{path} (its own host): " + ", ".join(
            f"b{b}: table {r['table_mape']:.1f}% tau {r['table_tau']:.2f} | predictor {r['predictor_mape_cv']:.1f}% "
            f"tau {r['predictor_tau_cv']:.2f}" for b, r in rows.items()))
    for k, v in result["leave_one_host_out"].items():
        print(f"predictor {k}: tau " + ", ".join(f"b{b} {t:.2f}" for b, t in v.items()))
    print("this host, batch 1: " + ", ".join(f"{k} {v:.2f}" for k, v in here.items() if k.startswith(("table", "pred"))))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
