"""Named search spaces over the UNet's slots."""
from __future__ import annotations

from models.blocks import SKIP, SelfAttention, Stage
from models.config import UNetConfig
from models.unet import UNet, width_key

SPACES: dict[str, dict[str, list[str]]] = {
    # Every efficient unit we have; the second unit may vanish; every attention slot picks a variant;
    # every level may run at full or half width, and its down/upsampling convolution may be separable.
    "default": {
        "unit1": ["conv3x3", "dwsep3x3", "ibn2", "dwsep5x5", "gconv3x3"],
        "unit2": ["conv3x3", "dwsep3x3", "ibn2", "dwsep5x5", "gconv3x3", SKIP],
        "attn": ["none", "self", "pooled", "linear", "channel"],
        "width": ["1", "0.5"],
        "resample": ["conv3x3", "dwsep3x3"],
    },
    # The operators alone, at the preset's widths.
    "ops": {
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


def make_space(name: str, cfg: UNetConfig) -> dict[str, list[str] | str]:
    """Slot -> candidates: both units of every residual block, each attention slot of the base, and
    (where the space has widths) every level's width."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; choose from {', '.join(sorted(SPACES))}")
    choices = SPACES[name]
    space: dict[str, list[str] | str] = {}
    for slot, has_attn in stages(cfg):
        space[f"{slot}.unit1"] = list(choices["unit1"])
        space[f"{slot}.unit2"] = list(choices["unit2"])
        if has_attn:
            space[f"{slot}.attn"] = list(choices["attn"])
    if "resample" in choices:
        for level in range(len(cfg.channel_mults) - 1):
            space[f"down{level}.down"] = list(choices["resample"])
            space[f"up{level + 1}.up"] = list(choices["resample"])
    if "width" in choices:
        for level in range(len(cfg.channel_mults)):
            space[width_key(level)] = list(choices["width"])
            if level > 0:  # the first block of a level maps the previous level's width to this one's
                space[f"down{level}.0.shortcut"] = "conv1x1"
    return space


def transfer_arch(choices: dict[str, str], cfg: UNetConfig) -> dict[str, str]:
    """A searched arch for another preset's network: slots are matched by name, and levels the search
    never saw (a deeper network) take the choices of the deepest level it did see."""
    levels = {int(k[len("width"):]) for k in choices if k.startswith("width")} | {
        int(k[len("down"):].split(".")[0]) for k in choices if k.startswith("down")}
    deepest = max(levels, default=0)

    def source(slot: str) -> str | None:
        if slot in choices:
            return choices[slot]
        for prefix in ("down", "up", "width"):
            if slot.startswith(prefix):
                head, _, rest = slot[len(prefix):].partition(".")
                for lv in range(min(int(head), deepest), -1, -1) if head.isdigit() else ():
                    key = f"{prefix}{lv}" + (f".{rest}" if rest else "")
                    if key in choices:
                        return choices[key]
        return None

    with_attn = dict(stages(cfg))
    wanted = [f"{s}.{part}" for s in with_attn for part in ("unit1", "unit2", "shortcut")]
    wanted += [f"{s}.attn" for s, has in with_attn.items() if has]  # never add attention the preset lacks
    wanted += [width_key(lv) for lv in range(len(cfg.channel_mults))]
    wanted += [f"down{lv}.down" for lv in range(len(cfg.channel_mults) - 1)]
    wanted += [f"up{lv + 1}.up" for lv in range(len(cfg.channel_mults) - 1)]
    arch = {slot: choice for slot in wanted if (choice := source(slot)) is not None}
    if any(arch.get(width_key(lv), "1") != "1" for lv in range(len(cfg.channel_mults))):
        for lv in range(1, len(cfg.channel_mults)):  # as in the search space: widths change level to level
            arch[f"down{lv}.0.shortcut"] = "conv1x1"
    return arch
