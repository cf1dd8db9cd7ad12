"""The comparison table of a search: base, supernet and subnets side by side, every figure measured here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.checkpoint import ModelBundle
from search.costs import count_flops, count_params
from search.evaluate import EvalConfig, evaluate
from search.latency import ProfileConfig, make_timer, time_network

COLUMNS = ("model", "params", "GFLOP/step", "served", "GFLOP/image", "latency ms/step", "predicted ms/step",
           "PSNR(Y)", "SSIM(Y)")


def measure_latency(bundle: ModelBundle, cfg: ProfileConfig) -> tuple[float, str]:
    """Median seconds per step at batch 1 on the serving backend (torch eager where a network will not export)."""
    net = bundle.net.eval()
    try:
        return time_network(net, 1, make_timer(cfg), net.cfg.image_size), cfg.backend
    except Exception as exc:  # say so rather than guess
        fallback = ProfileConfig(**{**cfg.__dict__, "backend": "torch"})
        return time_network(net, 1, make_timer(fallback), net.cfg.image_size), f"torch ({type(exc).__name__})"


def measure(name: str, bundle: ModelBundle, timing: tuple[float, str], evaluation: EvalConfig,
            progress: bool = False) -> dict[str, Any]:
    """Costs at the served 128 px tile and quality at the model's own default setting, beside its latency."""
    net = bundle.net.eval()
    steps, sampler = int(bundle.defaults["steps"]), bundle.defaults["sampler"]
    flops = count_flops(net, net.cfg.image_size)
    cfg = EvalConfig(**{**evaluation.__dict__, "steps": [steps], "samplers": [sampler]})
    report = evaluate(bundle, cfg, progress=progress)
    row = report["results"][0]
    predicted = (bundle.meta.get("arch") or {}).get("predicted", {}).get("latency_per_step_s")
    return {"model": name, "path": str(bundle.path), "params": count_params(net), "flops_per_step": flops,
            "served": f"{sampler} {steps}", "flops_per_image": flops * steps, "latency_s": timing[0],
            "latency_backend": timing[1], "batch": 1,
            "predicted_latency_s": next(iter(predicted.values())) if predicted else None,
            "psnr_y": row["psnr_y"], "ssim_y": row["ssim_y"], "bicubic_psnr_y": report["bicubic"]["psnr_y"],
            "bicubic_ssim_y": report["bicubic"]["ssim_y"]}


def markdown(rows: list[dict[str, Any]], base: str | None = None) -> str:
    """The table, with ratios against `base` (the first row by default)."""
    ref = next((r for r in rows if r["model"] == base), rows[0])
    lines = ["| " + " | ".join(COLUMNS) + " | FLOPs ÷ | latency ÷ | ΔPSNR dB |", "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        pred = f"{r['predicted_latency_s'] * 1e3:.2f}" if r["predicted_latency_s"] else "–"
        lat = f"{r['latency_s'] * 1e3:.2f}" + ("" if r["latency_backend"] == "onnxruntime" else f" ({r['latency_backend']})")
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['flops_per_step'] / 1e9:.3f} | {r['served']} | "
            f"{r['flops_per_image'] / 1e9:.3f} | {lat} | {pred} | {r['psnr_y']:.3f} | {r['ssim_y']:.4f} | "
            f"{ref['flops_per_step'] / r['flops_per_step']:.2f}× | {ref['latency_s'] / r['latency_s']:.2f}× | "
            f"{r['psnr_y'] - ref['psnr_y']:+.3f} |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    path = out / "compare.md"
    path.write_text(markdown(rows), encoding="utf-8")
    return path
