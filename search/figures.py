"""Figures a person would rather look at than read: comparison and denoising-trajectory grids."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.checkpoint import ModelBundle  # noqa: E402
from models.imaging import to_uint8  # noqa: E402
from models.sampler import SamplerConfig, sample  # noqa: E402
from models.eager import torch_denoiser  # noqa: E402
from search.metrics import psnr_y  # noqa: E402


def comparison_grid(crops: list, sr: np.ndarray, path: Path, title: str, max_rows: int = 6) -> None:
    """Rows of LR | bicubic | SR | HR, with PSNR(Y) in the titles."""
    rows = min(max_rows, len(crops))
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    for r in range(rows):
        name, lr, bic, hr = crops[r]
        hr8 = to_uint8(hr)
        panels = [("LR", to_uint8(lr)), ("bicubic", to_uint8(bic)), (f"SR ({title})", to_uint8(sr[r])), ("HR", hr8)]
        for c, (label, img) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, interpolation="nearest")
            if label.startswith(("bicubic", "SR")):
                label += f"\n{psnr_y(img, hr8):.2f} dB"
            ax.set_title(label if r == 0 or c in (1, 2) else "", fontsize=8)
            ax.axis("off")
        axes[r][0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trajectory_grid(bundle: ModelBundle, bic: np.ndarray, cfg: SamplerConfig, seeds: list[int], path: Path,
                    columns: int = 8) -> None:
    """For each crop, y_t along the sampling path (top) and the predicted image at that step (bottom)."""
    frames: list[tuple[int, np.ndarray, np.ndarray]] = []

    def keep(k: int, y: np.ndarray, pred: np.ndarray) -> None:
        frames.append((k, y.copy(), pred.copy()))

    sample(torch_denoiser(bundle.net), bundle.diffusion, bic, cfg, seeds, on_step=keep)
    idx = np.unique(np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int))
    n = bic.shape[0]
    fig, axes = plt.subplots(2 * n, len(idx), figsize=(max(1.6 * len(idx), 6.0), 3.3 * n), squeeze=False)
    for i in range(n):
        for c, j in enumerate(idx):
            k, y, pred = frames[j]
            shown = y[i] if bundle.diffusion.cfg.target == "image" else np.clip(y[i] / max(np.abs(y[i]).max(), 1e-6), -1, 1)
            axes[2 * i][c].imshow(to_uint8(shown))
            axes[2 * i + 1][c].imshow(to_uint8(pred[i]))
            axes[2 * i][c].set_title(f"step {k + 1}/{cfg.steps}", fontsize=7)
            for a in (axes[2 * i][c], axes[2 * i + 1][c]):
                a.axis("off")
    fig.suptitle(f"{cfg.sampler}, {cfg.steps} steps: y_t (above), predicted image (below)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def search_plots(run_dir: Path) -> list[Path]:
    """alpha.png (each slot's candidate weights over time) and search.png (losses, costs, temperature)."""
    run_dir = Path(run_dir)
    rows = _read_csv(run_dir / "search_log.csv")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for key, label in (("loss", "weight loss"), ("alpha_task_loss", "alpha task loss"), ("alpha_loss", "alpha loss")):
        axes[0][0].plot(*_series(rows, key), label=label, lw=0.8)
    axes[0][0].set_title("losses")
    axes[0][0].legend(fontsize=7)
    for key, label in (("expected_gflops", "expected (relaxed)"), ("argmax_gflops", "argmax subnet")):
        axes[0][1].plot(*_series(rows, key), label=label)
    axes[0][1].set_title("GFLOP per step")
    axes[0][1].legend(fontsize=7)
    axes[1][0].plot(*_series(rows, "expected_latency_ms"), label="expected latency (ms)")
    axes[1][0].plot(*_series(rows, "argmax_latency_ms"), label="argmax subnet latency (ms)")
    axes[1][0].plot(*_series(rows, "mean_entropy"), label="mean alpha entropy (0..1)")
    axes[1][0].plot(*_series(rows, "skip_share"), label="share of second units = skip")
    axes[1][0].set_title("latency cost and decisiveness")
    axes[1][0].legend(fontsize=7)
    axes[1][1].plot(*_series(rows, "temperature"))
    axes[1][1].set_yscale("log")
    axes[1][1].set_title("temperature")
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.tight_layout()
    out1 = run_dir / "search.png"
    fig.savefig(out1, dpi=100)
    plt.close(fig)
    return [out1, _alpha_plot(run_dir)]


def _alpha_plot(run_dir: Path) -> Path:
    alpha_rows = _read_csv(run_dir / "alpha_log.csv")
    slots: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for r in alpha_rows:
        xs, ys = slots.setdefault(r["slot"], {}).setdefault(r["candidate"], ([], []))
        xs.append(int(r["step"]))
        ys.append(float(r["weight"]))
    n = len(slots)
    cols = min(6, n)
    rws = (n + cols - 1) // cols
    names = sorted({c for cands in slots.values() for c in cands})
    colour = {c: plt.get_cmap("tab20")(i % 20) for i, c in enumerate(names)}  # one colour per candidate
    fig, axes = plt.subplots(rws, cols, figsize=(2.6 * cols, 2.0 * rws), squeeze=False, sharey=True)
    for ax, (slot, cands) in zip(axes.flat, slots.items()):
        for name, (xs, ys) in cands.items():
            ax.plot(xs, ys, label=name, lw=0.9, color=colour[name])
        ax.set_title(slot, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6), fontsize=7)
    # fixed margins in inches: tight_layout measured every one of the ~50 axes and took 15 s of a short search
    height = 2.0 * rws
    fig.suptitle("softmax(alpha) per slot", fontsize=9, y=1 - 0.1 / height, va="top")
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.85 / height, top=1 - 0.6 / height, wspace=0.15,
                        hspace=0.55)
    out = run_dir / "alpha.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def val_curve_plot(runs: dict[str, Path | tuple[Path, int]], path: Path) -> Path:
    """Each training run's validation gain over bicubic (val_log.csv) and its training loss (train_log.csv,
    a running mean) against the step: whether the curve has flattened is a question for the eye. A run given as
    (folder, offset) is a later stage whose steps continue from `offset`."""
    fig, (gain, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run in runs.items():
        run_dir, offset = run if isinstance(run, tuple) else (run, 0)  # a later stage continues at `offset`
        steps, values = _series(_read_csv(Path(run_dir) / "val_log.csv"), "gain_db")
        gain.plot([s + offset for s in steps], values, marker="o", ms=3, label=label)
        steps, values = _series(_read_csv(Path(run_dir) / "train_log.csv"), "loss")
        steps = [s + offset for s in steps]
        w = max(1, min(100, len(values) // 5))
        if values:
            loss.plot(steps[w - 1:], np.convolve(values, np.ones(w) / w, mode="valid"), lw=0.8, label=label)
    gain.set_title("val: PSNR(Y) gain over bicubic, DDIM 1 step (EMA weights)")
    gain.set_ylabel("dB")
    loss.set_title("training loss (running mean of up to 100 steps)")
    for ax in (gain, loss):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
