import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Two xdist workers share the host's cores, and each (or an `srnas` process it starts) runs torch with two
# OpenMP threads. Spinning OpenMP threads then burn the core a descheduled sibling needs: two 12-step trainings
# at once took 89 s instead of 8 s on the 2-core AMD EPYC host. Passive waiting puts idle threads to sleep; it
# must be set before torch loads OpenMP, and every subprocess inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
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
def second_model_dir(tmp_path_factory) -> Path:
    """A second model folder: a copy of the shipped default whose own defaults differ (2 DDPM steps), so that
    which model answered shows in the bytes, on the same network (it shares the first one's start-up timings)."""
    from models.spec import CONFIG, DEFAULT_MODEL_DIR

    out = tmp_path_factory.mktemp("second") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, out)
    cfg = json.loads((out / CONFIG).read_text())
    cfg["defaults"].update(steps=2, sampler="ddpm")
    (out / CONFIG).write_text(json.dumps(cfg, indent=2))
    return out


def store_import(home: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `srnas store-import` into the BentoML home `home`."""
    return subprocess.run([*srnas_cmd(), "store-import", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, "BENTOML_HOME": str(home)})


@pytest.fixture(scope="session")
def import_shipped(second_model_dir):
    """`srnas store-import` of every shipped model into a BentoML home, as `make serve` does. A shipped model
    whose folder this checkout does not have yet gets a stand-in (the second model folder) under its tag, so
    that the service's default configuration, which names every shipped model, starts."""
    from models.spec import SHIPPED_MODELS
    from serving.store import shipped_tags

    def run(home: Path) -> subprocess.CompletedProcess:
        r = store_import(home)
        assert r.returncode == 0, r.stderr
        for name, tag in shipped_tags().items():
            if (SHIPPED_MODELS[name] / "config.json").is_file():
                assert f" {tag}:" in r.stdout, r.stdout  # imported by the command itself
            else:
                assert f"shipped model {name!r} skipped" in r.stderr, r.stderr
                stand_in = store_import(home, "--model", second_model_dir, "--name", tag)
                assert stand_in.returncode == 0, stand_in.stderr
        return r

    return run


@pytest.fixture(scope="session")
def bento_home(tmp_path_factory, import_shipped) -> Path:
    """A private BentoML home with the shipped models imported by the real `srnas store-import`; the
    serving tests start their servers from it (read-only), so the import runs once per session."""
    home = tmp_path_factory.mktemp("bentoml")
    assert import_shipped(home).stdout.startswith("stored srnas-default:")
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


# The longest modules first: `make test` hands whole modules to its two xdist workers in this order (--dist
# loadscope --no-loadscope-reorder, so a module's fixtures start once), and a long module collected last left one
# worker idle for its whole run.
LONGEST_FIRST = ("test_pipeline.py", "test_search.py", "test_cli.py", "test_ablation.py", "test_distributed.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order
