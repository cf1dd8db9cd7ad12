"""Quality of the shipped models on the test split, per sampler and step count, on clean and on JPEG LR.

    python -m bench.quality [NAME=DIR ...] [--steps 1,2,4,8] [--samplers ddim,ddpm] [--crops 8] [--jpeg 75]
                            [--threads 1] [--out FILE] [--markdown BENCHMARKS.md]

For each model (default: every shipped model folder) and each input kind (the clean x2 bicubic LR, and the same
LR saved as JPEG at `--jpeg`): PSNR(Y), SSIM(Y), SR3's consistency and the high-frequency energy ratio, mean ±
std over the test crops, against bicubic on the same inputs. Each model's per-step latency (ONNX Runtime fp32,
batch 1, `--threads`) is timed in a process of its own in the same run, so the models compare on one host at one
moment. Raw rows go to bench/results/quality-<host>.json; the section between markers in BENCHMARKS.md is rewritten.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.report import write_section
from bench.timing import TimingJob, time_in_subprocess
from export.runtime import host_id, host_slug
from models.checkpoint import load_model, write_json
from models.spec import SHIPPED_MODELS
from search.evaluate import EvalConfig, evaluate, quality_row, QUALITY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench.quality: start -->", "<!-- bench.quality: end -->"


def _models(pairs: list[str]) -> dict[str, Path]:
    if not pairs:
        return {name: path for name, path in SHIPPED_MODELS.items() if (path / "config.json").is_file()}
    out = {}
    for p in pairs:
        name, sep, path = p.partition("=")
        if not sep:
            raise SystemExit(f"bench.quality: expected NAME=DIR, got {p!r}")
        out[name] = Path(path)
    return out


def run(models: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"host": host_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "split": "test", "threads": args.threads, "jpeg": args.jpeg, "models": {}}
    for name, path in models.items():
        bundle = load_model(path)
        timing = time_in_subprocess(TimingJob(str(path), "onnxruntime-fp32", [1], args.threads, warmup=5, reps=30))
        entry: dict[str, Any] = {"path": str(path), "defaults": bundle.defaults, "seconds_per_step": timing["1"],
                                 "params": sum(p.numel() for p in bundle.net.parameters()), "inputs": {}}
        for kind, jpeg in (("clean", 0), (f"jpeg{args.jpeg}", args.jpeg)):
            cfg = EvalConfig(steps=args.steps, samplers=args.samplers, crops_per_image=args.crops, split="test",
                             lr_jpeg=jpeg)
            entry["inputs"][kind] = evaluate(bundle, cfg, progress=not args.no_progress)
        report["models"][name] = entry
    return report


def _default_row(report: dict[str, Any]) -> dict[str, Any]:
    d = report.get("defaults") or {}
    for r in report["results"]:
        if r["sampler"] == d.get("sampler") and r["steps"] == d.get("steps"):
            return r
    return report["results"][0]


def markdown(report: dict[str, Any]) -> str:
    first = next(iter(report["models"].values()))["inputs"]["clean"]
    lines = [START, "", f"### Quality per sampler and step count (`python -m bench.quality`, {report['created']})", "",
             f"Host: {report['host']}; test split ({first['crops']} crops of {', '.join(first['images'])}); mean ± std "
             "over crops. Consistency: MSE between the output taken back down by x2 bicubic and the LR input (RGB "
             "in [0, 1], ×1e-5; lower is more faithful). HF ratio: the output's spectral energy in the top octave "
             "over the original's (1 = as much fine detail as the original; bicubic is far below). Raw rows: "
             f"`bench/results/quality-{host_slug()}.json`.", ""]
    lines += ["| model | params | ms/step (ORT fp32, batch 1, "
              f"{report['threads']} thread) | served | clean: gain dB | JPEG {report['jpeg']}: gain dB |",
              "|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        gains = []
        for kind in m["inputs"]:
            rep = m["inputs"][kind] | {"defaults": m["defaults"]}
            gains.append(f"{_default_row(rep)['psnr_y'] - rep['bicubic']['psnr_y']:+.3f}")
        lines.append(f"| {name} | {m['params']:,} | {m['seconds_per_step'] * 1e3:.2f} | "
                     f"{m['defaults']['sampler']} {m['defaults']['steps']} | " + " | ".join(gains) + " |")
    for name, m in report["models"].items():
        for kind, rep in m["inputs"].items():
            what = "clean bicubic LR" if kind == "clean" else f"LR saved as JPEG quality {report['jpeg']}"
            bic = rep["bicubic"]["psnr_y"]
            lines += ["", f"**{name}** on {what}:", "", QUALITY_COLUMNS, "|---|---|---|---|---|---|",
                      quality_row("bicubic", rep["bicubic"], bic)]
            lines += [quality_row(f"{r['sampler']} {r['steps']}", r, bic) for r in rep["results"]]
    return "\n".join(lines + ["", END]) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="NAME=DIR (default: every shipped model)")
    p.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--samplers", type=lambda s: s.split(","), default=["ddim", "ddpm"])
    p.add_argument("--crops", type=int, default=8, help="test crops per image")
    p.add_argument("--jpeg", type=int, default=75, help="JPEG quality of the second input kind")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="JSON file (default bench/results/quality-<host>.json)")
    p.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="'' to leave BENCHMARKS.md alone")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    report = run(_models(args.models), args)
    out = Path(args.out or ROOT / "bench" / "results" / f"quality-{host_slug()}.json")
    write_json(out, report)
    if args.markdown:
        write_section(args.markdown, markdown(report), START, END)
    print(markdown(report))


if __name__ == "__main__":
    main()
