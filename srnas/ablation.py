"""`srnas ablate`: the quality-recipe ablation. Each variant changes one factor of the training recipe
(residual target, prediction type, noise schedule, EMA, loss, training length), trains the shipped
default's searched architecture from scratch on the same budget, and is scored at few DDIM steps on the
same validation crops. Every variant resumes from its own checkpoint; a finished one is not re-run.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from models.errors import UserError
from search.configfile import read_yaml

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- srnas ablation: start -->", "<!-- srnas ablation: end -->"
RAW = "no EMA"  # the recipe run scored with its raw weights instead of the EMA: no extra training
# What --quick changes: the plumbing runs in seconds; the numbers mean nothing.
QUICK = {"iters": 3, "batch": 2, "patch": 32, "warmup": 1, "checkpoint_every": 2}


@dataclass
class AblationConfig:
    recipe: str = "search/recipes/tiny.yaml"  # the training recipe every variant starts from
    arch_from: str | None = "models/weights/default"  # train this model's searched architecture
    budget: dict[str, Any] = field(default_factory=dict)  # training fields every run shares (iters, patch, ...)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> changed fields ("a.b" nests)
    steps: list[int] = field(default_factory=lambda: [1, 2, 4])
    crops_per_image: int = 4
    out: str = "runs/ablation"
    markdown: str | None = None  # default: BENCHMARKS.md, or OUT/ablation.md if quick
    quick: bool = False

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "AblationConfig":
        data = read_yaml(Path(path), f"{path}: cannot read ablation config")
        try:
            cfg = cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
        except TypeError as exc:
            raise UserError(f"{path}: cannot read ablation config ({exc})") from None
        if "recipe" not in cfg.variants:
            raise UserError(f"{path}: the variants need a 'recipe' entry (no change) to compare against")
        return cfg

    def report_path(self) -> Path:
        return Path(self.markdown) if self.markdown else (
            Path(self.out) / "ablation.md" if self.quick else ROOT / "BENCHMARKS.md")


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """d["a.b"] = v sets d["a"]["b"]; an unknown key is refused so a typo cannot pass as a variant."""
    *parents, last = key.split(".")
    for p in parents:
        if not isinstance(d.get(p), dict):
            raise UserError(f"ablation: {key!r} names no field of the training config")
        d = d[p]
    if last not in d:
        raise UserError(f"ablation: {key!r} names no field of the training config")
    d[last] = value


def variant_config(cfg: AblationConfig, name: str):  # -> TrainConfig
    from search.train import TrainConfig

    recipe = read_yaml(ROOT / cfg.recipe, f"ablation: cannot read the recipe {cfg.recipe}")
    base = TrainConfig.from_dict(recipe).to_dict()
    if cfg.arch_from:  # the model's config.json names its preset and searched arch: no weights needed
        model = json.loads((ROOT / cfg.arch_from / "config.json").read_text(encoding="utf-8"))
        base["preset"] = model["preset"]
        base["unet_overrides"] = {**base["unet_overrides"], "arch": model["unet"]["arch"]}
    changes = {**cfg.budget, **cfg.variants[name], **(QUICK if cfg.quick else {})}
    if cfg.quick and "iters" in cfg.variants[name]:  # length variants keep their ratio to the budget
        changes["iters"] = max(1, round(QUICK["iters"] * cfg.variants[name]["iters"] / cfg.budget.get("iters", 1)))
    for key, value in changes.items():
        set_dotted(base, key, value)
    try:
        return TrainConfig.from_dict(base)
    except (TypeError, ValueError) as exc:
        raise UserError(f"ablation variant {name!r}: {exc}") from None


def _scores(bundle, cfg: AblationConfig) -> dict[str, Any]:
    from search.evaluate import EvalConfig, evaluate

    rep = evaluate(bundle, EvalConfig(steps=cfg.steps, samplers=["ddim"], crops_per_image=cfg.crops_per_image),
                   progress=False)
    return {"bicubic": rep["bicubic"], "crops": rep["crops"],
            "psnr_y": {str(r["steps"]): r["psnr_y"] for r in rep["results"]},
            "ssim_y": {str(r["steps"]): r["ssim_y"] for r in rep["results"]}}


def run_variant(cfg: AblationConfig, name: str) -> list[dict[str, Any]]:
    """Train (or resume) one variant and score it; the recipe also yields the no-EMA row."""
    from models.checkpoint import ModelBundle
    from search.train import Trainer

    tcfg = variant_config(cfg, name)
    run_dir = Path(cfg.out) / name
    done = run_dir / "ablation.json"
    if done.is_file():
        rows = json.loads(done.read_text(encoding="utf-8"))
        if rows[0]["train"] == tcfg.to_dict():
            return [{**r, "train_minutes": _train_minutes(run_dir, r["train_minutes"] * 60)} for r in rows]
    trainer = Trainer(tcfg, run_dir)
    trainer.resume()
    t0 = time.perf_counter()
    trainer.run(progress=True)
    minutes = _train_minutes(run_dir, time.perf_counter() - t0)
    change = cfg.variants[name]
    rows = [{"variant": name, "change": change, "train": tcfg.to_dict(), "train_minutes": minutes,
             **_scores(ModelBundle(trainer.ema.module.eval(), trainer.diffusion, trainer.preset), cfg)}]
    if name == "recipe":
        raw = ModelBundle(trainer.net.eval(), trainer.diffusion, trainer.preset)
        rows.append({**rows[0], "variant": RAW, "change": {"ema": "off (the raw weights scored)"}, **_scores(raw, cfg)})
    done.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return rows


def _train_minutes(run_dir: Path, fallback_s: float) -> float:
    """Wall time of training from the run's log: its clock restarts with each resumed segment."""
    try:
        lines = (run_dir / "train_log.csv").read_text(encoding="utf-8").strip().splitlines()[1:]
        seconds = [float(line.split(",")[-1]) for line in lines]
    except (OSError, ValueError):
        return round(fallback_s / 60, 1)
    ends = [a for a, b in zip(seconds, seconds[1:]) if b < a] + seconds[-1:]
    return round(sum(ends) / 60, 1)


