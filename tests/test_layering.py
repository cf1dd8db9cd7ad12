"""The package layering in pyproject.toml ([tool.importlinter]), imports inside functions included, and a
serving process that never loads torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """models imports no other project package, export only models, serving only models and export, and the
    packages form no cycle (lint-imports, the import-linter contracts in pyproject.toml)."""
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_a_broken_contract_is_reported(tmp_path):
    """The checker fails when a lower layer imports a higher one (the same tool, on a copy with one bad import)."""
    for pkg in ("models", "export"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "models" / "bad.py").write_text("def f():\n    from export import x  # inside a function\n")
    (tmp_path / "export" / "x.py").write_text("import models\n")
    (tmp_path / "setup.cfg").write_text("[importlinter]\nroot_packages =\n    models\n    export\n\n"
                                        "[importlinter:contract:layers]\nname = layers\ntype = layers\n"
                                        "layers =\n    export\n    models\n")
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and "models.bad -> export" in r.stdout, r.stdout + r.stderr


def test_serving_loads_and_runs_the_default_model_without_torch():
    """The worker's whole load path (config, ONNX Runtime session, warm-up), one sampled tile and the service's
    modules, in a fresh interpreter: torch (and the training-only packages) never enter sys.modules. The
    service module itself needs the model store; the bento test serves it from a venv without torch."""
    code = (
        "import sys, numpy as np\n"
        "from serving.config import ServeConfig\n"
        "from serving.model import load_served\n"
        "from models.sampler import SamplerConfig, sample\n"
        "s = load_served('models/weights/default', ServeConfig(threads=1, warmup_runs=1, max_batch_size=2))\n"
        "out = sample(s.denoiser.run, s.bundle.diffusion, np.zeros((1, 3, 128, 128), np.float32),\n"
        "             SamplerConfig('ddim', 2), seeds=[0])\n"
        "import serving.tiles, serving.admission, serving.edge, serving.hardening, serving.store, serving.info\n"
        "print(out.shape, s.params, s.flops_per_step, sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "      ('torch', 'safetensors', 'skimage', 'matplotlib', 'tqdm', 'onnx', 'search', 'bench')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    net = json.loads((ROOT / "models/weights/default/deploy.json").read_text())["network"]  # written by deploy
    assert r.stdout.strip().splitlines()[-1] == f"(1, 3, 128, 128) {net['params']} {net['flops_per_step']} []", r.stdout


def test_the_cli_names_every_training_only_package():
    """`srnas` turns a missing [train] package into an exit-2 message in the serving-only install: its list
    covers the extra's packages (by import name)."""
    import tomllib

    from srnas.cli import TRAIN_ONLY

    import_names = {"scikit-image": "skimage"}
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    assert {import_names.get(r, r) for r in extra} == set(TRAIN_ONLY)
