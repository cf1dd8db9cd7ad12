"""How strongly the task and the cost pull on the architecture parameters of a finished search.

On a search's final checkpoint, the task loss's gradient on alpha is taken over `--batches` independent alpha
batches, and the gradient of the unweighted cost penalty |cost/target - 1| once. For each gradient the report gives the mean absolute component
(softmax is shift-invariant, so each slot's mean is removed first). For the task it also gives each component's
signal-to-noise ratio, |mean| / std over the batches, and the |alpha| at which Adam's coupled weight decay
cancels the task's mean pull.

    python -m bench.alpha_gradients runs/pareto/t1.5x-searched-softmax-s1/search [--batches 24]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import read_json
from search.nas import SearchConfig, SearchTrainer, grads_of, unit_penalty
from search.supernet import arch_parameters


def _centred(grads: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([g - g.mean() for g in grads]).detach().double().numpy()


def measure(search_dir: Path, batches: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:  # the run folder stays as it was
        run = Path(tmp) / "search"
        shutil.copytree(search_dir, run, ignore=shutil.ignore_patterns("subnet", "supernet"))
        cfg = SearchConfig.from_dict(read_json(run / "train_config.json"))
        trainer = SearchTrainer(cfg, run)
        if not trainer.resume():
            raise SystemExit(f"{search_dir}: no checkpoint")
        alphas = arch_parameters(trainer.net)
        task = []
        for _ in range(batches):
            bic, hr = trainer.batch(trainer.alpha_data)
            task.append(_centred(grads_of(trainer.task_loss(hr, bic), alphas)))
        flops, latency = trainer.expected_costs(cfg.priced())
        # the pull of |cost / target - 1| at lambda 1, over or under the target alike
        cost = _centred(grads_of(unit_penalty(cfg.cost_loss, flops, latency), alphas))
    g = np.array(task)
    mean, std = g.mean(0), g.std(0, ddof=1)
    snr = np.abs(mean) / np.maximum(std, 1e-30)
    return {"step": trainer.step, "batches": batches, "batch": cfg.batch, "alpha_abs_mean": float(np.mean(np.abs(
        torch.cat([a.detach().flatten() for a in alphas]).numpy()))),
            "task_grad_abs": float(np.abs(g).mean()), "task_mean_grad_abs": float(np.abs(mean).mean()),
            "task_snr_median": float(np.median(snr)), "task_snr_p90": float(np.quantile(snr, 0.9)),
            "cost_grad_abs": float(np.abs(cost).mean()), "lambda_budget": cfg.cost_loss.lambda_budget,
            "weight_decay": cfg.alpha_weight_decay,
            "alpha_held_by_decay": float(np.abs(mean).mean() / cfg.alpha_weight_decay) if cfg.alpha_weight_decay
            else float("inf")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search_dir", type=Path, help="a search's run folder (its checkpoint)")
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"search": str(args.search_dir), **measure(args.search_dir, args.batches)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
