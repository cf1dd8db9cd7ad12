"""Cost models: parameters and FLOPs as torch.utils.flop_counter counts them, and the expected cost of a supernet."""
from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.flops import count_flops, count_params  # noqa: F401  (re-exported: callers take every cost from here)
from models.unet import UNet
from search.supernet import (at_widths, context_key, context_like, mixed_ops, parse_context, slot_inputs,
                             width_combos, width_slots)


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

    def expected(self, net: torch.nn.Module, of: str = "probs") -> torch.Tensor:
        """The cost under each slot's weights, differentiable in alpha. `of` picks the weights:
        "probs", the slots' probabilities (the expected cost); "sample", the weights the last training forward
        drew (Gumbel runs: the architecture that actually ran); "argmax", the architecture that will be extracted
        (its cost in value, the expected cost's gradient: straight-through)."""
        weigh = _weights_of(of)
        probs = {w.slot: dict(zip(w.names, weigh(w).unbind())) for w in width_slots(net)}
        weights = [(m.slot, m.names, weigh(m)) for m in mixed_ops(net).values()]
        dev = weights[0][2].device if weights else torch.device("cpu")
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for ctx, fixed in self.fixed.items():
            p = torch.ones((), dtype=torch.float64, device=dev)
            for k, v in self._widths[ctx].items():
                p = p * probs[k][v]
            if not p.requires_grad and of != "probs" and float(p) == 0.0:  # a context that cannot occur
                continue
            cost = torch.tensor(fixed, dtype=torch.float64, device=dev)
            for slot, names, w in weights:
                cost = cost + (w * self._vector(slot, ctx, names, dev)).sum()
            total = total + p * cost
        return total

    def of_arch(self, arch: dict[str, str]) -> float:
        ctx = context_like(arch, next(iter(self.fixed)))
        return self.fixed[ctx] + sum(costs[ctx][arch[slot]] for slot, costs in self.per_slot.items())

    def to_dict(self) -> dict:
        return {"fixed": self.fixed, "per_slot": self.per_slot}


COST_OF = ("probs", "sample", "argmax")


def _weights_of(of: str):  # -> Callable[[SearchSlot], torch.Tensor]
    if of not in COST_OF:
        raise ValueError(f"unknown cost weights {of!r}; choose from {', '.join(COST_OF)}")

    def probs(m) -> torch.Tensor:
        return m.probs().double()

    def sample(m) -> torch.Tensor:
        drawn = getattr(m.weigh, "samples", {}).get(m.slot)
        return probs(m) if drawn is None else drawn.double()

    def argmax(m) -> torch.Tensor:
        p = probs(m)
        return torch.nn.functional.one_hot(p.detach().argmax(), p.numel()).double() + p - p.detach()

    return {"probs": probs, "sample": sample, "argmax": argmax}[of]


_FLOPS_CACHE: dict[str, SlotCosts] = {}


def slot_flops(net: UNet, size: int = 128, batch: int = 1) -> SlotCosts:
    """FLOPs of each candidate at its real input shape, per width context; the rest is what a whole
    network adds beyond its candidates. Counted once per network config in a process (a study runs many
    searches over one supernet)."""
    key = json.dumps([net.cfg.to_dict(), size, batch], sort_keys=True)
    if key not in _FLOPS_CACHE:
        _FLOPS_CACHE[key] = _count_slot_flops(net, size, batch)
    return _FLOPS_CACHE[key]


def _count_slot_flops(net: UNet, size: int, batch: int) -> SlotCosts:
    names = [w.slot for w in width_slots(net)]
    per_slot: dict[str, dict[str, dict[str, float]]] = {m.slot: {} for m in mixed_ops(net).values()}
    fixed: dict[str, float] = {}
    seen: dict[tuple, float] = {}  # most slots look the same in many width contexts: count each block once
    for combo in width_combos(net):
        ctx, narrow = context_key(combo, names), at_widths(net, combo)
        # slot_inputs runs the network once with each slot's first candidate: the same pass prices the rest
        with FlopCounterMode(display=False) as whole:
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
        fixed[ctx] = whole.get_total_flops() - sum(per_slot[m.slot][ctx][m.names[0]] for m in mixed_ops(narrow).values())
    return SlotCosts(fixed, per_slot)
