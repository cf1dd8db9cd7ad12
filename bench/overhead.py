"""Where the Pareto study's networks spend their time: a fixed cost per step, and a cost per FLOP.

For every distinct network of a finished study (one row per architecture; the classic FSRCNN apart), this counts
the FLOPs of one step at the served tile (`torch.utils.flop_counter`, batch 1) and fits the study's quiet
measured time per step as `ms = fixed + per_gflop * GFLOP` by least squares, per family. A UNet pays for its
many small operators (normalisation, activations, time projections, a resampling pair per level) whatever their
widths; FSRCNN runs seven convolutions. Where the fixed cost is a large share of a latency target, a network of
few large operators buys more arithmetic for the same time, which is what decides the cheap end of the plot.

    python -m bench.overhead [--json bench/results/pareto/overhead.json]

The networks are rebuilt from `pareto.json` (no run folder needed) and not timed again.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from scipy.stats import linregress
from torch.utils.flop_counter import FlopCounterMode

from search import pareto


def fit(gflop: list[float], ms: list[float]) -> dict[str, float]:
    """Least-squares `ms = fixed + per_gflop * gflop`, with R² (at least two networks)."""
    line = linregress(gflop, ms)
    return {"fixed_ms": float(line.intercept), "ms_per_gflop": float(line.slope), "r2": float(line.rvalue ** 2),
            "n": len(gflop), "gflop_min": float(min(gflop)), "gflop_max": float(max(gflop))}


def network_rows(study: pareto.Study) -> list[dict[str, Any]]:
    """One row per distinct network of the study: its family, FLOPs per step and measured time."""
    rows, seen = [], set()
    for p in study.state["points"]:
        key = p.get("arch_id") or (p["kind"], p["target"])  # seeds of one architecture share its time
        if key in seen:
            continue
        seen.add(key)
        net, args = study.network(p)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(*args)
        rows.append({"name": p["name"], "family": "classic" if p["kind"] == "classic" else "unet",
                     "gflop": counter.get_total_flops() / 1e9, "ms": p["measured_ms"]})
    return rows


def share_at(f: dict[str, float], ms: float) -> float:
    """The fixed cost's share of a step of `ms` milliseconds."""
    return min(1.0, f["fixed_ms"] / ms)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="search/recipes/pareto-tiny.yaml")
    ap.add_argument("--json", default="bench/results/pareto/overhead.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    study = pareto.Study(pareto.load_config(args.config), pareto.ROOT / "runs" / "overhead",
                         pareto.ROOT / "bench" / "results" / "pareto")
    rows = network_rows(study)
    fits = {fam: fit([r["gflop"] for r in rows if r["family"] == fam], [r["ms"] for r in rows if r["family"] == fam])
            for fam in ("unet", "classic") if sum(r["family"] == fam for r in rows) > 1}
    print(f"host: {study.state['host']}; floor {study.state['floor']['measured_ms']:.2f} ms/step")
    print("| family | networks | GFLOP/step | fixed ms | ms per GFLOP | R² | fixed share at 12 ms | at 20 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for fam, f in fits.items():
        print(f"| {fam} | {f['n']} | {f['gflop_min']:.3f}–{f['gflop_max']:.3f} | {f['fixed_ms']:.2f} | "
              f"{f['ms_per_gflop']:.1f} | {f['r2']:.2f} | {share_at(f, 12):.0%} | {share_at(f, 20):.0%} |")
    Path(args.json).write_text(json.dumps({"host": study.state["host"], "fits": fits, "networks": rows}, indent=1)
                               + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
