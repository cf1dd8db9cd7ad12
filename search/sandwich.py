"""Sandwich-rule weight training (BigNAS, once-for-all): the weights' step runs whole single-path subnets.

A relaxed supernet trains its candidates only as parts of a weighted sum, so the argmax subnet inherits weights
that never ran alone (the discretization gap). Under the sandwich rule every weights' step instead runs, each on
its own: the largest subnet (every slot's costliest choice), the smallest (the cheapest), and a few drawn from the
slots' current probabilities (uniform while alpha has not moved, then nearer the architecture the search will
extract). Their gradients add up; alpha's step keeps the installed relaxation.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from models.blocks import MixedOp
from search.costs import SlotCosts
from search.supernet import one_hot_weights, parse_context, search_slots

# relaxed: the relaxation's weighted sum; sandwich: single paths for the whole search; sandwich-warmup: single
# paths while the weights warm up alone, the weighted sum once alpha moves
WEIGHT_PATHS = ("relaxed", "sandwich", "sandwich-warmup")


@contextmanager
def running(net: torch.nn.Module, arch: dict[str, str]) -> Iterator[None]:
    """Within the block `net` runs exactly `arch` while training (only the chosen candidates compute); the
    slots' own weighing and single-path flags come back afterwards."""
    slots = search_slots(net)
    saved = [(m, m.weigh, getattr(m, "single_path", False)) for m in slots]
    try:
        one_hot_weights(net, arch)
        for m in slots:
            if isinstance(m, MixedOp):
                m.single_path = True
        yield
    finally:
        for m, weigh, single in saved:
            m.weigh = weigh
            if isinstance(m, MixedOp):
                m.single_path = single


def extreme_arch(costs: SlotCosts, largest: bool) -> dict[str, str]:
    """The costliest (or cheapest) architecture the slot costs price: every width context with its costliest
    (cheapest) candidates, then the costliest (cheapest) context."""
    pick = max if largest else min
    best: tuple[float, dict[str, str]] | None = None
    for ctx in costs.fixed:
        arch = parse_context(ctx)
        for slot, per_ctx in costs.per_slot.items():
            arch[slot] = pick(per_ctx[ctx], key=per_ctx[ctx].get)
        t = costs.of_arch(arch)
        if best is None or pick(t, best[0]) != best[0]:
            best = (t, arch)
    assert best is not None
    return best[1]


def drawn_arch(net: torch.nn.Module, gen: torch.Generator) -> dict[str, str]:
    """One choice per slot drawn from the slot's current probabilities."""
    arch = {}
    for m in search_slots(net):
        p = m.probs().detach().double().cpu()
        arch[m.slot] = m.names[int(torch.multinomial(p, 1, generator=gen))]
    return arch


def sandwich(largest: dict[str, str], smallest: dict[str, str], net: torch.nn.Module, n_drawn: int,
             gen: torch.Generator) -> list[dict[str, str]]:
    """This step's subnets: the largest, the smallest and `n_drawn` drawn ones."""
    return [largest, smallest] + [drawn_arch(net, gen) for _ in range(n_drawn)]
