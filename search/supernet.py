"""Supernet bookkeeping: find the mixed ops, read the argmax architecture, extract the subnet."""
from __future__ import annotations

import dataclasses
import itertools

import torch

from models.blocks import MixedOp, SearchSlot, WidthSlot
from models.config import UNetConfig
from models.unet import UNet


def mixed_ops(net: torch.nn.Module) -> dict[str, MixedOp]:
    """Module path -> MixedOp (operator slots), in network order."""
    return {path: m for path, m in net.named_modules() if isinstance(m, MixedOp)}


def width_slots(net: torch.nn.Module) -> list[WidthSlot]:
    return [m for m in net.modules() if isinstance(m, WidthSlot)]


def search_slots(net: torch.nn.Module) -> list[SearchSlot]:
    """Every architecture decision: operator slots, then level widths."""
    return [*mixed_ops(net).values(), *width_slots(net)]


def width_combos(net: UNet) -> list[dict[str, str]]:
    """Every assignment of widths to the searchable levels ([{}] when widths are fixed)."""
    slots = width_slots(net)
    return [dict(zip([w.slot for w in slots], names)) for names in itertools.product(*[w.names for w in slots])]


def at_widths(net: UNet, widths: dict[str, str]) -> UNet:
    """The network that runs for this width choice (the supernet itself when widths are fixed)."""
    return net.narrow(widths)[0] if widths else net


def context_key(arch: dict[str, str], width_names: list[str]) -> str:
    """Costs depend on the widths: they are tabulated per width context such as "width0=1,width1=0.5"."""
    return ",".join(f"{k}={arch[k]}" for k in sorted(width_names))


def parse_context(ctx: str) -> dict[str, str]:
    """"width0=1,width1=0.5" -> {"width0": "1", "width1": "0.5"} ("" -> {})."""
    return dict(part.split("=") for part in filter(None, ctx.split(",")))


def context_like(arch: dict[str, str], example: str) -> str:
    """The context of `arch` in a table whose contexts look like `example` (same width slots)."""
    return context_key(arch, list(parse_context(example)))


def slot_inputs(net: UNet, size: int = 128, batch: int = 1) -> dict[str, tuple[torch.Tensor, ...]]:
    """The real input of every searchable slot, captured from one forward pass of the supernet.

    Only the shapes matter to the counters and timers that use them, so each slot runs its first candidate alone
    (not all of them, nor through its relaxation, which would draw samples): 4x faster on the default space."""
    inputs: dict[str, tuple[torch.Tensor, ...]] = {}
    ops = list(mixed_ops(net).values())
    hooks = [m.register_forward_pre_hook(lambda mod, args, slot=m.slot: inputs.__setitem__(slot, args)) for m in ops]
    for m in ops:
        # an instance attribute shadows the class's forward (Module.__setattr__ would register it as a child)
        object.__setattr__(m, "forward", m.candidates[m.names[0]])
    try:
        with torch.no_grad():
            net(torch.zeros(batch, net.cfg.in_channels, size, size), torch.full((batch,), 0.5))
    finally:
        for h in hooks:
            h.remove()
        for m in ops:
            del m.forward
    return inputs


def random_arch(net: UNet, rng: torch.Generator) -> dict[str, str]:
    """A uniformly random choice in every searchable slot."""
    arch = derive_arch(net)
    for m in search_slots(net):
        arch[m.slot] = m.names[int(torch.randint(len(m.names), (), generator=rng))]
    return arch


def arch_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [m.alpha for m in search_slots(net)]


def weight_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    alphas = {id(a) for a in arch_parameters(net)}
    return [p for p in net.parameters() if id(p) not in alphas]


def derive_arch(net: UNet) -> dict[str, str]:
    """Every slot's choice: argmax of alpha where searchable, the fixed choice elsewhere."""
    arch = {k: v for k, v in net.cfg.arch.items() if isinstance(v, str)}
    arch.update({k: v[0] for k, v in net.cfg.arch.items() if not isinstance(v, str) and len(v) == 1})
    for m in search_slots(net):
        arch[m.slot] = m.names[int(torch.argmax(m.alpha.detach()))]
    return arch


def extract(net: UNet, arch: dict[str, str] | None = None) -> UNet:
    """A plain UNet (no search slots) of the chosen candidates and widths, inheriting their trained weights."""
    arch = derive_arch(net) if arch is None else arch
    sub = UNet(dataclasses.replace(net.cfg, arch=dict(arch)))
    widths = {w.slot: arch[w.slot] for w in width_slots(net)}
    if widths:  # the chosen widths' slices of the shared weights
        wide, params = net.narrow(widths)
        source = {k: v.detach() for k, v in params.items()}
    else:
        wide, source = net, net.state_dict()
    chosen = {path: arch[m.slot] for path, m in mixed_ops(wide).items()}
    state = {}
    for key, value in source.items():
        new_key = _subnet_key(key, chosen)
        if new_key is not None:
            state[new_key] = value
    sub.load_state_dict(state, strict=True)
    return sub.eval()


def _subnet_key(key: str, chosen: dict[str, str]) -> str | None:
    for path, name in chosen.items():
        if key == f"{path}.alpha":
            return None
        prefix = f"{path}.candidates."
        if key.startswith(prefix):
            cand, rest = key[len(prefix):].split(".", 1)
            return f"{path}.{rest}" if cand == name else None
    return key


class OneHot:
    """A slot weighing that always picks one choice: one-hot, constant in alpha. `stochastic` makes a width slot
    take the weights' argmax (this choice) while training rather than draw from them; `samples` is where slots
    record it."""

    stochastic = True

    def __init__(self, index: int):
        self.index = index
        self.samples: dict[str, torch.Tensor] = {}

    def __call__(self, alpha: torch.Tensor, slot: str = "", training: bool = True) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(self.index, device=alpha.device), alpha.numel()).to(alpha.dtype)


def one_hot_weights(net: torch.nn.Module, arch: dict[str, str]) -> None:
    """Make every slot use exactly its `arch` choice (weight 1, others 0), in training and eval mode."""
    for m in search_slots(net):
        m.weigh = OneHot(m.names.index(arch[m.slot]))


def space_config(base: UNetConfig, space: dict[str, list[str]]) -> UNetConfig:
    """The base config with searchable slots: `space` maps slot names to candidate lists."""
    return dataclasses.replace(base, arch={**base.arch, **space})
