"""Training of the classic baseline (FSRCNN) by direct L1 regression, through the same Trainer machinery (data,
EMA, learning-rate schedule, checkpoints, resume) as the diffusion models, so that budgets compare one to one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from models.classic import FSRCNN, FSRCNNConfig, save_classic
from search.train import TrainConfig, Trainer


@dataclass
class ClassicConfig(TrainConfig):
    fsrcnn: dict = field(default_factory=dict)  # FSRCNNConfig fields (d, s, m)


class ClassicTrainer(Trainer):
    """One forward pass from LR (plus its bicubic upsample) to HR; L1 against the HR crop."""

    def __init__(self, cfg: ClassicConfig, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        self.cfg: ClassicConfig = cfg

    def build_net(self) -> tuple[FSRCNN, str]:  # type: ignore[override]
        return FSRCNN(FSRCNNConfig(**self.cfg.fsrcnn)), "fsrcnn"

    def weight_loss(self) -> torch.Tensor:
        lr_img, bic, hr = (torch.from_numpy(a).to(self.device) for a in self.data.batch(self.cfg.batch))
        return F.l1_loss(self.model(lr_img, bic), hr)

    def export_model(self, out_dir: str | Path | None = None) -> Path:
        return save_classic(self.ema.module, out_dir or self.run_dir / "model",
                            meta={"train": self.cfg.to_dict(), "train_steps": self.step})
