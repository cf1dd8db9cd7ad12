"""Evaluation: PSNR/SSIM(Y) against HR beside bicubic, per sampler and step count, plus figures."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.checkpoint import ModelBundle
from models.imaging import to_uint8
from models.sampler import Denoiser, SamplerConfig, sample
from models.eager import torch_denoiser
from models.upscaler import tile_seeds
from search.data import scored_crops
from search.metrics import consistency, hf_ratio, psnr_y, ssim_y


@dataclass
class EvalConfig:
    data: str = "builtin"
    lr_dir: str | None = None
    steps: list[int] = field(default_factory=lambda: [10, 20, 50])
    samplers: list[str] = field(default_factory=lambda: ["ddim", "ddpm"])
    crops_per_image: int = 8
    batch: int = 16
    seed: int = 0
    eta: float = 0.0
    trajectory_steps: int = 20  # the trajectory figure follows a longer path than the best setting's
    split: str = "val"  # selection uses val; reported figures use test
    lr_jpeg: int = 0  # > 0: each LR image is JPEG-compressed at this quality first (how real photos arrive)


def per_crop(images: np.ndarray, hrs: list[np.ndarray], lrs: np.ndarray | None = None) -> dict[str, list[float]]:
    """Each crop's PSNR(Y), SSIM(Y), high-frequency ratio and (given the LR inputs) consistency."""
    sr = [to_uint8(x) for x in images]
    out = {"psnr_y": [psnr_y(a, b) for a, b in zip(sr, hrs)], "ssim_y": [ssim_y(a, b) for a, b in zip(sr, hrs)],
           "hf_ratio": [hf_ratio(a, b) for a, b in zip(sr, hrs)]}
    if lrs is not None:
        out["consistency"] = [consistency(x, lr) for x, lr in zip(images, lrs)]
    return out


def scores(images: np.ndarray, hrs: list[np.ndarray], lrs: np.ndarray | None = None) -> dict[str, float]:
    """Mean and std over crops of float CHW images in [-1, 1] against uint8 HR crops (`per_crop`'s metrics)."""
    out: dict[str, float] = {}
    for name, values in per_crop(images, hrs, lrs).items():
        out[name], out[f"{name}_std"] = float(np.mean(values)), float(np.std(values))
    return out


def val_curve_row(net, diffusion, lr: np.ndarray, bic: np.ndarray, hrs: list[np.ndarray]) -> dict[str, float]:
    """One point of a training run's validation curve: DDIM 1 step (the served setting) on fixed crops."""
    import torch

    with torch.no_grad():
        sr = sample(torch_denoiser(net.eval()), diffusion, bic, SamplerConfig("ddim", 1), tile_seeds(0, len(bic)))
    net.train()
    row = scores(sr, hrs, lr)
    return {"psnr_y": row["psnr_y"], "ssim_y": row["ssim_y"], "gain_db": row["psnr_y"] - scores(bic, hrs)["psnr_y"],
            "consistency": row["consistency"], "hf_ratio": row["hf_ratio"]}


def evaluate(bundle: ModelBundle, cfg: EvalConfig, out_dir: str | Path | None = None,
             progress: bool = True, denoiser: Denoiser | None = None) -> dict[str, Any]:
    """Score the model on fixed validation crops; write metrics.json and figures if out_dir is given.

    `denoiser` runs the network on another runtime (ONNX Runtime, a quantized variant); torch by default.
    """
    crops = scored_crops(cfg.data, cfg.split, cfg.lr_dir, cfg.crops_per_image, cfg.lr_jpeg)
    if not crops:
        raise ValueError(f"no {cfg.split} crop of 128x128 could be cut from the data")
    names = [c[0] for c in crops]
    lrs, bic = np.stack([c[1] for c in crops]), np.stack([c[2] for c in crops])
    hrs = [to_uint8(c[3]) for c in crops]
    seeds = tile_seeds(cfg.seed, len(crops))
    denoise = denoiser or torch_denoiser(bundle.net)
    report: dict[str, Any] = {"model": str(bundle.path), "preset": bundle.preset, "split": cfg.split, "crops": len(crops),
                              "lr_jpeg": cfg.lr_jpeg or None, "images": sorted({n.split("#")[0] for n in names}),
                              "bicubic": scores(bic, hrs, lrs), "results": []}
    best, runs = None, [(s, k) for s in cfg.samplers for k in cfg.steps]
    for sampler, steps in tqdm(runs, disable=not progress, desc="evaluate"):
        scfg = SamplerConfig(sampler, steps, cfg.eta)
        scfg.validate(bundle.diffusion.schedule.T)
        t0 = time.perf_counter()
        outs = [sample(denoise, bundle.diffusion, bic[i: i + cfg.batch], scfg, seeds[i: i + cfg.batch])
                for i in range(0, len(bic), cfg.batch)]
        sr = np.concatenate(outs)
        row = {"sampler": sampler, "steps": steps, "eta": cfg.eta, **scores(sr, hrs, lrs),
               "seconds": time.perf_counter() - t0}
        row["gain_db"] = row["psnr_y"] - report["bicubic"]["psnr_y"]
        report["results"].append(row)
        if best is None or row["psnr_y"] > best[0]["psnr_y"]:
            best = (row, sr)
    if out_dir is not None and best is not None:
        write_outputs(Path(out_dir), report, crops, best, bundle, cfg)
    return report


