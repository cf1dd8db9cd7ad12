"""Figures a person would rather look at than read: comparison and denoising-trajectory grids."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.checkpoint import ModelBundle  # noqa: E402
from models.imaging import to_uint8  # noqa: E402
from models.sampler import SamplerConfig, sample  # noqa: E402
from models.upscaler import torch_denoiser  # noqa: E402
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

    def keep(k: int, y: torch.Tensor, pred: torch.Tensor) -> None:
        frames.append((k, y.numpy().copy(), pred.numpy().copy()))

    sample(torch_denoiser(bundle.net), bundle.diffusion, torch.from_numpy(bic), cfg, seeds, on_step=keep)
    idx = np.unique(np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int))
    n = bic.shape[0]
    fig, axes = plt.subplots(2 * n, len(idx), figsize=(1.6 * len(idx), 3.3 * n), squeeze=False)
    for i in range(n):
        for c, j in enumerate(idx):
            k, y, pred = frames[j]
            shown = y[i] if bundle.diffusion.cfg.target == "image" else np.clip(y[i] / max(np.abs(y[i]).max(), 1e-6), -1, 1)
            axes[2 * i][c].imshow(to_uint8(shown))
            axes[2 * i + 1][c].imshow(to_uint8(pred[i]))
            axes[2 * i][c].set_title(f"step {k + 1}/{cfg.steps}", fontsize=7)
            for a in (axes[2 * i][c], axes[2 * i + 1][c]):
                a.axis("off")
    fig.suptitle(f"denoising trajectory ({cfg.sampler}): y_t above, predicted image below", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
