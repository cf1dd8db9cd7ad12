"""The pipeline's report: the comparison table, quality per step count and sampler, plots, and the default
model picked by a stated rule; written into a marked section of BENCHMARKS.md (or the quick run's report.md)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from srnas.compare import markdown as compare_table
from srnas.pipeline import END, ROOT, START, PipelineConfig, models

# The rule that picks the shipped default among the searched subnets.
TOLERANCE_DB = 0.2  # "as good as the base"
MIN_GAIN_DB = 1.0  # over bicubic, with SSIM above bicubic too
RULE = (f"among searched subnets that beat bicubic by >= {MIN_GAIN_DB} dB PSNR(Y) with higher SSIM(Y): the fastest "
        f"within {TOLERANCE_DB} dB of the base; if none is, the one with the best PSNR(Y)")


def choose_default(rows: list[dict[str, Any]], subnets: list[str]) -> dict[str, Any] | None:
    base = next(r for r in rows if r["model"] == "base")
    ok = [r for r in rows if r["model"] in subnets and r["psnr_y"] >= r["bicubic_psnr_y"] + MIN_GAIN_DB
          and r["ssim_y"] > r["bicubic_ssim_y"]]
    if not ok:
        return None
    close = [r for r in ok if r["psnr_y"] >= base["psnr_y"] - TOLERANCE_DB]
    pick = min(close, key=lambda r: r["latency_s"]) if close else max(ok, key=lambda r: r["psnr_y"])
    return {"model": pick["model"], "path": pick["path"], "served": pick["served"], "psnr_y": pick["psnr_y"],
            "latency_s": pick["latency_s"], "within_tolerance_of_base": bool(close), "rule": RULE}


def quality_table(evals: dict[str, dict[str, Any]], cfg: PipelineConfig) -> list[str]:
    head = [f"{s} {k}" for s in cfg.samplers for k in cfg.steps]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    first = next(iter(evals.values()))
    bic = first["bicubic"]
    lines.append("| bicubic | " + " | ".join([f"{bic['psnr_y']:.3f} / {bic['ssim_y']:.4f}"] * len(head)) + " |")
    for name, rep in evals.items():
        cell = {(r["sampler"], r["steps"]): r for r in rep["results"]}
        lines.append(f"| {name} | " + " | ".join(
            f"{cell[s, k]['psnr_y']:.3f} / {cell[s, k]['ssim_y']:.4f}" if (s, k) in cell else "–"
            for s in cfg.samplers for k in cfg.steps) + " |")
    return lines


def plots(rows: list[dict[str, Any]], evals: dict[str, dict[str, Any]], cfg: PipelineConfig, out: Path) -> list[Path]:
    from search.figures import plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, rep) in enumerate(evals.items()):
        for s, style in zip(cfg.samplers, ("-", "--")):
            pts = sorted((r["steps"], r["psnr_y"]) for r in rep["results"] if r["sampler"] == s)
            ax.plot(*zip(*pts), style, marker="o", color=plt.get_cmap("tab10")(i), label=f"{name} {s}")
    ax.axhline(next(iter(evals.values()))["bicubic"]["psnr_y"], color="grey", lw=0.8, label="bicubic")
    ax.set(xscale="log", xlabel="denoising steps", ylabel="PSNR(Y) dB", title="quality per step count")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    steps_png = out / "psnr_steps.png"
    fig.savefig(steps_png, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["latency_s"] * 1e3, r["psnr_y"])
        ax.annotate(r["model"], (r["latency_s"] * 1e3, r["psnr_y"]), fontsize=7)
    ax.axhline(rows[0]["bicubic_psnr_y"], color="grey", lw=0.8)
    ax.set(xlabel="ONNX Runtime ms per step (batch 1)", ylabel="PSNR(Y) dB at the served setting",
           title="quality against measured latency")
    fig.tight_layout()
    pareto_png = out / "psnr_latency.png"
    fig.savefig(pareto_png, dpi=100)
    plt.close(fig)
    return [steps_png, pareto_png]


def write_report(cfg: PipelineConfig) -> Path:
    out = Path(cfg.out)
    rows = json.loads((out / "compare" / "compare.json").read_text())
    evals = {name: json.loads((out / f"eval-{name}" / "metrics.json").read_text()) for name in models(cfg)}
    default = choose_default(rows, cfg.relaxations)
    (out / "default.json").write_text(json.dumps(default, indent=2) + "\n")
    report = cfg.report_path()
    figures = plots(rows, evals, cfg, out)
    if report.parent.resolve() != out.resolve():  # keep BENCHMARKS.md's figures beside the other results
        fig_dir = ROOT / "bench" / "results" / f"pipeline-{cfg.preset}"
        fig_dir.mkdir(parents=True, exist_ok=True)
        figures = [Path(shutil.copy(f, fig_dir / f.name)) for f in figures]
        for r in cfg.relaxations:
            for f in ("search.png", "alpha.png"):
                if (out / f"search-{r}" / f).exists():
                    figures.append(Path(shutil.copy(out / f"search-{r}" / f, fig_dir / f"{r}-{f}")))
    rel = [Path(os.path.relpath(f, report.parent)).as_posix() for f in figures]
    pick = (f"**Default by rule** ({RULE}): **{default['model']}**, served {default['served']}, "
            f"{default['psnr_y']:.3f} dB, {default['latency_s'] * 1e3:.2f} ms/step"
            if default else f"**Default by rule** ({RULE}): no subnet qualifies; keep the base.")
    lines = [START, "", f"## Pipeline `srnas pipeline --preset {cfg.preset}{' --quick' if cfg.quick else ''}`", "",
             f"Run folder `{cfg.out}`. Every model at its own served setting (chosen by `--choose-defaults`); "
             "latency = ONNX Runtime, batch 1, per step.", "", compare_table(rows).rstrip("\n"), "",
             "PSNR(Y) / SSIM(Y) per sampler and step count:", "", *quality_table(evals, cfg), "", pick, "",
             *[f"![{Path(r).stem}]({r})" for r in rel], "", END]
    section = "\n".join(lines) + "\n"
    from bench.report import write_section

    write_section(report, section, START, END)
    return report
