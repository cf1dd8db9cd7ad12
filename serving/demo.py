"""`make demo`: store the shipped models, serve them, upscale the bundled sample over HTTP, stop the server."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

from serving.launch import ROOT, serving
from serving.store import import_shipped

SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.demo")
    p.add_argument("--image", default=str(SAMPLE))
    p.add_argument("-o", "--output", default="upscaled.png")
    args = p.parse_args(argv)
    for name, folder, tag, created in import_shipped():
        print(f"model store: {name}: " + (f"{'stored' if created else 'already there:'} {tag}" if tag else
                                          f"{folder} is not in this installation"))
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
              f"{time.perf_counter() - t0:.2f} s; model {info['default_model']!r}: {info['preset']} on "
              f"{info['backend']['label']}, {info['defaults']['sampler']} {info['defaults']['steps']} steps; "
              f"served: {', '.join(info['models'])})")
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
