"""Supernet bookkeeping: find the mixed ops, read the argmax architecture, extract the subnet."""
from __future__ import annotations

import dataclasses

import torch

from models.blocks import MixedOp
from models.config import UNetConfig
from models.unet import UNet


def mixed_ops(net: torch.nn.Module) -> dict[str, MixedOp]:
    """Module path -> MixedOp, in network order."""
    return {path: m for path, m in net.named_modules() if isinstance(m, MixedOp)}


def slot_inputs(net: UNet, size: int = 128, batch: int = 1) -> dict[str, tuple[torch.Tensor, ...]]:
    """The real input of every searchable slot, captured from one forward pass of the supernet."""
    inputs: dict[str, tuple[torch.Tensor, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, slot=m.slot: inputs.__setitem__(slot, args))
             for m in mixed_ops(net).values()]
    try:
        with torch.no_grad():
            net(torch.zeros(batch, net.cfg.in_channels, size, size), torch.full((batch,), 0.5))
    finally:
        for h in hooks:
            h.remove()
    return inputs


def random_arch(net: UNet, rng: torch.Generator) -> dict[str, str]:
    """A uniformly random choice in every searchable slot."""
    arch = derive_arch(net)
    for m in mixed_ops(net).values():
        arch[m.slot] = m.names[int(torch.randint(len(m.names), (), generator=rng))]
    return arch


def arch_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [m.alpha for m in mixed_ops(net).values()]


def weight_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    alphas = {id(a) for a in arch_parameters(net)}
    return [p for p in net.parameters() if id(p) not in alphas]


def derive_arch(net: UNet) -> dict[str, str]:
    """Every slot's choice: argmax of alpha where searchable, the fixed choice elsewhere."""
    arch = {k: v for k, v in net.cfg.arch.items() if isinstance(v, str)}
    arch.update({k: v[0] for k, v in net.cfg.arch.items() if not isinstance(v, str) and len(v) == 1})
    for m in mixed_ops(net).values():
        arch[m.slot] = m.names[int(torch.argmax(m.alpha.detach()))]
    return arch


def extract(net: UNet, arch: dict[str, str] | None = None) -> UNet:
    """A plain UNet (no mixed ops) of the chosen candidates, inheriting their trained weights."""
    arch = derive_arch(net) if arch is None else arch
    sub = UNet(dataclasses.replace(net.cfg, arch=dict(arch)))
    chosen = {path: arch[m.slot] for path, m in mixed_ops(net).items()}
    state = {}
    for key, value in net.state_dict().items():
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


def one_hot_weights(net: torch.nn.Module, arch: dict[str, str]) -> None:
    """Make every mixed op use exactly its `arch` candidate (weight 1, others 0)."""
    for m in mixed_ops(net).values():
        idx = m.names.index(arch[m.slot])
        m.weigh = lambda a, i=idx: torch.nn.functional.one_hot(torch.tensor(i), a.numel()).to(a.dtype)


def space_config(base: UNetConfig, space: dict[str, list[str]]) -> UNetConfig:
    """The base config with searchable slots: `space` maps slot names to candidate lists."""
    return dataclasses.replace(base, arch={**base.arch, **space})
