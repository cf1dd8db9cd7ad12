"""Per-step latency of one model on one backend, in a process of its own.

Each (model, backend) is timed in a fresh subprocess: torch's OpenMP workers keep spinning after
torch work and would slow ONNX Runtime in the same process by 20-45%, and ORT thread pools of
several runtime sessions would compete. The method is the one `srnas profile --check` uses: random input
at noise level 0.5, `median_seconds` after warm-up, the serving thread settings.

    python -m bench.timing '{"model": DIR, "backend": "onnxruntime-fp32", "batches": [1, 8], ...}'
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from models.errors import UserError

CPU_BACKENDS = ("onnxruntime-fp32", "onnxruntime-int8", "onnxruntime-fp32-gn", "torch", "torch-bf16")
GPU_BACKENDS = ("torch-cuda", "torch-cuda-graph", "tensorrt")
Step = Callable[[], Any]


@dataclass
class TimingJob:
    model: str
    backend: str
    batches: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    threads: int = 0
    warmup: int = 3
    reps: int = 20


def gpu_missing(backend: str) -> str | None:
    """Why a GPU backend cannot run here, or None."""
    if backend == "tensorrt":
        from export.tensorrt import tensorrt_missing

        return tensorrt_missing()
    return None if torch.cuda.is_available() else "no CUDA GPU visible to torch"


def _inputs(batch: int, size: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 6, size, size, generator=g).to(device), torch.full((batch,), 0.5, device=device)


def _cpu_step(job: TimingJob, bundle, batch: int) -> Step:
    from export.backends import BackendConfig, load_denoiser, ort_denoiser
    from export.onnx_export import to_onnx
    from export.runtime import RuntimeConfig, cpu_quota

    x, level = _inputs(batch, bundle.net.cfg.image_size)
    threads = job.threads or cpu_quota()
    if job.backend == "onnxruntime-fp32-gn":  # the same graph with native GroupNormalization nodes
        data = to_onnx(bundle.net, (x[:1], level[:1]), ["x", "noise_level"], groupnorm="native")
        run = ort_denoiser(data, RuntimeConfig(intra_threads=threads))
    elif job.backend.startswith("onnxruntime-"):
        run = load_denoiser(bundle, BackendConfig("onnxruntime", job.backend.split("-", 1)[1], threads)).run
    else:
        torch.set_num_threads(threads)
        net = bundle.net.eval()
        if job.backend == "torch-bf16":
            def bf16():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return net(x, level)

            return bf16
        run = load_denoiser(bundle, BackendConfig("torch", "fp32", threads)).run
    xn, ln = x.numpy(), level.numpy()  # every Denoiser takes numpy arrays
    return lambda: run(xn, ln)


def _gpu_step(job: TimingJob, bundle, batch: int) -> Step:
    """Device-resident inputs and outputs; each call ends with a synchronize."""
    x, level = _inputs(batch, bundle.net.cfg.image_size, "cuda")
    if job.backend == "tensorrt":
        from export.tensorrt import TensorRTDenoiser

        trt = TensorRTDenoiser(Path(job.model) / "model.plan")
        return lambda: trt(x, level)
    net = bundle.net.cuda().eval()
    if job.backend == "torch-cuda":
        def step():
            with torch.inference_mode():
                net(x, level)
            torch.cuda.synchronize()
        return step
    stream = torch.cuda.Stream()  # CUDA graph: capture one step, replay it
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(3):
            net(x, level)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            net(x, level)
    torch.cuda.synchronize()
    return lambda: (graph.replay(), torch.cuda.synchronize())


def run_job(job: TimingJob) -> dict[str, float]:
    from models.checkpoint import load_model
    from search.latency import median_seconds

    bundle = load_model(job.model)
    if job.backend in GPU_BACKENDS:
        why = gpu_missing(job.backend)
        if why:
            raise UserError(f"{job.backend}: {why}")
    make = _gpu_step if job.backend in GPU_BACKENDS else _cpu_step
    return {str(b): median_seconds(make(job, bundle, b), job.warmup, job.reps) for b in job.batches}


def in_subprocess(module: str, *args: str, timeout: float = 1800) -> Any:
    """Run `python -m module args...` from the repository root; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)[:200]} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_in_subprocess(job: TimingJob) -> dict[str, float]:
    return in_subprocess("bench.timing", json.dumps(asdict(job)))


def main() -> None:
    print(json.dumps(run_job(TimingJob(**json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
