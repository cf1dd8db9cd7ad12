"""The SR3 UNet, assembled from `models.blocks` according to a `UNetConfig`."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.blocks import (DEFAULT_OP, ConvUnit, Downsample, MixedOp, NoiseEmbedding, Stage, Upsample, WidthSlot,
                           choice_module)
from models.config import UNetConfig
from models.elastic import apply_plan, slice_plan

Gates = dict[int, torch.Tensor]


def width_key(level: int) -> str:
    """The arch key of a level's width: a channel fraction such as "1" or "0.5", or a list of them."""
    return f"width{level}"


def level_channels(cfg: UNetConfig, level: int, fraction: str) -> int:
    try:
        f = float(fraction)
    except ValueError:
        raise ValueError(f"{width_key(level)}: width {fraction!r} is not a number") from None
    channels = cfg.base_channels * cfg.channel_mults[level] * f
    if not 0 < f <= 1 or channels != int(channels):
        raise ValueError(f"{width_key(level)}: width {fraction} must be in (0, 1] and give whole channels")
    return int(channels)


class UNet(nn.Module):
    """Predicts the diffusion target from cat(bicubic LR, y_t) and the noise level sqrt(gamma).

    A list in `cfg.arch` makes a supernet: a MixedOp for an operator slot, a WidthSlot for a level's width.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        widths = [self._width_choices(level) for level in range(len(cfg.channel_mults))]
        self.width_slots = nn.ModuleDict({width_key(lv): WidthSlot(width_key(lv), names)
                                          for lv, names in enumerate(widths) if len(names) > 1})
        chans = [level_channels(cfg, lv, max(names, key=float)) for lv, names in enumerate(widths)]
        self.concat_parts: dict[str, tuple[int, int]] = {}  # up stage -> (input, skip) channels
        self.embed = NoiseEmbedding(cfg.base_channels, cfg.noise_scale)
        ch = chans[0]
        if cfg.fold < 1 or cfg.image_size % cfg.fold:
            raise ValueError(f"fold {cfg.fold}: the tile ({cfg.image_size}) must divide by it")
        self.fold = nn.PixelUnshuffle(cfg.fold) if cfg.fold > 1 else nn.Identity()
        self.stem = nn.Conv2d(cfg.in_channels * cfg.fold ** 2, ch, 3, padding=1)
        skips, res = [ch], cfg.image_size // cfg.fold
        self.down, self.down_levels = nn.ModuleList(), []
        last = len(cfg.channel_mults) - 1
        for level in range(len(chans)):
            for i in range(cfg.res_blocks):
                self._add(self.down, self.down_levels, level, self._stage(f"down{level}.{i}", ch, chans[level], res))
                ch = chans[level]
                skips.append(ch)
            if level != last:
                self._add(self.down, self.down_levels, level, choice_module(
                    f"down{level}.down", cfg.arch.get(f"down{level}.down", DEFAULT_OP), lambda op, c=ch: Downsample(c, op)))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([
            self._stage("mid.0", ch, ch, res, attn_default="self"),
            self._stage("mid.1", ch, ch, res, attn_default="none"),
        ])
        self.up, self.up_levels = nn.ModuleList(), []
        for level in reversed(range(len(chans))):
            for i in range(cfg.res_blocks + 1):
                skip = skips.pop()
                self.concat_parts[f"up.{len(self.up)}"] = (ch, skip)
                self._add(self.up, self.up_levels, level, self._stage(f"up{level}.{i}", ch + skip, chans[level], res))
                ch = chans[level]
            if level != 0:
                self._add(self.up, self.up_levels, level, choice_module(
                    f"up{level}.up", cfg.arch.get(f"up{level}.up", DEFAULT_OP), lambda op, c=ch: Upsample(c, op)))
                res *= 2
        self.head = ConvUnit(ch, cfg.out_channels * cfg.fold ** 2, cfg.groups)
        self.unfold = nn.PixelShuffle(cfg.fold) if cfg.fold > 1 else nn.Identity()
        self.__dict__["_narrow"] = {}  # width choice -> (UNet, slice plan); not submodules

    @staticmethod
    def _add(modules: nn.ModuleList, levels: list[int], level: int, m: nn.Module) -> None:
        modules.append(m)
        levels.append(level)

    def _width_choices(self, level: int) -> list[str]:
        v = self.cfg.arch.get(width_key(level), "1")
        return [v] if isinstance(v, str) else list(v)

    def _stage(self, name: str, cin: int, cout: int, res: int, attn_default: str | None = None) -> Stage:
        cfg = self.cfg
        if attn_default is None:
            attn_default = "self" if res in cfg.attn_resolutions else "none"
        ops = (cfg.arch.get(f"{name}.unit1", DEFAULT_OP), cfg.arch.get(f"{name}.unit2", DEFAULT_OP))
        attn = cfg.arch.get(f"{name}.attn", attn_default)
        return Stage(cin, cout, cfg.base_channels, cfg.groups, cfg.dropout, ops, attn, slot=name,
                     shortcut=cfg.arch.get(f"{name}.shortcut"))

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, gates: Gates | None = None) -> torch.Tensor:
        if len(self.width_slots):
            return self._elastic_forward(x, noise_level)
        emb = self.embed(noise_level)
        h = self.stem(self.fold(x))
        feats = [h]
        for m, level in zip(self.down, self.down_levels):
            h = _gate(m(h, emb), gates, level) if isinstance(m, Stage) else m(h)
            feats.append(h)
        for m in self.mid:
            h = _gate(m(h, emb), gates, len(self.cfg.channel_mults) - 1)
        for m, level in zip(self.up, self.up_levels):
            h = _gate(m(torch.cat([h, feats.pop()], dim=1), emb), gates, level) if isinstance(m, Stage) else m(h)
        return self.unfold(self.head(h))

    # ---- elastic widths ----------------------------------------------------------------------
    def _elastic_forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        """Run one width per level: the narrow UNet on slices of this network's parameters (training: sampled
        widths, gradients reach the shared weights and, through the gates, the width alphas)."""
        choice, gates = {}, {}
        for key, slot in self.width_slots.items():
            choice[key], gate = slot.choose(self.training)
            if gate is not None:
                gates[int(key[len("width"):])] = gate
        net, params = self.narrow(choice)
        if not self.training:  # the argmax widths as a plain copy: traceable for export, no gradient
            if not torch.jit.is_tracing():  # (export runs one eager forward first, which refreshes the copy)
                with torch.no_grad():
                    for name, p in net.named_parameters():
                        p.copy_(params[name])
            return net(x, noise_level)
        return torch.func.functional_call(net, params, (x, noise_level), {"gates": gates})

    def narrow(self, widths: dict[str, str]) -> tuple["UNet", dict[str, torch.Tensor]]:
        """The UNet at these widths (operator slots unchanged) and its parameters sliced from this one's."""
        key = tuple(sorted(widths.items()))
        if key not in self._narrow:
            net = UNet(UNetConfig.from_dict({**self.cfg.to_dict(), "arch": {**self.cfg.arch, **widths}}))
            net.requires_grad_(False)  # its own tensors are placeholders: the shared weights train
            self._narrow[key] = (net, slice_plan(self, net, self.concat_parts, net.concat_parts),
                                 _paired_slots(self, net))
        net, plan, pairs = self._narrow[key]
        net.train(self.training)
        for mine, theirs in pairs:  # the narrow copy's operator slots weigh (and record) alpha exactly as ours do
            theirs.weigh, theirs.single_path = mine.weigh, mine.single_path
        return net, apply_plan(plan, dict(self.named_parameters()))

    def __getstate__(self) -> dict[str, Any]:  # deepcopy (EMA) and pickling skip the cache
        state = self.__dict__.copy()
        state["_narrow"] = {}
        return state


def _gate(h: torch.Tensor, gates: Gates | None, level: int) -> torch.Tensor:
    g = gates.get(level) if gates else None
    return h if g is None else h * g


def _paired_slots(wide: nn.Module, narrow: nn.Module) -> list[tuple[MixedOp, MixedOp]]:
    """(supernet slot, narrow copy's slot) for every operator slot, matched by module path."""
    mine = {p: m for p, m in wide.named_modules() if isinstance(m, MixedOp)}
    return [(mine[p], m) for p, m in narrow.named_modules() if isinstance(m, MixedOp)]
