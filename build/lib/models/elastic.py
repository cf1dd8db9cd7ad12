"""Elastic widths: a narrower network's parameters as slices of a wider one's.

The supernet keeps every level at its widest width. A width choice runs the same UNet class built at
the chosen widths, with parameters sliced from the wide ones (so gradients reach the shared weights),
and extraction stores exactly those slices: the subnet reproduces the supernet's forward bit for bit.
Channels are taken as a prefix, except where a tensor joins parts: a concatenation of up-path input
and skip (each part keeps its own prefix) and attention's stacked q, k, v.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

Plan = list[tuple[str, list[tuple[int, torch.Tensor | int]]]]  # (parameter, [(dim, index or prefix length)])


def _parts_index(wide: Sequence[int], narrow: Sequence[int]) -> torch.Tensor:
    starts = [sum(wide[:i]) for i in range(len(wide))]
    return torch.cat([torch.arange(s, s + n) for s, n in zip(starts, narrow)])


def _dim_slice(name: str, n_wide: int, n_narrow: int, parts: tuple[Sequence[int], Sequence[int]] | None
               ) -> torch.Tensor | int:
    if parts is not None and n_wide == sum(parts[0]) and n_narrow == sum(parts[1]):
        return _parts_index(*parts)
    if name.endswith("qkv.weight") and n_wide % 3 == 0 and n_narrow % 3 == 0:
        return _parts_index([n_wide // 3] * 3, [n_narrow // 3] * 3)
    return n_narrow  # a prefix


def slice_plan(wide: nn.Module, narrow: nn.Module, concat_wide: dict[str, tuple[int, ...]],
               concat_narrow: dict[str, tuple[int, ...]]) -> Plan:
    """How to cut each of `narrow`'s parameters out of `wide`'s (same names, smaller channel dims)."""
    wide_params = dict(wide.named_parameters())
    plan: Plan = []
    for name, p in narrow.named_parameters():
        q = wide_params[name]
        if q.dim() != p.dim() or any(a < b for a, b in zip(q.shape, p.shape)):
            raise ValueError(f"{name}: {tuple(p.shape)} does not fit inside {tuple(q.shape)}")
        parts = next(((concat_wide[k], concat_narrow[k]) for k in concat_wide
                      if name.startswith((f"{k}.res.unit1.", f"{k}.res.skip."))), None)
        cuts = [(d, _dim_slice(name, q.shape[d], p.shape[d], parts))
                for d in range(p.dim()) if p.shape[d] != q.shape[d]]
        plan.append((name, cuts))
    return plan


def apply_plan(plan: Plan, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The narrow network's parameters, as differentiable slices of the wide ones."""
    out = {}
    for name, cuts in plan:
        t = params[name]
        for dim, cut in cuts:
            t = t.narrow(dim, 0, cut) if isinstance(cut, int) else t.index_select(dim, cut)
        out[name] = t
    return out
