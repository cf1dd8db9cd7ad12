"""`srnas pipeline`: base -> search (every relaxation) -> fine-tune -> evaluate -> export -> compare -> bench
-> report, each stage an `srnas` command, resuming where it stopped.

Stages that finished are recorded in `pipeline.json`; a training stage that was cut off continues from its
own checkpoint (`--resume`). `--quick` shrinks every budget so the whole chain runs in a few minutes: it
checks the plumbing, not the quality.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from models.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- srnas pipeline: start -->", "<!-- srnas pipeline: end -->"
RELAXATIONS = ("softmax", "temperature", "gumbel-hard")
# What --quick changes, per kind of stage (flags appended after the recipe's, so they win).
QUICK = {
    "train": ["--iters", "4", "--batch", "2", "--patch", "32", "--checkpoint-every", "2"],
    "search": ["--iters", "4", "--batch", "2", "--patch", "32", "--checkpoint-every", "2", "--warmup-alpha", "1",
               "--score-crops", "1"],
    "evaluate": ["--crops", "1", "--trajectory-steps", "1"],
    "compare": ["--reps", "2", "--crops", "1"],
    "bench": ["--batches", "1", "--reps", "2", "--backends", "onnxruntime-fp32"],
}


@dataclass
class PipelineConfig:
    preset: str = "tiny"
    out: str = "runs/pipeline"
    relaxations: list[str] = field(default_factory=lambda: list(RELAXATIONS))
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    samplers: list[str] = field(default_factory=lambda: ["ddim", "ddpm"])
    data: str = "builtin"
    threads: int = 0
    device: str = "cpu"  # training stages only
    quick: bool = False
    markdown: str | None = None  # where the report's section goes (default: BENCHMARKS.md, or OUT/report.md if quick)
    progress: bool = False  # the stages draw their own progress bars (on a terminal)

    def recipe(self, kind: str) -> Path:
        name = {"train": f"{self.preset}.yaml", "search": f"search-{self.preset}.yaml",
                "finetune": f"finetune-{self.preset}.yaml"}[kind]
        path = ROOT / "search" / "recipes" / name
        if not path.is_file():
            raise UserError(f"no {kind} recipe for preset {self.preset!r} ({path.relative_to(ROOT)})")
        return path

    def report_path(self) -> Path:
        return Path(self.markdown) if self.markdown else (
            Path(self.out) / "report.md" if self.quick else ROOT / "BENCHMARKS.md")

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the one that started the folder."""
        d = asdict(self)
        return {k: d[k] for k in ("preset", "relaxations", "steps", "samplers", "data", "quick")}


@dataclass
class Stage:
    name: str
    argv: list[str]


def models(cfg: PipelineConfig) -> dict[str, Path]:
    """Every model the report compares, by row name: the base, the softmax supernet, one subnet per relaxation."""
    out = Path(cfg.out)
    rows = {"base": out / "base" / "model"}
    if "softmax" in cfg.relaxations:
        rows["supernet"] = out / "search-softmax" / "supernet"
    rows.update({r: out / f"finetune-{r}" / "model" for r in cfg.relaxations})
    return rows


def plan(cfg: PipelineConfig) -> list[Stage]:
    out, quick = Path(cfg.out), cfg.quick
    quiet = [] if cfg.progress else ["--no-progress"]
    common = ["--data", cfg.data, *quiet] + (["--threads", str(cfg.threads)] if cfg.threads else [])

    def train_flags(kind: str, run: str) -> list[str]:
        return ["--config", str(cfg.recipe(kind)), "--out", str(out / run), "--resume", "--device", cfg.device, *common,
                *(QUICK["search" if kind == "search" else "train"] if quick else [])]

    stages = [Stage("train-base", ["train", *train_flags("train", "base")])]
    for r in cfg.relaxations:
        stages.append(Stage(f"search-{r}", ["search", "--relax", r, *train_flags("search", f"search-{r}")]))
    for r in cfg.relaxations:
        stages.append(Stage(f"finetune-{r}", ["finetune", "--model", str(out / f"search-{r}" / "subnet"),
                                              *train_flags("finetune", f"finetune-{r}")]))
    steps = ",".join(map(str, cfg.steps))
    for name, path in models(cfg).items():
        stages.append(Stage(f"evaluate-{name}", [
            "evaluate", "--model", str(path), "--steps", steps, "--samplers", ",".join(cfg.samplers),
            "--data", cfg.data, "--device", cfg.device, "--out", str(out / f"eval-{name}"), "--choose-defaults",
            *quiet, *(QUICK["evaluate"] if quick else [])]))
        if name != "supernet":  # the deployable ones: model.onnx and deploy.json with the table's prediction
            stages.append(Stage(f"export-{name}", ["deploy", "--model", str(path)]))
    pairs = [f"{n}={p}" for n, p in models(cfg).items()]
    stages.append(Stage("compare", ["compare", *pairs, "--out", str(out / "compare"), *quiet,
                                    *(QUICK["compare"] if quick else [])]))
    stages.append(Stage("bench", ["bench", *[p for p in pairs if not p.startswith("supernet=")],
                                  "--out", str(out / "bench.json"), *quiet,
                                  *(QUICK["bench"] if quick else ["--batches", "1,8"])]))
    return stages


class Ledger:
    """pipeline.json: the configuration that started the folder and the stages that finished."""

    def __init__(self, cfg: PipelineConfig):
        self.path = Path(cfg.out) / "pipeline.json"
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {
            "config": cfg.fingerprint(), "done": []}
        if self.state["config"] != cfg.fingerprint():
            raise UserError(f"{cfg.out} holds a pipeline with other settings ({self.state['config']}); "
                            "use another --out or remove it")

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def finish(self, stage: str) -> None:
        self.state["done"].append(stage)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.state, indent=2) + "\n")


def run(cfg: PipelineConfig, srnas: Callable[[list[str]], int], log: Callable[[str], None] = print) -> Path:
    """Run every unfinished stage with `srnas` (the CLI's main), then write the report."""
    ledger = Ledger(cfg)
    stages = plan(cfg)
    for i, stage in enumerate(stages, 1):
        if ledger.done(stage.name):
            log(f"[{i}/{len(stages)}] {stage.name}: done before")
            continue
        log(f"[{i}/{len(stages)}] {stage.name}: srnas {' '.join(stage.argv)}")
        t0 = time.monotonic()
        rc = srnas(stage.argv)
        if rc != 0:
            raise UserError(f"stage {stage.name} failed (exit {rc}); fix it and run the pipeline again to resume")
        ledger.finish(stage.name)
        log(f"[{i}/{len(stages)}] {stage.name}: finished in {_duration(time.monotonic() - t0)}")
    from srnas.pipeline_report import write_report

    return write_report(cfg)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
