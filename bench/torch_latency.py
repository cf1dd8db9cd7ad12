"""Per-step latency of the base UNet presets in torch eager (medians after warm-up).

Usage: python -m bench.torch_latency [--presets tiny,sr3-paper] [--batches 1,8] [--threads 2] [--reps 10]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from models.config import preset
from models.unet import UNet


def median_step_seconds(net: torch.nn.Module, batch: int, size: int = 128, warmup: int = 2, reps: int = 10) -> float:
    x = torch.randn(batch, net.cfg.in_channels, size, size)
    level = torch.full((batch,), 0.5)
    times = []
    with torch.inference_mode():
        for i in range(warmup + reps):
            t0 = time.perf_counter()
            net(x, level)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="tiny,sr3-paper")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.presets.split(","):
        net = UNet(preset(name)).eval()
        for b in (int(v) for v in args.batches.split(",")):
            reps = args.reps if name != "sr3-paper" else max(3, args.reps // 3)
            s = median_step_seconds(net, b, reps=reps)
            rows.append({"preset": name, "batch": b, "median_step_s": s, "per_image_step_s": s / b})
            print(f"{name:10s} batch {b:2d}: {s * 1e3:9.1f} ms/step  ({s / b * 1e3:8.1f} ms per image-step)", flush=True)
    print(json.dumps({"host": platform.node(), "cpu": platform.processor(), "threads": args.threads,
                      "torch": torch.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
