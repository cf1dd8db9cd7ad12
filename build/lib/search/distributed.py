"""torchrun / DDP support: process group set-up and a cross-rank agreement check."""
from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist


def init(backend: str = "gloo") -> tuple[int, int]:
    """(rank, world size); joins the process group (gloo on CPUs, nccl on GPUs) when launched by torchrun
    with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in state-dict order."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather(obj: object) -> list[object]:
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
