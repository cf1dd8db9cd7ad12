"""The SR3 UNet, assembled from `models.blocks` according to a `UNetConfig`."""
from __future__ import annotations

import torch
from torch import nn

from models.blocks import DEFAULT_OP, ConvUnit, Downsample, Stage, Upsample, NoiseEmbedding
from models.config import UNetConfig


class UNet(nn.Module):
    """Predicts the diffusion target from cat(bicubic LR, y_t) and the noise level sqrt(gamma)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, emb = cfg.base_channels, cfg.base_channels
        self.embed = NoiseEmbedding(emb, cfg.noise_scale)
        self.stem = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        skips, res = [ch], cfg.image_size
        self.down = nn.ModuleList()
        last = len(cfg.channel_mults) - 1
        for level, mult in enumerate(cfg.channel_mults):
            for i in range(cfg.res_blocks):
                self.down.append(self._stage(f"down{level}.{i}", ch, cfg.base_channels * mult, res))
                ch = cfg.base_channels * mult
                skips.append(ch)
            if level != last:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([
            self._stage("mid.0", ch, ch, res, attn_default="self"),
            self._stage("mid.1", ch, ch, res, attn_default="none"),
        ])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.res_blocks + 1):
                out = cfg.base_channels * mult
                self.up.append(self._stage(f"up{level}.{i}", ch + skips.pop(), out, res))
                ch = out
            if level != 0:
                self.up.append(Upsample(ch))
                res *= 2
        self.head = ConvUnit(ch, cfg.out_channels, cfg.groups)

    def _stage(self, name: str, cin: int, cout: int, res: int, attn_default: str | None = None) -> Stage:
        cfg = self.cfg
        if attn_default is None:
            attn_default = "self" if res in cfg.attn_resolutions else "none"
        ops = (cfg.arch.get(f"{name}.unit1", DEFAULT_OP), cfg.arch.get(f"{name}.unit2", DEFAULT_OP))
        attn = cfg.arch.get(f"{name}.attn", attn_default)
        return Stage(cin, cout, cfg.base_channels, cfg.groups, cfg.dropout, ops, attn, slot=name)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        emb = self.embed(noise_level)
        h = self.stem(x)
        feats = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, Stage) else m(h)
            feats.append(h)
        for m in self.mid:
            h = m(h, emb)
        for m in self.up:
            h = m(torch.cat([h, feats.pop()], dim=1), emb) if isinstance(m, Stage) else m(h)
        return self.head(h)
