"""The Pareto study's report: group statistics, the verdicts against the goals, the plot, and the markdown
section (BENCHMARKS.md between markers, or the quick run's report.md).

Selection uses val only (which relaxation is best at a target, which random architecture random search would
keep); every reported figure is on test.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

START, END = "<!-- srnas pareto: start -->", "<!-- srnas pareto: end -->"
MATCH = 0.10  # matched latency: within +-10 % of the searched group's mean measured time
MARGIN_DB = 0.2
MIN_SEEDS = 3  # the goal is a mean over 3 seeds: a group with fewer wins no verdict, however large its margin
BASELINES = ("floor", "random", "narrowed")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def groups(points: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """(target, kind, relax) -> seeds' statistics; random architectures are one group per target."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for p in points:
        out.setdefault((p["target"], p["kind"], p["relax"]), []).append(p)
    stats = {}
    for key, rows in sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        test_m, test_s = _mean_std([r["psnr_test"] for r in rows])
        gaps = [r["gap_db"] for r in rows if r.get("gap_db") is not None]
        diff = [r["slots_differing_from_floor"] for r in rows if r.get("slots_differing_from_floor") is not None]
        stats[key] = {"n": len(rows), "test": test_m, "test_std": test_s,
                      "val": statistics.fmean(r["psnr_val"] for r in rows),
                      "ssim": statistics.fmean(r["ssim_test"] for r in rows),
                      "ms": statistics.fmean(r["measured_ms"] for r in rows),
                      "gap": statistics.fmean(gaps) if gaps else None,
                      "max_gap": max(gaps) if gaps else None,
                      "differing": statistics.fmean(diff) if diff else None,
                      "bicubic": statistics.fmean(r["bicubic_psnr_test"] for r in rows), "rows": rows}
    return stats


