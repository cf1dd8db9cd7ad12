"""Latency estimates on hosts the tables were not timed on.

    python -m bench.calibration [--subnets 20] [--tables A.json,B.json] [--offline-only] [--out FILE]

Two studies, one JSON file (default bench/results/calibration-<host>.json):

- **leave-one-host-out, offline**: each shipped table calibrated onto the other table's host and scored against
  the other host's stored `--check` measurements (the base, the fastest architecture and 20 random subnets at
  batches 1, 2, 4 and 8). The reference blocks' timings on the other host are its table's entries, and the
  reference networks' are its table's predictions, which that host measured to within its check's MAPE.
- **live, this host**: each table calibrated here by `search.calibrate` (timed, with its seconds), then the base
  and `--subnets` random subnets timed here end to end (each the fastest of 3 medians of 7 runs); MAPE of every
  table raw and calibrated, and Kendall's tau between prediction and measurement.
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

from export.calibration import fit, mape, pick_blocks
from export.runtime import host_id, host_slug
from models.checkpoint import read_json, write_json
from models.config import preset
from models.unet import UNet
from search.calibrate import calibrate, entry_context, reference_nets
from search.latency import (LatencyTable, ProfileConfig, base_arch, check_archs, fastest_of, make_timer,
                            time_network)
from search.space import make_space
from search.supernet import extract, random_arch, space_config

ROOT = Path(__file__).resolve().parents[1]
TABLES = ["search/luts/tiny-default-ort-1t.json", "search/luts/tiny-default-ort-1t-epyc.json"]
BATCHES = [1, 2, 4, 8]


def supernet() -> UNet:
    base = preset("tiny")
    return UNet(space_config(base, make_space("default", base))).eval()


def offline(src: LatencyTable, dst: LatencyTable, check: dict[str, Any], net: UNet) -> dict[str, Any]:
    """`src` calibrated onto `dst`'s host from `dst`'s own timings, scored on `dst`'s check measurements."""
    batches = sorted(int(b) for b in check["batches"])
    blocks = [(e["candidate"], b, src.seconds(e["slot"], e["candidate"], b, ctx), dst.seconds(e["slot"], e["candidate"], b, ctx))
              for e in pick_blocks(src.entries) for ctx in [entry_context(src, e["slot"], e["shape"][1:], e["out_shape"][1:])]
              for b in batches]
    nets = [(b, src.parts(a, b), dst.predict(a, b, corrected=False)) for a in reference_nets(net, 5) for b in batches]
    cal = fit(blocks, nets)
    rows = {}
    for b, archs in check_archs(dst, net, batches, check["subnets"]).items():
        stored = check["batches"][str(b)]["subnets"]
        if [s["name"] for s in stored] != [n for n, _ in archs] or not np.allclose(
                [s["predicted_s"] for s in stored], [dst.predict(a, b, corrected=False) for _, a in archs]):
            raise SystemExit(f"the stored check of {dst.meta['host']} does not match the networks this code draws")
        meas = [s["measured_s"] for s in stored]
        raw = [src.predict(a, b, corrected=False) for _, a in archs]
        calibrated = [cal.predict(src.parts(a, b), b) for _, a in archs]
        rows[str(b)] = {"networks": len(archs), "mape_raw": mape(raw, meas), "mape_calibrated": mape(calibrated, meas),
                        "mape_own_table": mape([s["predicted_s"] for s in stored], meas),
                        "kendall_tau_calibrated": float(kendalltau(calibrated, meas)[0])}
    return {"from": src.meta["host"], "to": dst.meta["host"], "fit": cal.to_dict(), "batches": rows}


def live(tables: dict[str, LatencyTable], net: UNet, subnets: int) -> dict[str, Any]:
    cals = {}
    for name, table in tables.items():
        new, report = calibrate(table, net, ProfileConfig("onnxruntime", BATCHES, 1), progress=False)
        cals[name] = {"table": new, "seconds": report["seconds"], "fit": report["fit"]}
    timer = fastest_of(make_timer(ProfileConfig("onnxruntime", BATCHES, 1, 3, 7)), 3)
    rng = torch.Generator().manual_seed(1000)
    archs = [("base", base_arch(net))] + [(f"random{i}", random_arch(net, rng)) for i in range(subnets)]
    measured = {b: [] for b in BATCHES}
    for _, arch in tqdm(archs, desc="time networks", unit="net"):
        sub = extract(net, arch)
        for b in BATCHES:
            measured[b].append(time_network(sub, b, timer))
    out: dict[str, Any] = {"networks": len(archs), "tables": {}}
    for name, table in tables.items():
        cal = cals[name]["table"]
        rows = {}
        for b in BATCHES:
            raw = [table.predict(a, b, corrected=False) for _, a in archs]
            calibrated = [cal.predict(a, b, corrected=False) for _, a in archs]
            rows[str(b)] = {"mape_raw": mape(raw, measured[b]), "mape_calibrated": mape(calibrated, measured[b]),
                            "kendall_tau_calibrated": float(kendalltau(calibrated, measured[b])[0])}
        out["tables"][name] = {"host": table.meta["host"], "calibration_seconds": cals[name]["seconds"],
                               "fit": cals[name]["fit"], "batches": rows}
    out["measured"] = [{"name": n, **{str(b): measured[b][i] for b in BATCHES}} for i, (n, _) in enumerate(archs)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", default=",".join(TABLES))
    p.add_argument("--subnets", type=int, default=20)
    p.add_argument("--offline-only", action="store_true")
    p.add_argument("--out", help="default bench/results/calibration-<host>.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    paths = [s for s in args.tables.split(",") if s]
    tables = {path: LatencyTable.load(ROOT / path) for path in paths}
    net = supernet()
    result: dict[str, Any] = {"host": host_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "offline": []}
    for src in paths:
        for dst in paths:
            check = ROOT / Path(dst).with_suffix(".check.json")
            if src != dst and check.is_file():
                result["offline"].append(offline(tables[src], tables[dst], read_json(check), net))
    if not args.offline_only:
        result["live"] = live(tables, net, args.subnets)
    out = Path(args.out or ROOT / "bench" / "results" / f"calibration-{host_slug()}.json")
    write_json(out, result)
    for row in result["offline"]:
        print(f"{row['from']} -> {row['to']}: MAPE % raw / calibrated by batch: " + ", ".join(
            f"{b}: {r['mape_raw']:.1f} / {r['mape_calibrated']:.1f}" for b, r in row["batches"].items()))
    for name, row in result.get("live", {}).get("tables", {}).items():
        print(f"{name} -> this host ({row['calibration_seconds']:.0f} s): " + ", ".join(
            f"{b}: {r['mape_raw']:.1f} / {r['mape_calibrated']:.1f} (tau {r['kendall_tau_calibrated']:.2f})"
            for b, r in row["batches"].items()))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