def run(cfg: AblationConfig) -> tuple[Path, list[dict[str, Any]]]:
    for name in cfg.variants:  # refuse a bad variant before hours of training
        variant_config(cfg, name)
    rows = [row for name in cfg.variants for row in run_variant(cfg, name)]
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "ablation.json").write_text(json.dumps({"config": asdict(cfg), "rows": rows}, indent=1),
                                                 encoding="utf-8")
    from bench.report import write_section

    return write_section(cfg.report_path(), table(cfg, rows), START, END), rows


def _change_text(change: dict[str, Any]) -> str:
    return ", ".join(f"`{k}: {v}`" for k, v in change.items()) or "none (the recipe)"


def table(cfg: AblationConfig, rows: list[dict[str, Any]]) -> str:
    served = str(cfg.steps[0])
    ref = next(r for r in rows if r["variant"] == "recipe")
    bic = ref["bicubic"]
    budget = ", ".join(f"{k} {v}" for k, v in {**cfg.budget, **(QUICK if cfg.quick else {})}.items())
    head = ["variant", "change"] + [f"PSNR(Y) {s} step{'s' * (s > 1)}" for s in cfg.steps] + \
           [f"SSIM(Y) {served}", f"Δ vs recipe @{served}", "train min"]
    lines = [START, "", f"## Quality-recipe ablation (`srnas ablate{' --quick' if cfg.quick else ''}`)", "",
             f"Each row trains the shipped default's searched architecture from scratch with one factor of "
             f"`{cfg.recipe}` changed (budget: {budget}), then samples with DDIM on {ref['crops']} validation "
             f"crops. PSNR/SSIM on the Y channel, dB.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| bicubic | | " + " | ".join(f"{bic['psnr_y']:.2f}" for _ in cfg.steps) +
                 f" | {bic['ssim_y']:.4f} | {bic['psnr_y'] - ref['psnr_y'][served]:+.2f} | |")
    for r in rows:
        cells = [f"**{r['variant']}**" if r["variant"] == "recipe" else r["variant"], _change_text(r["change"])]
        cells += [f"{r['psnr_y'][str(s)]:.2f}" for s in cfg.steps]
        cells += [f"{r['ssim_y'][served]:.4f}", f"{r['psnr_y'][served] - ref['psnr_y'][served]:+.2f}",
                  f"{r['train_minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def with_variants(cfg: AblationConfig, names: list[str] | None) -> AblationConfig:
    """Only the named variants (the recipe always stays: it is the reference)."""
    if not names:
        return cfg
    unknown = [n for n in names if n not in cfg.variants]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}; the config has {', '.join(cfg.variants)}")
    return replace(cfg, variants={n: v for n, v in cfg.variants.items() if n == "recipe" or n in names})