def _baseline_candidates(stats: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each baseline as a user would have it: floor and narrowed as seed means; random search as the one random
    architecture with the best val PSNR at its target (its test figure reported)."""
    out = []
    for (t, kind, _), g in stats.items():
        if kind in ("floor", "narrowed", "classic"):
            out.append({"kind": kind, "target": t, "test": g["test"], "test_std": g["test_std"], "ms": g["ms"],
                        "label": f"{kind} @{t:g}x"})
        elif kind == "random":
            best = max(g["rows"], key=lambda r: r["psnr_val"])
            out.append({"kind": kind, "target": t, "test": best["psnr_test"], "test_std": 0.0,
                        "ms": best["measured_ms"], "label": f"random (best of {g['n']} on val) @{t:g}x"})
    return out


def _complete(searched: dict[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """The searched groups that may be selected: those with all MIN_SEEDS seeds finished, so that one lucky seed
    of an unfinished group does not outrank a three-seed mean on val. While no group is complete (a partial or
    --quick study), all of them."""
    return {k: g for k, g in searched.items() if g["n"] >= MIN_SEEDS} or searched


def verdicts(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target: the relaxation best on val, its test mean +- std, the best baseline of floor / random /
    narrowed and the classic network within +-10 % of its measured time, and whether each goal holds."""
    stats = groups(points)
    cands = _baseline_candidates(stats)
    out = []
    for t in sorted({k[0] for k in stats if k[1] == "searched"}):
        searched = _complete({k[2]: g for k, g in stats.items() if k[0] == t and k[1] == "searched"})
        relax, g = max(searched.items(), key=lambda kv: kv[1]["val"])
        near = [c for c in cands if abs(c["ms"] / g["ms"] - 1) <= MATCH]
        base = max((c for c in near if c["kind"] in BASELINES), key=lambda c: c["test"], default=None)
        classic = max((c for c in near if c["kind"] == "classic"), key=lambda c: c["test"], default=None)
        margin = g["test"] - base["test"] if base else None
        out.append({"target": t, "relax": relax, "n": g["n"], "test": g["test"], "test_std": g["test_std"],
                    "ms": g["ms"], "gap": g["gap"], "max_gap": g["max_gap"], "differing": g["differing"],
                    "baseline": base, "margin": margin,
                    "beats_baselines": bool(margin is not None and g["n"] >= MIN_SEEDS and margin >= MARGIN_DB
                                           and margin > 2 * g["test_std"]),
                    "classic": classic,
                    "matches_classic": bool(classic is not None and max(
                        r["psnr_test"] for r in g["rows"]) >= classic["test"])})
    return out


def classic_verdicts(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size of the classic network: the searched network a user would take at its latency (the best on val of
    every searched point within +-10 % of the classic's mean time) and whether it matches or beats the classic's
    test mean, so that at no latency is there a reason to pick the classic network instead."""
    searched = [p for p in points if p["kind"] == "searched"]
    out = []
    for (t, kind, _), g in groups(points).items():
        if kind != "classic":
            continue
        near = [p for p in searched if abs(p["measured_ms"] / g["ms"] - 1) <= MATCH]
        best = max(near, key=lambda p: p["psnr_val"], default=None)
        out.append({"target": t, "n": g["n"], "test": g["test"], "ms": g["ms"], "searched": best,
                    "holds": best is not None and best["psnr_test"] >= g["test"]})
    return out


def classic_lines(points: list[dict[str, Any]]) -> list[str]:
    rows = classic_verdicts(points)
    if not rows:
        return []
    lines = ["", "Against the classic network, per size (the searched network best on val within ±10 % of the "
                 "classic's time; the goal: its test PSNR(Y) at least the classic's mean):", "",
             "| classic of target | n | classic test @ ms | searched, best on val ±10 % | its test @ ms | "
             "searched ≥ classic |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["searched"]
        found = f"`{s['name']}` | {s['psnr_test']:.3f} @ {s['measured_ms']:.2f}" if s else "none within ±10 % | –"
        lines.append(f"| {r['target']:g}× | {r['n']} | {r['test']:.3f} @ {r['ms']:.2f} | {found} | "
                     f"{'yes' if r['holds'] else ('no' if s else '–')} |")
    held = sum(r["holds"] for r in rows)
    return lines + ["", f"The searched network chosen on val matches or beats the classic one at {held} of {len(rows)} sizes."]


def budget_lines(state: dict[str, Any]) -> list[str]:
    """The budget checks (`srnas pareto --budget-check`): the classic network and the searched network chosen at its
    size, both trained from fresh weights for a longer budget, beside their figures at the study's budget."""
    checks = state.get("budget_checks") or {}
    if not checks:
        return []
    lines = ["", "Longer training at a classic size (`srnas pareto --budget-check SIZE`: the searched network chosen "
                 "there and the classic one, both from fresh weights, every baseline seed; times as measured in the "
                 "study):", "",
             "| classic of target | iterations | searched network | searched test (n) | classic test (n) | "
             "searched val | classic val | margin dB | searched ≥ classic |", "|---|---|---|---|---|---|---|---|---|"]
    for c in checks.values():
        study = [p for p in state["points"] if p["kind"] == "classic" and p["target"] == c["size"]]
        pick = [p for p in state["points"] if p["name"] == c["searched_point"]]
        label = f"`{c['searched_point']}` @ {c['searched_ms']:.2f} ms (classic {c['classic_ms']:.2f} ms)"
        lines.append(_budget_row(c["size"], f"{c['study_budget']} (the study's)", label, pick, study))
        rows = c["rows"]
        lines.append(_budget_row(c["size"], str(c["iters"]), "the same architecture, fresh weights",
                                 [r for r in rows if r["kind"] == "searched"], [r for r in rows if r["kind"] == "classic"]))
    return lines


def _budget_row(size: float, iters: str, label: str, searched: list[dict[str, Any]],
                classic: list[dict[str, Any]]) -> str:
    def cell(rows: list[dict[str, Any]], key: str, std: bool = True) -> str:
        if not rows:
            return "–"
        m, s = _mean_std([r[key] for r in rows])
        return f"{m:.3f} ± {s:.3f} ({len(rows)})" if std else f"{m:.3f}"

    margin = (_mean_std([r["psnr_test"] for r in searched])[0] - _mean_std([r["psnr_test"] for r in classic])[0]
              if searched and classic else None)
    holds = "–" if margin is None else ("yes" if margin >= 0 else "no")
    return (f"| {size:g}× | {iters} | {label} | {cell(searched, 'psnr_test')} | {cell(classic, 'psnr_test')} | "
            f"{cell(searched, 'psnr_val', False)} | {cell(classic, 'psnr_val', False)} | {_fmt(margin)} | {holds} |")


PICK_TOLERANCE_DB = 0.1
PICK_RULE = (f"among the searched groups (relaxation and target) with all {MIN_SEEDS} seeds finished, the fastest "
             f"whose mean val PSNR(Y) is within {PICK_TOLERANCE_DB} dB of the best one's; its best seed on val ships")


def pick_default(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The study's pick for the shipped default, by val figures only (see PICK_RULE)."""
    searched = _complete({k: g for k, g in groups(points).items() if k[1] == "searched"})
    if not searched:
        return None
    best = max(g["val"] for g in searched.values())
    (t, _, relax), g = min(((k, g) for k, g in searched.items() if g["val"] >= best - PICK_TOLERANCE_DB),
                           key=lambda kg: kg[1]["ms"])
    seed = max(g["rows"], key=lambda r: r["psnr_val"])
    return {"target": t, "relax": relax, "name": seed["name"], "model": seed.get("model"), "val": g["val"],
            "test": seed["psnr_test"], "ms": seed["measured_ms"], "arch_id": seed.get("arch_id"),
            "rule": PICK_RULE}


def diagnostics(points: list[dict[str, Any]]) -> list[str]:
    """The searched runs' collapse diagnostics, seed means: how decided the argmax was, skip share, the
    supernet and inherited subnet on val, and the gap between them."""
    lines = ["| target | relax | n | mean entropy | min top-1/top-2 margin | skip share | supernet val | "
             "inherited val | gap dB |", "|---|---|---|---|---|---|---|---|---|"]
    for (t, kind, relax), g in groups(points).items():
        if kind != "searched":
            continue
        rows = g["rows"]

        def mean(key: str) -> float | None:
            xs = [r[key] for r in rows if r.get(key) is not None]
            return statistics.fmean(xs) if xs else None
        lines.append(f"| {t:g}× | {relax} | {g['n']} | {_fmt(mean('mean_entropy'), '.2f')} | "
                     f"{_fmt(mean('min_margin'), '.2f')} | {_fmt(mean('skip_share'), '.0%')} | "
                     f"{_fmt(mean('supernet_psnr_val'))} | {_fmt(mean('inherited_psnr_val'))} | {_fmt(g['gap'], '.2f')} |")
    return lines


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def _overrides(changes: dict[str, Any] | None) -> str:
    """The study's changes to a recipe, as the report names them ("" when none)."""
    shown = {k: v for k, v in (changes or {}).items() if k != "checkpoint_every"}
    return " with " + ", ".join(f"{k} {v}" for k, v in shown.items()) if shown else ""


def worker_hours(points: list[dict[str, Any]]) -> float:
    """The finished points' wall-clock, summed over the worker processes that ran them."""
    return sum(p.get("wall_seconds", 0.0) for p in points) / 3600


def markdown(state: dict[str, Any], plot: str | None, planned: int | None = None,
             rows: str = "bench/results/pareto/pareto.json") -> str:
    points = state["points"]
    stats = groups(points)
    cfg, floor = state["config"], state["floor"]
    lines = [START, "## Does the search search? The Pareto study", "",
             f"`srnas pareto` on **{state['host']}** (serving backend: ONNX Runtime, {cfg['threads']} thread(s) per "
             f"worker, batch 1). Table: `{cfg['lut']}`. Floor (the table's fastest architecture): "
             f"{floor['measured_ms']:.2f} ms/step measured, {floor['predicted_ms']:.2f} ms predicted. Every point "
             f"trains {cfg['budget']} weight iterations (`{cfg['train_recipe']}`{_overrides(cfg.get('train'))}; "
             "a search step counts at its pixels' ratio to a training step). Scored with DDIM at 1 step (the served "
             "setting), PSNR(Y)/SSIM(Y) "
             f"on {points[0]['test_crops'] if points else 0} test crops (bicubic: "
             f"{points[0]['bicubic_psnr_test'] if points else float('nan'):.3f} dB); selection on val only.", "",
             "Split by image (scikit-image's wheel): " + "; ".join(
                 f"{k}: {', '.join(v)}" for k, v in state["split"].items()) + ".", ""]
    if plot:
        lines += [f"![Pareto plot]({plot})", ""]
    lines += ["| target | kind | relax | n | ms/step | test PSNR(Y) | ± std | val PSNR(Y) | test SSIM | gap dB | "
              "slots ≠ floor |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (t, kind, relax), g in stats.items():
        lines.append(f"| {t:g}× | {kind} | {relax or '–'} | {g['n']} | {g['ms']:.2f} | {g['test']:.3f} | "
                     f"{g['test_std']:.3f} | {g['val']:.3f} | {g['ssim']:.4f} | {_fmt(g['gap'], '.2f')} | "
                     f"{_fmt(g['differing'], '.0%')} |")
    lines += ["", "| target | best relaxation (val; complete groups) | searched test | best baseline ±10 % | margin dB | "
              "≥ 0.2 dB and > 2σ | classic ±10 % | best searched ≥ classic | max gap dB | slots ≠ floor |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts(points):
        b, c = v["baseline"], v["classic"]
        base = f"{b['label']}: {b['test']:.3f} @ {b['ms']:.2f} ms" if b else "none within ±10 %"
        classic = f"{c['label']}: {c['test']:.3f} @ {c['ms']:.2f} ms" if c else "none within ±10 %"
        lines.append(f"| {v['target']:g}× | {v['relax']} (n={v['n']}) | {v['test']:.3f} ± {v['test_std']:.3f} "
                     f"@ {v['ms']:.2f} ms | {base} | "
                     f"{_fmt(v['margin'])} | {'yes' if v['beats_baselines'] else 'no'} | {classic} | "
                     f"{'yes' if v['matches_classic'] else ('no' if c else '–')} | {_fmt(v['max_gap'], '.2f')} | "
                     f"{_fmt(v['differing'], '.0%')} |")
    lines += classic_lines(points)
    lines += budget_lines(state)
    lines += ["", "Searched runs before the argmax (collapse diagnostics, seed means):", "", *diagnostics(points)]
    pick = pick_default(points)
    if pick:
        lines += ["", f"**Pick for the shipped default** ({pick['rule']}): `{pick['name']}` — {pick['relax']} at "
                      f"{pick['target']:g}×, val {pick['val']:.3f} dB (group mean), test {pick['test']:.3f} dB, "
                      f"{pick['ms']:.2f} ms/step."]
    lines += placed_lines(state.get("placed", []), pick)
    progress = (f" of {planned} planned: **the study is still running**, and no verdict above is final"
                if planned and len(points) < planned else "")
    own = [p for p in points if "try" not in p]
    tried = (f", and the tries' {len(points) - len(own)} points {worker_hours(points) - worker_hours(own):.1f} h"
             if len(own) < len(points) else "")
    lines += ["", f"{len(points)} points{progress}; the study's own {len(own)} points took {worker_hours(own):.1f} h "
              f"of worker time{tried} (the points' wall-clock summed over the worker processes that ran them side by "
              f"side); raw rows in `{rows}`.", END]
    return "\n".join(lines) + "\n"


def placed_lines(placed: list[dict[str, Any]], pick: dict[str, Any] | None) -> list[str]:
    """Models outside the study (the shipped default, trained past the study's budget) on the study's axes."""
    if not placed:
        return []
    lines = ["", "Placed on the same axes (`srnas pareto --place NAME=DIR`: the same crops, timed against the same "
                 "floor; these models are not held to the study's training budget):", "",
             "| name | folder | ms/step | test PSNR(Y) | val PSNR(Y) | test SSIM | same architecture as the pick |",
             "|---|---|---|---|---|---|---|"]
    pick_id = pick.get("arch_id") if pick else None
    for r in placed:
        same = "–" if pick_id is None or r.get("arch_id") is None else ("yes" if r["arch_id"] == pick_id else "no")
        lines.append(f"| {r['name']} | `{r['model']}` | {r['measured_ms']:.2f} | {r['psnr_test']:.3f} | "
                     f"{r['psnr_val']:.3f} | {r['ssim_test']:.4f} | {same} |")
    return lines


def write_section(path: Path, text: str) -> None:
    """Replace the marked section (or append it)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + text.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")


BASELINE_COLOUR = "0.35"
# the relaxations and the first studies' tries keep their colours from plot to plot; later tries take the spares
FIXED_COLOURS = {"softmax": "tab:blue", "gumbel-hard": "tab:red", "temperature": "tab:green", "gumbel": "tab:purple",
                 "softmax+balanced": "tab:cyan", "gumbel-hard+balanced": "tab:orange",
                 "softmax+balanced-absolute": "tab:brown"}
SPARE_COLOURS = ("tab:pink", "tab:olive", "gold", "black", "magenta", "lime", "navy", "teal")


def group_colours(labels: list[str | None]) -> dict[str | None, str]:
    """A colour per searched group (relaxation, or relaxation+try), in order of first appearance; baselines
    (no relaxation) are grey. Beyond the spares, colours repeat."""
    colours: dict[str | None, str] = {None: BASELINE_COLOUR}
    spare = 0
    for label in labels:
        if label in colours:
            continue
        if label in FIXED_COLOURS:
            colours[label] = FIXED_COLOURS[label]
        else:
            colours[label] = SPARE_COLOURS[spare % len(SPARE_COLOURS)]
            spare += 1
    return colours


def plot(state: dict[str, Any], path: Path) -> Path | None:
    """Test PSNR(Y) against measured ms per step: every point (seeds as separate marks), groups' means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = state["points"]
    if not points:
        return None
    styles = {"searched": "o", "random": "x", "narrowed": "s", "floor": "*", "classic": "^", "base": "D"}
    colors = group_colours([p["relax"] for p in points])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    seen = set()
    for p in points:
        label = p["kind"] + (f" ({p['relax']})" if p["relax"] else "")
        ax.scatter(p["measured_ms"], p["psnr_test"], marker=styles.get(p["kind"], "o"),
                   color=colors.get(p["relax"], BASELINE_COLOUR), alpha=0.75, s=36,
                   label=None if label in seen else label)
        seen.add(label)
    pick = pick_default(points)
    if pick:
        ax.scatter(pick["ms"], pick["test"], s=260, facecolors="none", edgecolors="black", lw=1.4,
                   label="pick for the default (val rule)")
    for i, r in enumerate(state.get("placed", [])):
        ax.scatter(r["measured_ms"], r["psnr_test"], marker="P", s=90, color="black", zorder=5,
                   label=None if i else "placed models (not held to the budget)")
        ax.annotate(r["name"], (r["measured_ms"], r["psnr_test"]), xytext=(6, 4), textcoords="offset points",
                    fontsize=8)
    ax.axhline(points[0]["bicubic_psnr_test"], color="0.6", ls="--", lw=0.8, label="bicubic")
    for t, ms in state["targets"].items():
        ax.axvline(ms, color="0.85", lw=0.8, zorder=0)
        ax.text(ms, ax.get_ylim()[0], f" {t}×", color="0.5", fontsize=8, va="bottom")
    ax.set_xlabel(f"measured ms per step (ONNX Runtime, {state['config']['threads']} thread, {state['host']})")
    ax.set_ylabel("test PSNR(Y), dB (DDIM 1 step)")
    ax.set_title("Searched subnets against baselines at matched latency (each mark: one seed)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
