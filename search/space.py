"""Named search spaces over the UNet's slots."""
from __future__ import annotations

from models.blocks import SKIP, SelfAttention, Stage
from models.config import UNetConfig
from models.unet import UNet

SPACES: dict[str, dict[str, list[str]]] = {
    # Every efficient unit we have; the second unit may vanish; every attention slot picks a variant.
    "default": {
        "unit1": ["conv3x3", "dwsep3x3", "ibn2", "dwsep5x5", "gconv3x3"],
        "unit2": ["conv3x3", "dwsep3x3", "ibn2", "dwsep5x5", "gconv3x3", SKIP],
        "attn": ["none", "self", "pooled", "linear", "channel"],
    },
    # The SR3-NAS presentation's space: 3 choices per unit, attention none + 3 variants.
    "sr3nas": {
        "unit1": ["conv3x3", "dwsep3x3", "ibn2"],
        "unit2": ["conv3x3", "dwsep3x3", "ibn2"],
        "attn": ["none", "self", "pooled", "linear"],
    },
}


def stages(cfg: UNetConfig) -> list[tuple[str, bool]]:
    """(slot name, has attention in the base network) for every residual stage."""
    net = UNet(UNetConfig.from_dict({**cfg.to_dict(), "arch": {}}))
    return [(m.slot, isinstance(m.attn, SelfAttention)) for m in net.modules() if isinstance(m, Stage)]


def make_space(name: str, cfg: UNetConfig) -> dict[str, list[str]]:
    """Slot -> candidates: both units of every residual block, and each attention slot of the base."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; choose from {', '.join(sorted(SPACES))}")
    choices = SPACES[name]
    space: dict[str, list[str]] = {}
    for slot, has_attn in stages(cfg):
        space[f"{slot}.unit1"] = list(choices["unit1"])
        space[f"{slot}.unit2"] = list(choices["unit2"])
        if has_attn:
            space[f"{slot}.attn"] = list(choices["attn"])
    return space
