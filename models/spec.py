"""A model folder without its weights: `config.json` (network, diffusion, defaults, metadata) read into plain
objects. Serving needs only this and the folder's `model.onnx`, so it never imports torch; `load_model` in
`models/checkpoint.py` adds the torch network from `model.safetensors`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import UNetConfig
from models.diffusion import Diffusion, DiffusionConfig
from models.errors import UserError

WEIGHTS, CONFIG = "model.safetensors", "config.json"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The models the product ships, by the name a request (`model=`) or `srnas upscale --model` gives them; the
# serving side maps each name to its BentoML store tag (serving/config.py). `real` is for real photos (JPEG
# artefacts, slight blur); a name whose folder is absent is not part of this installation.
SHIPPED_MODELS = {"default": WEIGHTS_DIR / "default", "real": WEIGHTS_DIR / "real"}
DEFAULT_MODEL_DIR = SHIPPED_MODELS["default"]
DEFAULT_SAMPLING = {"steps": 20, "sampler": "ddim", "eta": 0.0}


class CheckpointError(UserError):
    """A model folder that is missing, incomplete or corrupt."""


@dataclass
class ModelSpec:
    """What a model folder says about its network and how to sample from it."""

    unet: UNetConfig
    diffusion: Diffusion
    preset: str
    defaults: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLING))
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


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


def model_folder(model_dir: str | Path | None) -> Path:
    """The folder (the shipped default when None; a shipped model's name as the CLI passes it), checked to be one."""
    if isinstance(model_dir, str) and model_dir in SHIPPED_MODELS:
        return shipped_or_folder(model_dir)
    path = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model folder (expected {CONFIG} and {WEIGHTS})")
    return path


def shipped_or_folder(name_or_dir: str | Path | None) -> Path:
    """A shipped model's name (`default`, `real`) or a model folder, as a folder that holds its weights (the
    shipped default when None). A shipped name wins over a folder of the same name in the working directory:
    `./real` names the folder."""
    if name_or_dir is None:
        return DEFAULT_MODEL_DIR
    text = str(name_or_dir)
    if text in SHIPPED_MODELS:
        path = SHIPPED_MODELS[text]
        if not (path / WEIGHTS).is_file():
            raise CheckpointError(f"shipped model {text!r} is not in this installation ({path} has no {WEIGHTS})")
        return path
    path = Path(text)
    if not path.is_dir():
        raise CheckpointError(f"{text}: not a model folder, nor a shipped model's name ({', '.join(SHIPPED_MODELS)})")
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path}: a model folder without weights (expected {CONFIG} and {WEIGHTS})")
    return path


def read_spec(model_dir: str | Path | None = None) -> ModelSpec:
    """Read a model folder's config.json (the shipped default when None)."""
    path = model_folder(model_dir)
    cfg = read_json(path / CONFIG)
    try:
        unet = UNetConfig.from_dict(cfg["unet"])
        diffusion = Diffusion(DiffusionConfig(**cfg["diffusion"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG}: invalid model config ({exc})") from None
    spec = ModelSpec(unet, diffusion, cfg.get("preset", "custom"), meta=cfg.get("meta", {}), path=path)
    spec.defaults.update(cfg.get("defaults", {}))
    return spec
