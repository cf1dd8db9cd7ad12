"""The serving footprint: install size, seconds from `bentoml serve` to a true /readyz, and the largest process
RSS after warm-up and N requests (the shipped model, the bundled sample, default settings).

    python -m bench.footprint --venv VENV [--checkout DIR] [--requests 100] [--label NAME] [--out FILE]

VENV is the virtual environment whose `bentoml` serves (e.g. one made with `pip install -c constraints.txt .`,
the serving set); DIR the checkout whose code it serves (default: this one; an older commit for a before/after
pair, `git worktree add ../old COMMIT`). Each run is appended to --out as one JSON row, with the host.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from export.runtime import host_id
from serving.launch import ROOT, serving

SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def store(venv: Path, checkout: Path, home: str) -> None:
    """The shipped model into a fresh store, with the checkout's own `srnas store-import`."""
    cmd = [str(venv / "bin" / "python"), "-c", "import sys; from srnas.cli import main; sys.exit(main())"
           if (checkout / "srnas" / "cli.py").is_file() else
           "import sys; from search.cli import main; sys.exit(main())", "store-import"]
    env = {**os.environ, "BENTOML_HOME": home, "PYTHONPATH": str(checkout)}
    subprocess.run(cmd, cwd=checkout, env=env, check=True, capture_output=True, timeout=600)


def measure(venv: Path, checkout: Path, requests: int) -> dict:
    home = tempfile.mkdtemp(prefix="bentoml-footprint-")
    store(venv, checkout, home)
    env = {"BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "True", "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    png = SAMPLE.read_bytes()
    t0 = time.monotonic()
    with serving(env, log=Path(home) / "serve.log", ready_timeout=300, checkout=checkout,
                 bentoml=venv / "bin" / "bentoml") as srv:
        ready_s = time.monotonic() - t0
        codes = [httpx.post(srv.url + "/upscale", files={"image": ("a.png", png)}, data={"seed": str(i)},
                            timeout=120).status_code for i in range(requests)]
        procs = [psutil.Process(srv.proc.pid), *psutil.Process(srv.proc.pid).children(recursive=True)]
        rss = sorted(round(p.memory_info().rss / 2**20) for p in procs)
        torch = any("torch" in m.path for p in procs for m in p.memory_maps())
    site = next((venv / "lib").glob("python3*/site-packages"))
    return {"ready_s": round(ready_s, 1), "ok": codes.count(200), "requests": requests, "rss_mb": rss,
            "max_rss_mb": rss[-1], "torch_loaded": torch, "site_packages_mb": round(folder_mb(site))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", type=Path, required=True)
    p.add_argument("--checkout", type=Path, default=ROOT)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--label", default="")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "footprint.json")
    args = p.parse_args(argv)
    if not (args.venv / "bin" / "bentoml").is_file():
        p.error(f"--venv {args.venv}: no bin/bentoml there")
    row = {"label": args.label, "host": host_id(), "checkout": str(args.checkout), **measure(
        args.venv.resolve(), args.checkout.resolve(), args.requests)}
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    args.out.write_text(json.dumps(rows + [row], indent=1) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
