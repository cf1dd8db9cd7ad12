"""`srnas store-import` puts the shipped models into the BentoML model store; `bentoml build` packs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, text=True, capture_output=True, timeout=timeout,
                          env={**os.environ, "BENTOML_HOME": str(home)})


def test_store_import_is_idempotent_and_refuses_bad_folders(tmp_path):
    home = tmp_path / "bentoml"
    first = run([str(BIN / "srnas"), "store-import"], home)
    assert first.returncode == 0, first.stderr
    tags = [line.split()[-1] for line in first.stdout.splitlines()]
    assert tags[0].startswith("srnas-default:")
    stored = next((home / "models" / "srnas-default").glob("*/config.json")).parent
    assert {"config.json", "model.safetensors", "model.onnx"} <= {p.name for p in stored.iterdir()}
    again = run([str(BIN / "srnas"), "store-import"], home)
    assert again.returncode == 0 and again.stdout.splitlines() == [f"already in the store: {t}" for t in tags]
    (tmp_path / "empty").mkdir()
    bad = run([str(BIN / "srnas"), "store-import", "--model", str(tmp_path / "empty"), "--name", "x"], home)
    assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr


def test_store_import_without_arguments_imports_every_shipped_model(tmp_path, second_model_dir):
    """Every shipped model folder there is, under its tag; one this installation lacks is named and skipped. The
    command's own code, with the shipped list pointed at a second folder and at one that does not exist."""
    def store_import(real: Path) -> subprocess.CompletedProcess:
        code = ("import pathlib, sys\nimport models.spec as spec\n"
                f"spec.SHIPPED_MODELS['real'] = pathlib.Path({str(real)!r})\n"
                "from srnas.cli import main\nsys.exit(main(['store-import']))\n")
        return run([sys.executable, "-c", code], tmp_path / "bentoml")

    both = store_import(second_model_dir)
    assert both.returncode == 0, both.stderr
    assert [line.split()[-1].split(":")[0] for line in both.stdout.splitlines()] == ["srnas-default", "srnas-real"]
    stored = next((tmp_path / "bentoml" / "models" / "srnas-real").glob("*/config.json"))
    assert json.loads(stored.read_text())["defaults"]["sampler"] == "ddpm"  # the second folder, not a copy of default
    one = store_import(tmp_path / "not-shipped-here")
    assert one.returncode == 0 and one.stdout.startswith("already in the store: srnas-default:")
    assert "srnas-real" not in one.stdout and "shipped model 'real' skipped" in one.stderr


def test_bentoml_build_packs_every_model(tmp_path, import_shipped):
    home = tmp_path / "bentoml"
    import_shipped(home)
    build = run([str(BIN / "bentoml"), "build"], home)
    assert build.returncode == 0, build.stderr[-2000:]
    got = json.loads(run([str(BIN / "bentoml"), "get", "srnas:latest", "-o", "json"], home).stdout)
    models = {m["tag"].split(":")[0]: m["tag"].split(":")[1] for m in got["services"][0]["models"]}
    assert sorted(models) == ["srnas-default", "srnas-real"]  # both served models travel with the bento
    out = tmp_path / "srnas.bento"
    assert run([str(BIN / "bentoml"), "export", "srnas:latest", str(out)], home).returncode == 0
    with tarfile.open(out) as tar:
        names = tar.getnames()
    for name, version in models.items():
        assert any(n.endswith(f"models/{name}/{version}/model.safetensors") for n in names), name


@pytest.mark.slow
def test_the_bento_serves_from_a_venv_with_only_its_own_requirements(tmp_path, import_shipped):
    """`bentoml build`, then a fresh virtual environment with nothing but the bento's requirements (no torch),
    `bentoml serve` of the built bento from it, and a real POST /upscale: 200 and a 2x PNG."""
    import io
    import venv

    import httpx
    from PIL import Image

    from serving.launch import free_port, stop, wait_ready

    home = tmp_path / "bentoml"
    import_shipped(home)
    build = run([str(BIN / "bentoml"), "build"], home)
    assert build.returncode == 0, build.stderr[-2000:]
    bento = next(p for p in (home / "bentos" / "srnas").iterdir() if p.name != "latest")
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch" not in reqs and "bentoml==1.4.40" in reqs, reqs
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), "-r",
                          str(bento / "env" / "python" / "requirements.txt")], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list"], capture_output=True, text=True).stdout
    assert "torch" not in listed and "scikit-image" not in listed, listed
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen([str(env_dir / "bin" / "bentoml"), "serve", str(bento), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**clean, "BENTOML_HOME": str(home), "SRNAS_WORKERS": "1"}, start_new_session=True)
    from serving.launch import Server

    srv = Server(proc, f"http://127.0.0.1:{port}", tmp_path / "serve.log")
    try:
        wait_ready(srv, timeout=300)
        png = (ROOT / "serving" / "samples" / "astronaut-lr.png").read_bytes()
        for model in ("default", "real"):  # both models come from the bento's own store
            r = httpx.post(srv.url + "/upscale", files={"image": ("a.png", png)}, data={"steps": "1", "model": model},
                           timeout=120)
            assert r.status_code == 200, r.text
            assert Image.open(io.BytesIO(r.content)).size == (128, 128)
        info = httpx.get(srv.url + "/info", timeout=30).json()
        net = json.loads((ROOT / "models/weights/default/deploy.json").read_text())["network"]
        assert info["params"] == net["params"] and info["backend"]["name"] == "onnxruntime"
        assert list(info["models"]) == ["default", "real"] and info["default_model"] == "default"
    finally:
        stop(srv)
        log.close()
