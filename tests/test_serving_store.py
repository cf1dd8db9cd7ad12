"""`srnas store-import` puts the shipped model into the BentoML model store; `bentoml build` packs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, text=True, capture_output=True, timeout=timeout,
                          env={**os.environ, "BENTOML_HOME": str(home)})


def test_store_import_is_idempotent_and_refuses_bad_folders(tmp_path):
    home = tmp_path / "bentoml"
    first = run([str(BIN / "srnas"), "store-import"], home)
    assert first.returncode == 0, first.stderr
    tag = first.stdout.split()[-1]
    assert tag.startswith("srnas-default:")
    stored = next((home / "models" / "srnas-default").glob("*/config.json")).parent
    assert {"config.json", "model.safetensors", "model.onnx"} <= {p.name for p in stored.iterdir()}
    again = run([str(BIN / "srnas"), "store-import"], home)
    assert again.returncode == 0 and again.stdout.strip() == f"already in the store: {tag}"
    (tmp_path / "empty").mkdir()
    bad = run([str(BIN / "srnas"), "store-import", "--model", str(tmp_path / "empty"), "--name", "x"], home)
    assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr


def test_bentoml_build_packs_the_model(tmp_path):
    home = tmp_path / "bentoml"
    assert run([str(BIN / "srnas"), "store-import", "--no-onnx"], home).returncode == 0
    build = run([str(BIN / "bentoml"), "build"], home)
    assert build.returncode == 0, build.stderr[-2000:]
    got = json.loads(run([str(BIN / "bentoml"), "get", "srnas:latest", "-o", "json"], home).stdout)
    assert [m["tag"].split(":")[0] for m in got["services"][0]["models"]] == ["srnas-default"]
    out = tmp_path / "srnas.bento"
    assert run([str(BIN / "bentoml"), "export", "srnas:latest", str(out)], home).returncode == 0
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert any(n.endswith("models/srnas-default/" + got["services"][0]["models"][0]["tag"].split(":")[1]
                          + "/model.safetensors") for n in names)
