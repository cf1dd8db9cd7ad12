"""The one ONNX Runtime session factory (serving, profiling and benchmarks all use it)."""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import UserError


def cpu_quota() -> int:
    """CPUs this process may use: the cgroup CPU quota in a container, else its affinity mask."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(n, math.ceil(quota))) if quota else n


def _cgroup_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if q <= 0 else q / period
    except (OSError, ValueError):
        return None


CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DEVICES = ("cpu", "cuda", "auto")
PROVIDER_NAMES = {CPU: "cpu", CUDA: "cuda", TENSORRT: "tensorrt"}  # as the metrics' labels name them


@dataclass
class RuntimeConfig:
    intra_threads: int = 0  # 0: the CPU quota
    inter_threads: int = 1
    graph_optimization: str = "all"  # disable | basic | extended | all
    # cpu; cuda: TensorRT (fp16, engines cached in trt_cache) then CUDA then CPU for what they cannot run;
    # auto: cuda where this ONNX Runtime build has a GPU provider, else cpu
    device: str = "cpu"
    fp16: bool = True  # TensorRT builds fp16 engines
    trt_cache: str | None = None  # folder for TensorRT engines and timing caches (a volume in the pod)
    providers: tuple[str, ...] | None = None  # an explicit provider list overrides `device`

    def threads(self) -> int:
        return self.intra_threads or cpu_quota()


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def provider_chain(cfg: RuntimeConfig, available: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(provider, options) in ONNX Runtime's order of preference for this configuration. A GPU device on a
    build without GPU providers is a user error (the CPU package is installed: see the `[gpu]` extra)."""
    if cfg.providers:
        chain = [p for p in cfg.providers if p in available] or [CPU]
        return [(p, {}) for p in chain]
    if cfg.device not in DEVICES:
        raise UserError(f"unknown device {cfg.device!r}; choose from {', '.join(DEVICES)}")
    gpu = [p for p in (TENSORRT, CUDA) if p in available]
    if cfg.device == "cpu" or (cfg.device == "auto" and not gpu):
        return [(CPU, {})]
    if not gpu:
        raise UserError("device cuda: this ONNX Runtime has no CUDA or TensorRT execution provider (available: "
                        f"{', '.join(available)}); install the [gpu] extra (onnxruntime-gpu) on a host with an "
                        "NVIDIA driver")
    chain: list[tuple[str, dict[str, Any]]] = []
    if TENSORRT in gpu:
        trt: dict[str, Any] = {"trt_fp16_enable": cfg.fp16}
        if cfg.trt_cache:
            Path(cfg.trt_cache).mkdir(parents=True, exist_ok=True)
            trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cfg.trt_cache),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(cfg.trt_cache))
        chain.append((TENSORRT, trt))
    if CUDA in gpu:
        chain.append((CUDA, {}))
    return chain + [(CPU, {})]


def ort_session(model: str | Path | bytes, cfg: RuntimeConfig | None = None):
    """An InferenceSession with graph optimisations on, explicit thread counts and the configured device's
    execution providers; `session_provider` says which one runs the graph."""
    import onnxruntime as ort

    cfg = cfg or RuntimeConfig()
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads()
    so.inter_op_num_threads = cfg.inter_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_optimization]
    chain = provider_chain(cfg, ort.get_available_providers())
    src = str(model) if isinstance(model, Path) else model
    sess = ort.InferenceSession(src, so, providers=[p for p, _ in chain], provider_options=[o for _, o in chain])
    check_gpu_kept(cfg, sess)
    return sess


def check_gpu_kept(cfg: RuntimeConfig, sess) -> None:
    """A GPU build of ONNX Runtime drops CUDA and TensorRT by itself when no GPU, driver or CUDA library is there
    and runs on the CPU: asked for cuda, that is refused rather than served 10-100x slower without a word."""
    if cfg.device == "cuda" and not cfg.providers and session_provider(sess) == CPU:
        raise UserError("device cuda: ONNX Runtime could not start its CUDA or TensorRT provider (no NVIDIA GPU or "
                        "driver, or CUDA/cuDNN libraries missing) and would run on the CPU; set SRNAS_DEVICE=cpu "
                        "to serve on the CPU")


def session_provider(sess) -> str:
    """The execution provider that runs the session's graph (the first one ONNX Runtime kept)."""
    return sess.get_providers()[0]


def host_id() -> str:
    """`node|CPU model`: latency tables and predictions name the host they were timed on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}|{cpu}"


def cpu_of(host: str) -> str:
    """The CPU model part of a `host_id` (a pod's node name changes with every pod; its CPU does not)."""
    return host.split("|", 1)[-1]


def host_slug() -> str:
    """The CPU part of `host_id` as a file-name part (e.g. `amd-epyc`), for results named by their host."""
    return cpu_of(host_id()).lower().replace("(r)", "").replace(" ", "-")
