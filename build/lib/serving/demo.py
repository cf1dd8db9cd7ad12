"""`make demo`: store the shipped model, serve it, upscale the bundled sample over HTTP, stop the server."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

from serving.launch import ROOT, serving
from serving.store import import_model

SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.demo")
    p.add_argument("--image", default=str(SAMPLE))
    p.add_argument("-o", "--output", default="upscaled.png")
    args = p.parse_args(argv)
    tag, created = import_model(None, "srnas-default")
    print(f"model store: {'stored' if created else 'already there:'} {tag}")
    with serving() as server:
        print(f"bentoml serve ready at {server.url}")
        t0 = time.perf_counter()
        with open(args.image, "rb") as f:
            r = httpx.post(server.url + "/upscale", files={"image": f}, timeout=300)
        if r.status_code != 200:
            print(f"POST /upscale -> {r.status_code}: {r.text}", file=sys.stderr)
            return 1
        Path(args.output).write_bytes(r.content)
        info = httpx.get(server.url + "/info", timeout=30).json()
        print(f"POST /upscale {args.image} -> {args.output} ({len(r.content)} bytes, "
              f"{time.perf_counter() - t0:.2f} s; {info['preset']} on {info['backend']['label']}, "
              f"{info['defaults']['sampler']} {info['defaults']['steps']} steps)")
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
