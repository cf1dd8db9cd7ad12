"""TensorRT: build an fp16 engine from the ONNX file, and run it as the sampler's denoiser.

TensorRT and a CUDA GPU are needed (and torch's CUDA build for the buffers). Where any is missing,
`require_tensorrt` raises a UserError saying which, so `srnas export --format tensorrt` exits with a clear
message and the tests skip. torch is imported only here, when an engine is built or run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import UserError


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("the `tensorrt` Python package is not installed (pip install tensorrt on a machine with an "
                "NVIDIA driver; its wheel downloads the TensorRT libraries at install time)")
    try:
        import torch
    except ImportError:
        return "torch is not installed (the engine's buffers are torch CUDA tensors)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (TensorRT engines run on NVIDIA GPUs only)"
    return None


def require_tensorrt():
    why = tensorrt_missing()
    if why:
        raise UserError(f"TensorRT is unavailable: {why}")
    import tensorrt as trt

    return trt


@dataclass
class EngineConfig:
    max_batch: int = 16
    opt_batch: int = 8
    fp16: bool = True
    workspace_gib: float = 4.0


def build_engine(onnx_path: str | Path, out: str | Path, cfg: EngineConfig | None = None) -> Path:
    """Parse the ONNX file and serialize an engine with one optimisation profile for batch 1..max."""
    trt = require_tensorrt()
    cfg = cfg or EngineConfig()
    if not 1 <= cfg.opt_batch <= cfg.max_batch:
        raise UserError(f"need 1 <= opt batch <= max batch, got {cfg.opt_batch} and {cfg.max_batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * 2**30))
    if cfg.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        rest = tuple(inp.shape)[1:]
        profile.set_shape(inp.name, (1, *rest), (cfg.opt_batch, *rest), (cfg.max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    out = Path(out)
    out.write_bytes(bytes(serialized))
    return out


class TensorRTDenoiser:
    """Runs an engine on torch CUDA tensors; takes and returns numpy float32 arrays like every denoiser."""

    def __init__(self, engine_path: str | Path):
        trt = require_tensorrt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise UserError(f"{engine_path}: not a TensorRT engine for this TensorRT version and GPU")
        self.context = self.engine.create_execution_context()
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    def __call__(self, x: np.ndarray, noise_level: np.ndarray) -> np.ndarray:
        torch = self.torch
        inputs = {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to("cuda"),
                  "noise_level": torch.from_numpy(np.ascontiguousarray(noise_level, dtype=np.float32)).to("cuda")}
        for name, t in inputs.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape("out")), device="cuda", dtype=torch.float32)
        self.context.set_tensor_address("out", out.data_ptr())
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return out.cpu().numpy()
