"""Model files: `model.safetensors` (weights) + `config.json` (network, diffusion, defaults, metadata), with
the torch network. Nothing is ever unpickled: tensors come from safetensors, everything else from JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.diffusion import Diffusion
from models.spec import (CONFIG, DEFAULT_MODEL_DIR, DEFAULT_SAMPLING, WEIGHTS, CheckpointError, ModelSpec,  # noqa: F401
                         read_json, read_spec, write_json)
from models.unet import UNet


@dataclass
class ModelBundle:
    """A network with everything needed to sample from it."""

    net: UNet
    diffusion: Diffusion
    preset: str
    defaults: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLING))
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def unet(self):
        """The network's configuration (as `ModelSpec.unet`)."""
        return self.net.cfg

    def config_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "unet": self.net.cfg.to_dict(), "diffusion": self.diffusion.cfg.to_dict(),
                "defaults": self.defaults, "meta": self.meta}


def save_model(bundle: ModelBundle, out_dir: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in (state or bundle.net.state_dict()).items()}
    save_file(tensors, str(out / WEIGHTS))
    write_json(out / CONFIG, bundle.config_dict())
    return out


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None


def load_model(model_dir: str | Path | None = None) -> ModelBundle:
    """Load a model folder (the shipped default when None)."""
    spec = read_spec(model_dir)
    path = spec.path
    net = UNet(spec.unet)
    try:
        net.load_state_dict(read_tensors(path / WEIGHTS))
    except RuntimeError as exc:
        raise CheckpointError(f"{path / WEIGHTS}: weights do not match the config ({str(exc)[:300]})") from None
    net.eval()
    return ModelBundle(net, spec.diffusion, spec.preset, spec.defaults, spec.meta, path)
