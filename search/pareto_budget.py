"""`srnas pareto --budget-check SIZE --budget-iters N`: does the searched network's standing against the classic
network at one classic size hold when both train longer?

The study trains every point for one short budget, where a tiny FSRCNN converges fast. At one size of the classic
network, this check takes the searched network a user would take there (the best on val within +-10 % of the
classic's time, as the study's per-size verdict does) and the classic network itself, trains both from fresh
weights for N iterations of the study's recipe, seed by seed, and scores them on the study's val and test crops.
Latency is the study's quiet measurement of the same architectures (it does not depend on the weights' values).

Rows live in pareto.json under "budget_checks", one entry per (size, iterations); a rerun skips finished rows,
and several processes running the same command share the rows left (each claims one before it trains).
"""
from __future__ import annotations

import time
from typing import Any

from models.errors import UserError
from search import pareto_report
from search.pareto import Study, claim_first, score


def check_key(size: float, iters: int) -> str:
    return f"{size:g}x-{iters}"


def jobs(seeds: list[int]) -> list[tuple[str, int]]:
    """(kind, seed) in the order they run: the two kinds alternate, so that two workers each start on one."""
    return [(kind, s) for s in seeds for kind in ("searched", "classic")]


class BudgetCheck:
    def __init__(self, study: Study, size: float, iters: int):
        if iters <= study.cfg.budget:
            raise UserError(f"--budget-iters must be above the study's budget of {study.cfg.budget} iterations "
                            f"(got {iters})")
        points = study.state["points"]
        verdict = next((v for v in pareto_report.classic_verdicts(points) if v["target"] == size), None)
        if verdict is None:
            sizes = ", ".join(f"{v['target']:g}" for v in pareto_report.classic_verdicts(points)) or "none yet"
            raise UserError(f"--budget-check {size:g}: the study has no classic network of that size ({sizes})")
        if verdict["searched"] is None:
            raise UserError(f"--budget-check {size:g}: no searched point within ±10 % of the classic's time")
        self.study, self.size, self.iters = study, size, iters
        self.key = check_key(size, iters)
        self.searched = verdict["searched"]
        self.classic = next(p for p in points if p["kind"] == "classic" and p["target"] == size)
        self.classic_ms = verdict["ms"]

    def entry(self) -> dict[str, Any]:
        checks = self.study.state.setdefault("budget_checks", {})
        return checks.setdefault(self.key, {
            "size": self.size, "iters": self.iters, "study_budget": self.study.cfg.budget,
            "searched_point": self.searched["name"], "arch": self.searched["arch"],
            "searched_ms": self.searched["measured_ms"], "fsrcnn": self.classic["fsrcnn"],
            "classic_ms": self.classic_ms, "rows": []})

    def run(self) -> int:
        """Train and score every missing row this process can claim; return how many it finished."""
        finished = 0
        while (job := self._claim()) is not None:
            try:
                self._run_one(*job)
                finished += 1
            finally:
                self._claim_path(*job).unlink(missing_ok=True)
        return finished

    def _claim(self) -> tuple[str, int] | None:
        with self.study.locked():
            done = {(r["kind"], r["seed"]) for r in self.entry()["rows"]}
            return claim_first(jobs(self.study.cfg.baseline_seeds), lambda job: self._claim_path(*job),
                               lambda job: job in done)

    def _claim_path(self, kind: str, seed: int):
        return self.study.out / "budget" / self.key / "claims" / f"{kind}-s{seed}.pid"

    def _run_one(self, kind: str, seed: int) -> None:
        t0 = time.perf_counter()
        run = self.study.out / "budget" / self.key / f"{kind}-s{seed}"
        if kind == "searched":
            model = self.study.train_arch(run, seed, self.searched["arch"], iters=self.iters)
        else:
            model = self.study.train_classic(run, seed, self.classic["fsrcnn"], iters=self.iters)
        cfg = self.study.cfg
        val, test = score(model, cfg.data, "val", cfg.val_crops), score(model, cfg.data, "test", cfg.test_crops)
        row = {"kind": kind, "seed": seed, "train_iters": self.iters, "train_seconds": round(time.perf_counter() - t0, 1),
               "psnr_val": val["psnr_y"], "psnr_test": test["psnr_y"], "ssim_test": test["ssim_y"],
               "val_crops": val["crops"], "test_crops": test["crops"]}
        with self.study.locked():
            self.entry()["rows"].append(row)
            self.study._save(f"Pareto study, budget check at the {self.size:g}x classic size: {kind} seed {seed} "
                             f"after {self.iters} iterations, test PSNR(Y) {row['psnr_test']:.3f} dB")
        print(f"{self.key} {kind}-s{seed}: test PSNR(Y) {row['psnr_test']:.3f} dB, val {row['psnr_val']:.3f} dB, "
              f"{row['train_seconds']:.0f} s", flush=True)