QUALITY_COLUMNS = "| setting | PSNR(Y) dB | gain dB | SSIM(Y) | consistency ×1e-5 | HF ratio |"


def quality_row(label: str, r: dict[str, Any], bicubic_psnr: float) -> str:
    """One markdown row: mean ± std over crops of every metric (consistency: MSE on [0, 1] RGB, in 1e-5)."""
    return (f"| {label} | {r['psnr_y']:.3f} ± {r['psnr_y_std']:.2f} | {r['psnr_y'] - bicubic_psnr:+.3f} "
            f"| {r['ssim_y']:.4f} ± {r['ssim_y_std']:.4f} "
            f"| {r['consistency'] * 1e5:.2f} ± {r['consistency_std'] * 1e5:.2f} "
            f"| {r['hf_ratio']:.3f} ± {r['hf_ratio_std']:.3f} |")


def quality_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: bicubic, then each sampler and step count."""
    bic = report["bicubic"]["psnr_y"]
    rows = [QUALITY_COLUMNS, "|---|---|---|---|---|---|", quality_row("bicubic", report["bicubic"], bic)]
    rows += [quality_row(f"{r['sampler']} {r['steps']}", r, bic) for r in report["results"]]
    return "\n".join(rows)


def choose_defaults(report: dict[str, Any], tolerance_db: float = 0.05) -> dict[str, Any]:
    """The fewest-step setting within `tolerance_db` of the best PSNR(Y) measured."""
    rows = report["results"]
    best = max(r["psnr_y"] for r in rows)
    ok = [r for r in rows if r["psnr_y"] >= best - tolerance_db]
    pick = min(ok, key=lambda r: (r["steps"], -r["psnr_y"]))
    return {"steps": pick["steps"], "sampler": pick["sampler"], "eta": pick["eta"],
            "chosen_by": f"fewest steps within {tolerance_db} dB of the best PSNR(Y) on {report['crops']} "
                         f"validation crops{_jpeg_note(report)} ({pick['psnr_y']:.3f} dB vs bicubic "
                         f"{report['bicubic']['psnr_y']:.3f} dB)"}


def _jpeg_note(report: dict[str, Any]) -> str:
    return f" with LR as JPEG quality {report['lr_jpeg']}" if report.get("lr_jpeg") else ""


def write_outputs(out: Path, report: dict[str, Any], crops: list, best: tuple, bundle: ModelBundle,
                  cfg: EvalConfig) -> None:
    from search.figures import comparison_grid, trajectory_grid

    out.mkdir(parents=True, exist_ok=True)
    row, sr = best
    steps = min(max(row["steps"], cfg.trajectory_steps), bundle.diffusion.schedule.T)
    report["trajectory"] = {"sampler": row["sampler"], "steps": steps}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    comparison_grid(crops, sr, out / "grid.png", f"{row['sampler']} {row['steps']} steps")
    n = min(4, len(crops))
    trajectory_grid(bundle, np.stack([c[2] for c in crops[:n]]), SamplerConfig(row["sampler"], steps, cfg.eta),
                    tile_seeds(cfg.seed, n), out / "trajectory.png")
