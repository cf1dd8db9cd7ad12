"""The real service for load tests: serving.launch's `bentoml serve` on loopback, with the default model
imported into a throw-away BentoML store, and the server's resident memory."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psutil

from serving.launch import free_port, serving  # noqa: F401  (free_port: for observe's Prometheus)

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (BentoML's workers), 0 once gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def prepare_store(env: dict, model_dir: Path | None = None) -> dict:
    """Put a model folder (default: every shipped model) into the BentoML store the server reads;
    returns the environment that makes the service serve it (a folder alone, as its default model)."""
    srnas = Path(sys.executable).with_name("srnas")
    cmd = [str(srnas) if srnas.exists() else "srnas", "store-import"]
    extra = {}
    if model_dir is not None:
        name = "srnas-" + re.sub(r"[^a-z0-9]+", "-", Path(model_dir).resolve().name.lower()).strip("-")
        cmd += ["--model", str(model_dir), "--name", name]
        extra["SRNAS_MODELS"] = f"default={name}"
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"srnas store-import failed: {r.stderr.strip() or r.stdout.strip()}")
    return extra


@contextmanager
def serve(workdir: Path, extra_env: dict | None = None, ready_timeout_s: float = 300,
          model_dir: Path | None = None, checkout: Path | None = None):
    """`bentoml serve` (of this checkout, or `checkout`) on a free loopback port with its own model store;
    stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"BENTOML_HOME": os.environ.get("BENTOML_HOME") or tempfile.mkdtemp(prefix="bentoml-"),
           "BENTOML_DO_NOT_TRACK": "True", **(extra_env or {})}
    env.update(prepare_store({**os.environ, **env}, model_dir))
    with serving(env, log=workdir / "server.log", ready_timeout=ready_timeout_s, checkout=checkout) as server:
        yield server
