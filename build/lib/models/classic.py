"""A classic efficient x2 super-resolution network (FSRCNN, Dong et al. 2016): the baseline a user would pick
instead of a diffusion model. One forward pass maps the LR image to the HR image; it is trained by direct L1
regression, on the same crops as the diffusion models.

As in most modern re-implementations, the network predicts the residual over the bicubic upsample (the
same conditioning the SR3 UNet gets), which trains much faster on short budgets than the 2016 original.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import CONFIG, WEIGHTS, CheckpointError, read_json, read_tensors, write_json

KIND = "fsrcnn"


@dataclass
class FSRCNNConfig:
    """d: feature width, s: shrunk width, m: mapping layers (the paper's FSRCNN is d=56, s=12, m=4)."""

    d: int = 56
    s: int = 12
    m: int = 4
    channels: int = 3
    scale: int = 2


class FSRCNN(nn.Module):
    """Feature extraction 5x5 -> shrink 1x1 -> m mapping 3x3 -> expand 1x1 -> 9x9 transposed conv (x2)."""

    def __init__(self, cfg: FSRCNNConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, cfg.d, 5, padding=2), nn.PReLU(cfg.d),
                                   nn.Conv2d(cfg.d, cfg.s, 1), nn.PReLU(cfg.s)]
        for _ in range(cfg.m):
            layers += [nn.Conv2d(cfg.s, cfg.s, 3, padding=1), nn.PReLU(cfg.s)]
        layers += [nn.Conv2d(cfg.s, cfg.d, 1), nn.PReLU(cfg.d)]
        self.body = nn.Sequential(*layers)
        self.up = nn.ConvTranspose2d(cfg.d, cfg.channels, 9, stride=cfg.scale, padding=4,
                                     output_padding=cfg.scale - 1)
        nn.init.normal_(self.up.weight, std=1e-3)  # starts as the bicubic upsample
        nn.init.zeros_(self.up.bias)

    def forward(self, lr: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        """LR (N, 3, h, w) and its bicubic upsample (N, 3, 2h, 2w), both in [-1, 1] -> HR estimate."""
        return bicubic + self.up(self.body(lr))


def save_classic(net: FSRCNN, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out / WEIGHTS))
    write_json(out / CONFIG, {"kind": KIND, "fsrcnn": asdict(net.cfg), "meta": meta or {}})
    return out


def is_classic(model_dir: str | Path) -> bool:
    path = Path(model_dir) / CONFIG
    return path.is_file() and read_json(path).get("kind") == KIND


def load_classic(model_dir: str | Path) -> FSRCNN:
    path = Path(model_dir)
    cfg = read_json(path / CONFIG)
    try:
        net = FSRCNN(FSRCNNConfig(**cfg["fsrcnn"]))
        net.load_state_dict(read_tensors(path / WEIGHTS))
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid {KIND} model folder ({str(exc)[:300]})") from None
    return net.eval()
