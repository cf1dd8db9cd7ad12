"""Cost models: parameters and FLOPs as torch.utils.flop_counter counts them, and the expected cost of a supernet."""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.unet import UNet
from search.supernet import (at_widths, context_key, context_like, mixed_ops, parse_context, slot_inputs,
                             width_combos, width_slots)


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_flops(net: torch.nn.Module, size: int = 128, batch: int = 1, in_channels: int = 6) -> int:
    """FLOPs of one denoising step (one forward pass) at `batch` x in_channels x size x size."""
    x = torch.zeros(batch, in_channels, size, size)
    level = torch.full((batch,), 0.5)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, level)
    return int(counter.get_total_flops())


class SlotCosts:
    """Per-candidate costs of every operator slot plus the fixed rest, per width context.

    A candidate's cost depends on the widths of the levels around it, so costs are tabulated for every
    width context ("width0=1,width1=0.5"; "" when widths are fixed). The expected cost (float64) is differentiable
    in every alpha: sum over contexts of P(context) * (fixed + sum over slots of sum_j w_j * c_j), where
    P(context) is the product of the width slots' softmax probabilities.
    """

    def __init__(self, fixed: dict[str, float], per_slot: dict[str, dict[str, dict[str, float]]]):
        self.fixed = {k: float(v) for k, v in fixed.items()}
        self.per_slot = per_slot  # slot -> context -> candidate -> cost
        self._vectors: dict[tuple[str, str, str], torch.Tensor] = {}
        self._widths = {ctx: parse_context(ctx) for ctx in self.fixed}

    def _vector(self, slot: str, ctx: str, names: list[str], device: torch.device) -> torch.Tensor:
        key = (slot, ctx, str(device))
        if key not in self._vectors:
            self._vectors[key] = torch.tensor([self.per_slot[slot][ctx][n] for n in names], dtype=torch.float64,
                                              device=device)
        return self._vectors[key]

    def expected(self, net: torch.nn.Module) -> torch.Tensor:
        probs = {w.slot: dict(zip(w.names, w.weights().double().unbind())) for w in width_slots(net)}
        weights = [(m.slot, m.names, m.weights().double()) for m in mixed_ops(net).values()]
        dev = weights[0][2].device if weights else torch.device("cpu")
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for ctx, fixed in self.fixed.items():
            cost = torch.tensor(fixed, dtype=torch.float64, device=dev)
            for slot, names, w in weights:
                cost = cost + (w * self._vector(slot, ctx, names, dev)).sum()
            p = torch.ones((), dtype=torch.float64, device=dev)
            for k, v in self._widths[ctx].items():
                p = p * probs[k][v]
            total = total + p * cost
        return total

    def of_arch(self, arch: dict[str, str]) -> float:
        ctx = context_like(arch, next(iter(self.fixed)))
        return self.fixed[ctx] + sum(costs[ctx][arch[slot]] for slot, costs in self.per_slot.items())

    def to_dict(self) -> dict:
        return {"fixed": self.fixed, "per_slot": self.per_slot}


def slot_flops(net: UNet, size: int = 128, batch: int = 1) -> SlotCosts:
    """FLOPs of each candidate at its real input shape, per width context; the rest is what a whole
    network adds beyond its candidates."""
    names = [w.slot for w in width_slots(net)]
    per_slot: dict[str, dict[str, dict[str, float]]] = {m.slot: {} for m in mixed_ops(net).values()}
    fixed: dict[str, float] = {}
    seen: dict[tuple, float] = {}  # most slots look the same in many width contexts: count each block once
    for combo in width_combos(net):
        ctx, narrow = context_key(combo, names), at_widths(net, combo)
        inputs = slot_inputs(narrow, size, batch)
        for m in mixed_ops(narrow).values():
            per_slot[m.slot][ctx] = {}
            for name in m.names:
                block = m.candidates[name]
                key = (m.slot, name, tuple(inputs[m.slot][0].shape), tuple(tuple(p.shape) for p in block.parameters()))
                if key not in seen:
                    with FlopCounterMode(display=False) as counter, torch.no_grad():
                        block(*inputs[m.slot])
                    seen[key] = float(counter.get_total_flops())
                per_slot[m.slot][ctx][name] = seen[key]
        first = {m.slot: m.names[0] for m in mixed_ops(narrow).values()}  # any one plain subnet
        plain = UNet(dataclasses.replace(net.cfg, arch={**net.cfg.arch, **combo, **first}))
        fixed[ctx] = count_flops(plain, size, batch, net.cfg.in_channels) - sum(
            per_slot[s][ctx][c] for s, c in first.items())
    return SlotCosts(fixed, per_slot)
