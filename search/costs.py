"""Cost models: parameters and FLOPs as torch.utils.flop_counter counts them."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


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
    """Per-candidate costs of every searchable slot plus the fixed rest of the network.

    The expected cost is differentiable in alpha: fixed + sum over slots of sum_j w_j * c_j.
    """

    def __init__(self, fixed: float, per_slot: dict[str, dict[str, float]]):
        self.fixed, self.per_slot = float(fixed), per_slot

    def expected(self, net: torch.nn.Module) -> torch.Tensor:
        from search.supernet import mixed_ops

        total = torch.tensor(self.fixed)
        for m in mixed_ops(net).values():
            c = torch.tensor([self.per_slot[m.slot][n] for n in m.names])
            total = total + (m.weights() * c).sum()
        return total

    def of_arch(self, arch: dict[str, str]) -> float:
        return self.fixed + sum(cands[arch[slot]] for slot, cands in self.per_slot.items())

    def to_dict(self) -> dict:
        return {"fixed": self.fixed, "per_slot": self.per_slot}


def slot_flops(net: torch.nn.Module, size: int = 128, batch: int = 1) -> SlotCosts:
    """FLOPs of each candidate at its real input shape; the rest is what the whole forward adds."""
    from search.supernet import mixed_ops, slot_inputs

    inputs = slot_inputs(net, size, batch)
    total = count_flops(net, size, batch, net.cfg.in_channels)  # every candidate runs once
    per_slot: dict[str, dict[str, float]] = {}
    for m in mixed_ops(net).values():
        per_slot[m.slot] = {}
        for name in m.names:
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                m.candidates[name](*inputs[m.slot])
            per_slot[m.slot][name] = float(counter.get_total_flops())
    fixed = total - sum(sum(c.values()) for c in per_slot.values())
    return SlotCosts(fixed, per_slot)
