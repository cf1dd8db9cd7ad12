"""The generated BENCHMARKS.md section of `srnas bench` (between markers, so re-runs replace it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

START, END = "<!-- srnas bench: start -->", "<!-- srnas bench: end -->"


def _ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1e3:.2f}"


def model_table(name: str, m: dict[str, Any], peak: float) -> list[str]:
    from export.record import interpolate

    backends = list(dict.fromkeys(r["backend"] for r in m["rows"]))
    batches = sorted({r["batch"] for r in m["rows"]})
    cell = {(r["backend"], r["batch"]): r for r in m["rows"]}
    lines = [f"**{name}** (`{m['path']}`): {m['params']:,} params, {m['flops_per_step'] / 1e9:.3f} GFLOP/step, "
             f"served {m['served_sampler']} {m['served_steps']} step(s)", "",
             "| backend | " + " | ".join(f"batch {b}: ms/step · img/s · % peak" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for b in backends:
        lines.append(f"| {b} | " + " | ".join(
            f"{_ms(cell[b, n]['seconds_per_step'])} · {cell[b, n]['images_per_s']:.1f} · "
            f"{100 * cell[b, n]['fraction_of_peak']:.1f}%" for n in batches) + " |")
    pred = m.get("predicted_onnxruntime") or {}
    if pred:
        lines.append("| search-time prediction (ORT fp32) | " + " | ".join(
            _ms(interpolate(pred, n)) + ("" if str(n) in pred else " (interp.)") for n in batches) + " |")
    lines += ["", f"Per resolution level, ORT fp32 at batch {m['level_batch']} (each module timed alone):", "",
              "| level | resolution | GFLOP | ms | GFLOP/s | % of peak |", "|---|---|---|---|---|---|"]
    for lv in m["levels"]:
        lines.append(f"| {lv['level']} | {lv['resolution']}² | {lv['flops'] / 1e9:.3f} | {_ms(lv['seconds'])} | "
                     f"{lv['gflops_per_s']:.1f} | {100 * lv['gflops_per_s'] / peak:.1f}% |")
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    mc, peak = report["machine"], report["peak_fp32_matmul_gflops"]
    lines = [START, "", f"## Backends (`srnas bench`, {report['created']})", "",
             f"Machine: {mc['host']}, {report['threads']} threads, torch {mc['torch']}, ONNX Runtime "
             f"{mc['onnxruntime']}, GPU: {mc['cuda'] or 'none'}. Measured fp32 matmul peak (torch sgemm 2048², "
             f"{report['threads']} threads): **{peak:.0f} GFLOP/s**. Medians per denoising step; images/s at each "
             "model's served step count.", ""]
    for name, m in report["models"].items():
        lines += model_table(name, m, peak)
    if report["skipped"]:
        lines += ["Skipped here:", ""] + [f"- `{b}`: {why}" for b, why in report["skipped"].items()] + [""]
    return "\n".join(lines + [END]) + "\n"


def write_section(path: str | Path, section: str, start: str = START, end: str = END) -> Path:
    """Replace the section between the `start` and `end` markers in `path`, or append it."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    path.write_text(text, encoding="utf-8")
    return path
