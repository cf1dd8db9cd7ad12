"""SR3's training objective on torch tensors: a continuous noise level per item, the noised target, and the
L1/L2 loss against what the network should predict (optionally guided by a teacher's output)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.diffusion import Denoiser, Diffusion, make_target


def noise_levels(diffusion: Diffusion, n: int, generator: torch.Generator | None = None,
                 focus_steps: Sequence[int] = (), focus_share: float = 0.0) -> torch.Tensor:
    """SR3's continuous noise level: t ~ U{1..T}, sqrt(gamma) ~ U(sqrt g_t, sqrt g_{t-1}), in float64 so that
    sqrt(1 - gamma) can be taken from it exactly.

    With `focus_steps` (sampler step counts, e.g. [1, 2]) a `focus_share` of the items instead sits exactly on
    the levels those samplers call the network at: a model served at one step only ever sees t = T, which the
    uniform draw reaches once in T items."""
    sqrt_g = torch.from_numpy(diffusion.schedule.gammas).sqrt()  # sqrt(gamma_t), t = 0..T, float64
    t = torch.randint(1, diffusion.schedule.T + 1, (n,), generator=generator)
    lo, hi = sqrt_g[t], sqrt_g[t - 1]
    level = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    if not focus_steps or focus_share <= 0:
        return level  # the same draws as without a focus: old runs stay reproducible
    served = torch.from_numpy(np.unique(np.concatenate([diffusion.schedule.timesteps_for(k) for k in focus_steps])))
    pick = served[torch.randint(len(served), (n,), generator=generator)]
    chosen = torch.rand(n, generator=generator, dtype=torch.float64) < focus_share
    return torch.where(chosen, sqrt_g[pick], level)


def sr3_loss(diffusion: Diffusion, model: Denoiser, hr: torch.Tensor, bicubic: torch.Tensor,
             generator: torch.Generator | None = None, teacher: Denoiser | None = None,
             distill: float = 0.0, focus_steps: Sequence[int] = (), focus_share: float = 0.0) -> torch.Tensor:
    """The SR3 loss; with a teacher (same diffusion config), plus `distill` x the distance to its output
    on the same noisy input, as once-for-all style NAS trains subnets from the full network. `focus_steps`
    and `focus_share`: see `noise_levels`."""
    x0 = diffusion.to_x0(hr, bicubic)
    level64 = noise_levels(diffusion, hr.shape[0], generator, focus_steps, focus_share)
    sqrt_g = level64.float().to(hr.device)
    s1 = (1 - level64 ** 2).sqrt().float().to(hr.device)[:, None, None, None]  # in float64, as the sampler
    eps = torch.randn(x0.shape, generator=generator).to(hr.device)
    sg = sqrt_g[:, None, None, None]
    y = sg * x0 + s1 * eps
    inp = torch.cat([bicubic, y], dim=1)
    out = model(inp, sqrt_g)
    crit = F.l1_loss if diffusion.cfg.loss == "l1" else F.mse_loss
    loss = crit(out, make_target(diffusion.cfg.prediction, x0, eps, sg, s1))
    if teacher is not None and distill > 0:
        with torch.no_grad():
            guide = teacher(inp, sqrt_g)
        loss = loss + distill * crit(out, guide)
    return loss
