import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(min(2, os.cpu_count() or 1))


def srnas_cmd() -> list[str]:
    exe = shutil.which("srnas", path=str(Path(sys.executable).parent)) or shutil.which("srnas")
    return [exe] if exe else [sys.executable, "-m", "srnas.cli"]


@pytest.fixture
def run_srnas():
    """Run the installed console script; returns CompletedProcess with text output."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*srnas_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)

    return run


@pytest.fixture(scope="session")
def bento_home(tmp_path_factory) -> Path:
    """A private BentoML home with the shipped model imported by the real `srnas store-import`; the
    serving tests start their servers from it (read-only), so the import runs once per session."""
    home = tmp_path_factory.mktemp("bentoml")
    r = subprocess.run([*srnas_cmd(), "store-import"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "BENTOML_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("stored srnas-default:")
    return home


@pytest.fixture
def photo(tmp_path) -> Path:
    """A small real photo crop (from scikit-image's astronaut) saved as PNG."""
    from search.data import builtin_pairs
    from models.imaging import to_uint8

    lr = to_uint8(builtin_pairs("test")[0].lr[:, 40:88, 60:116])  # 56 x 48 LR of the astronaut
    path = tmp_path / "photo.png"
    Image.fromarray(lr).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny model folder, for tests that need any model."""
    from models.checkpoint import ModelBundle, save_model
    from models.config import preset
    from models.diffusion import Diffusion, DiffusionConfig
    from models.unet import UNet

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    cfg = preset("tiny")
    bundle = ModelBundle(UNet(cfg), Diffusion(DiffusionConfig(prediction="v", target="residual")), "tiny")
    save_model(bundle, out)
    return out


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
