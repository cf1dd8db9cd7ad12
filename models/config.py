"""Network configuration: one dataclass, named presets, JSON round-trip."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class UNetConfig:
    """Shape of an SR3 UNet. `arch` maps slot names such as `down1.0.unit2` or `mid.0.attn` to choices
    (empty = SR3's own blocks everywhere)."""

    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 4, 8, 16)
    res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (16,)
    groups: int = 16  # GroupNorm groups; 0: no normalisation
    dropout: float = 0.0
    image_size: int = 128  # HR tile size; fixes which levels carry attention
    in_channels: int = 6  # bicubic-upsampled LR (3) + y_t (3)
    out_channels: int = 3
    noise_scale: float = 1000.0  # sqrt(gamma) in [0,1] is scaled before the sinusoidal encoding
    # > 1: the tile is folded into channels (space-to-depth) before the stem and unfolded after the head, so that no
    # operator runs at the full HR tile, as in efficient SR networks: elementwise work (norms, activations, adds) at
    # 128 x 128 costs time that no FLOP count shows
    fold: int = 1
    # slot -> operator; a list of operators makes the slot searchable (a supernet)
    arch: dict[str, str | list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNet config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("channel_mults", "attn_resolutions"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


# Small enough to train on 2 CPU cores in well under an hour.
_TINY = UNetConfig(base_channels=16, channel_mults=(1, 2, 4, 4), res_blocks=1, attn_resolutions=(16,), groups=8,
                   noise_scale=1000.0)
PRESETS: dict[str, UNetConfig] = {
    # The published SR3 64->128 network: 158.5 M parameters, 79.6 GFLOP per step.
    "sr3-paper": UNetConfig(),
    "tiny": _TINY,
    # The tiny network at half resolution: the 128 px tile folded into 4x the channels, twice tiny's width. Its
    # operators all run at 64 x 64 or below, where the UNet's per-pixel work (norms, activations, adds) costs a
    # quarter, so more of a few-millisecond budget goes to convolutions.
    "tiny-fold2": dataclasses.replace(_TINY, base_channels=32, fold=2),
    # The folded network without normalisation (groups 0), as EDSR dropped batch norm from super-resolution
    # networks: a norm rescales each crop's features, which throws away the intensity information PSNR depends on,
    # and costs per-pixel time that no FLOP count shows.
    "tiny-fold2-nonorm": dataclasses.replace(_TINY, base_channels=32, fold=2, groups=0),
}


def preset(name: str) -> UNetConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return UNetConfig.from_dict(PRESETS[name].to_dict())


def load_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
