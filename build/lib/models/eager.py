"""A torch network behind the sampler's numpy `Denoiser`: training, evaluation and the `torch` backend use it;
serving does not (it runs ONNX Runtime and never imports torch)."""
from __future__ import annotations

import numpy as np
import torch

from models.diffusion import Denoiser


def torch_denoiser(net: torch.nn.Module) -> Denoiser:
    """Wrap a torch network as the sampler's runtime-agnostic denoiser: numpy in and out (shared memory on the
    CPU), whatever device the network lives on."""
    net.eval()
    device = next(net.parameters()).device

    def run(x: np.ndarray, noise_level: np.ndarray) -> np.ndarray:
        xt, nt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(noise_level))
        with torch.inference_mode():
            return net(xt.to(device), nt.to(device)).cpu().numpy()

    return run
