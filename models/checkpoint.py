"""Model files: `model.safetensors` (weights) + `config.json` (network, diffusion, defaults, metadata).

Nothing is ever unpickled: tensors come from safetensors, everything else from JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.config import UNetConfig
from models.errors import UserError
from models.diffusion import Diffusion, DiffusionConfig
from models.unet import UNet

WEIGHTS, CONFIG = "model.safetensors", "config.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "default"


class CheckpointError(UserError):
    """A model folder that is missing, incomplete or corrupt."""


@dataclass
class ModelBundle:
    """A network with everything needed to sample from it."""

    net: UNet
    diffusion: Diffusion
    preset: str
    defaults: dict[str, Any] = field(default_factory=lambda: {"steps": 20, "sampler": "ddim", "eta": 0.0})
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

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


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt JSON ({exc})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None


def load_model(model_dir: str | Path | None = None) -> ModelBundle:
    """Load a model folder (the shipped default when None)."""
    path = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model folder (expected {CONFIG} and {WEIGHTS})")
    cfg = read_json(path / CONFIG)
    try:
        net = UNet(UNetConfig.from_dict(cfg["unet"]))
        diffusion = Diffusion(DiffusionConfig(**cfg["diffusion"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG}: invalid model config ({exc})") from None
    try:
        net.load_state_dict(read_tensors(path / WEIGHTS))
    except RuntimeError as exc:
        raise CheckpointError(f"{path / WEIGHTS}: weights do not match the config ({str(exc)[:300]})") from None
    net.eval()
    bundle = ModelBundle(net, diffusion, cfg.get("preset", "custom"), meta=cfg.get("meta", {}), path=path)
    bundle.defaults.update(cfg.get("defaults", {}))
    return bundle
