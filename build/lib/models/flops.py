"""Size and cost of one denoising step of a torch network: parameters, and FLOPs counted by
`torch.utils.flop_counter` on one forward pass."""
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
