"""Start `bentoml serve` from the repository root, wait until it is ready, stop it with SIGTERM.

Used by `make demo` (serving/demo.py) and the tests, so both run the real server the same way.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bentoml_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("bentoml")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "bentoml"]


def start(env: dict[str, str] | None = None, log: Path | None = None, port: int | None = None,
          checkout: Path | None = None, bentoml: Path | None = None) -> Server:
    """`bentoml serve` of this checkout (or another one, e.g. an older commit, for paired comparisons), by this
    environment's BentoML or `bentoml` (another virtual environment's)."""
    port = port or free_port()
    log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"srnas-serve-{port}.log"
    out = open(log, "wb")
    root = Path(checkout or ROOT)
    paths = {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [str(bentoml)] if bentoml else bentoml_cmd()
    proc = subprocess.Popen([*cmd, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=root,
                            env={**os.environ, **paths, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: stopped as one below
    out.close()
    return Server(proc, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout: float = 180, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {server.proc.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{server.url}{path} not ready after {timeout} s:\n{server.log_text()[-3000:]}")


def stop(server: Server, timeout: float = 60) -> int:
    """SIGTERM (graceful: in-flight requests finish); the process group is killed only if that hangs."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
    return server.proc.returncode


@contextmanager
def serving(env: dict[str, str] | None = None, log: Path | None = None, ready_timeout: float = 180,
            checkout: Path | None = None, bentoml: Path | None = None) -> Iterator[Server]:
    server = start(env, log, checkout=checkout, bentoml=bentoml)
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        stop(server)
