"""The machine's fp32 matmul peak: torch sgemm on large square matrices, in its own process."""
from __future__ import annotations

import sys

import torch


def matmul_gflops(threads: int, n: int = 2048, reps: int = 10) -> float:
    from search.latency import median_seconds

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / median_seconds(lambda: torch.mm(a, b), 3, reps) / 1e9


def peak_in_subprocess(threads: int) -> float:
    from bench.timing import in_subprocess

    return float(in_subprocess("bench.peak", str(threads), timeout=600))


if __name__ == "__main__":
    print(matmul_gflops(int(sys.argv[1])))
