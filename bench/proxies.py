"""Do cheap proxies rank the Pareto study's networks as their full training does?

Zero-cost proxies (Zen-NAS, SynFlow, GradNorm) promise to rank architectures without training them; a few-shot
proxy trains each one briefly. If one ranked the study's trained diffusion networks well, a search could pick
from many table-sampled candidates at a fraction of a training run each. For every diffusion network of a
finished study (floor, random, narrowed, searched; the classic network is another family), this scores on fresh
weights (seed 0, the study's training settings):
- `gradnorm`: the norm of the SR3 loss's gradient on one fixed batch;
- `synflow`: SynFlow's sum of |θ · ∂R/∂θ| with |θ| weights and an all-ones input (log10);
- `zen`: Zen-NAS's expected change of the output under a small input perturbation, Gaussian input (log10);
- `params`: the parameter count;
- `fewshot`: val PSNR(Y) after `--fewshot-iters` training iterations (DDIM 1 step, the study's scoring);
and reports each proxy's Spearman rank correlation with the trained networks' val PSNR(Y), over all of them
and within each latency target.

    python -m bench.proxies --out runs/pareto2 [--fewshot-iters 100] [--json bench/results/proxies.json]
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from models.checkpoint import load_model, read_json
from search import pareto
from search.train import Trainer

PROXIES = ("gradnorm", "synflow", "zen", "params", "fewshot")


def _trainer(study: pareto.Study, model_dir: Path, run_dir: Path, iters: int) -> Trainer:
    """A trainer of the network in `model_dir` with fresh weights and the study's settings."""
    arch = load_model(model_dir).net.cfg.to_dict()
    return Trainer(study.train_cfg(seed=0, unet_overrides=arch, iters=iters, checkpoint_every=10**9), run_dir)


def gradnorm(trainer: Trainer) -> float:
    torch.manual_seed(0)
    bic, hr = trainer.batch(trainer.data)
    trainer.net.zero_grad()
    trainer.task_loss(hr, bic).backward()
    return float(torch.sqrt(sum((p.grad ** 2).sum() for p in trainer.net.parameters() if p.grad is not None)))


def synflow(net: torch.nn.Module, size: int) -> float:
    """log10 of SynFlow's score; the network's weights are restored afterwards."""
    net.eval()
    signs = {n: torch.sign(p.data) for n, p in net.state_dict().items()}
    with torch.no_grad():
        for p in net.state_dict().values():
            p.abs_()
    net.zero_grad()
    x = torch.ones(1, net.cfg.in_channels, size, size)
    net(x, torch.full((1,), 0.5)).sum().backward()
    score = sum(float((p.detach() * p.grad).abs().sum()) for p in net.parameters() if p.grad is not None)
    with torch.no_grad():
        for n, p in net.state_dict().items():
            p.mul_(signs[n])
    net.train()
    return math.log10(max(score, 1e-300))


def zen(net: torch.nn.Module, size: int, eps: float = 0.01, repeats: int = 4) -> float:
    """log10 of E ||f(x) - f(x + eps d)|| / eps over Gaussian x and d (Zen-NAS, on the output)."""
    g = torch.Generator().manual_seed(0)
    net.eval()
    vals = []
    with torch.no_grad():
        for _ in range(repeats):
            x = torch.randn(4, net.cfg.in_channels, size, size, generator=g)
            d = torch.randn(x.shape, generator=g)
            t = torch.full((4,), 0.5)
            vals.append(float((net(x + eps * d, t) - net(x, t)).abs().mean()) / eps)
    net.train()
    return math.log10(float(np.mean(vals)))


def fewshot(study: pareto.Study, trainer: Trainer) -> float:
    model = trainer.run(progress=False)
    return pareto.score(model, study.cfg.data, "val", study.cfg.val_crops)["psnr_y"]


def measure(study: pareto.Study, row: dict[str, Any], iters: int, tmp: Path) -> dict[str, float]:
    trainer = _trainer(study, study.out / row["name"] / "train" / "model", tmp / row["name"], iters)
    size = study.train_cfg().patch
    out = {"gradnorm": gradnorm(trainer), "synflow": synflow(trainer.net, size), "zen": zen(trainer.net, size),
           "params": float(sum(p.numel() for p in trainer.net.parameters()))}
    out["fewshot"] = fewshot(study, trainer) if iters else float("nan")
    return out


def correlations(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Spearman's rho of each proxy with the trained val PSNR(Y): over every row, and per target."""
    def rho(sub: list[dict[str, Any]], key: str) -> float:
        xs = [r["proxies"][key] for r in sub]
        if len(sub) < 4 or any(math.isnan(x) for x in xs):
            return float("nan")
        return float(spearmanr(xs, [r["psnr_val"] for r in sub]).statistic)

    groups = {"all": rows, **{f"{t:g}x": [r for r in rows if r["target"] == t]
                              for t in sorted({r["target"] for r in rows})}}
    return {g: {k: rho(sub, k) for k in PROXIES} | {"n": len(sub)} for g, sub in groups.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/pareto", help="the study's run folder (every point's model)")
    ap.add_argument("--config", default="search/recipes/pareto-tiny.yaml")
    ap.add_argument("--fewshot-iters", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="bench/results/proxies.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = pareto.load_config(args.config, train_threads=args.threads)
    study = pareto.Study(cfg, args.out, pareto.ROOT / "bench" / "results" / "pareto")
    rows = [p for p in study.state["points"] if p["kind"] != "classic"]
    with tempfile.TemporaryDirectory() as tmp:
        for row in tqdm(rows, desc="proxies", unit="network"):
            row["proxies"] = measure(study, row, args.fewshot_iters, Path(tmp))
    keep = ("name", "kind", "relax", "target", "seed", "psnr_val", "psnr_test", "measured_ms", "proxies")
    result = {"host": study.state["host"], "fewshot_iters": args.fewshot_iters, "budget": cfg.budget,
              "rows": [{k: r[k] for k in keep} for r in rows], "spearman_val": correlations(rows)}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    for group, rhos in result["spearman_val"].items():
        print(f"{group:6s} n={rhos['n']:2d} " + "  ".join(f"{k} {rhos[k]:+.2f}" for k in PROXIES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
