"""The one ONNX Runtime session factory (serving, profiling and benchmarks all use it)."""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path


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


@dataclass
class RuntimeConfig:
    intra_threads: int = 0  # 0: the CPU quota
    inter_threads: int = 1
    graph_optimization: str = "all"  # disable | basic | extended | all
    providers: tuple[str, ...] | None = None  # None: TensorRT, CUDA when present, then CPU

    def threads(self) -> int:
        return self.intra_threads or cpu_quota()


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def ort_session(model: str | Path | bytes, cfg: RuntimeConfig | None = None):
    """An InferenceSession with graph optimisations on and explicit thread counts."""
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
    available = ort.get_available_providers()
    wanted = cfg.providers or ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    src = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(src, so, providers=providers)


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
