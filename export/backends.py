"""The runtime behind the sampler's `Denoiser`: ONNX Runtime (default), a TensorRT engine, or torch.

Serving, benchmarks and the CLI all build their denoiser here, so the sampler never knows which
runtime evaluates the network. Serving fills the configuration from its environment (serving/config.py). Only the torch backend (and exporting a folder that has no
`model.onnx` yet) imports torch: serving a folder with its `model.onnx` needs numpy and ONNX Runtime.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.record import read_record, servable_variant
from export.runtime import (DEVICES, PROVIDER_NAMES, RuntimeConfig, cpu_quota, ort_session,
                            session_provider)
from models.diffusion import Denoiser
from models.errors import UserError
from models.spec import ModelSpec

Model = ModelSpec  # or models.checkpoint.ModelBundle (the same fields, plus the torch network `net`)

BACKENDS = ("onnxruntime", "tensorrt", "torch")
VARIANTS = ("fp32", "int8", "auto")
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
ENGINE_FILE = "model.plan"


@dataclass
class BackendConfig:
    backend: str = "onnxruntime"
    variant: str = "fp32"  # auto: the fastest variant recorded within the PSNR budget
    threads: int = 0  # 0: the CPU quota
    device: str = "cpu"  # ONNX Runtime: cpu | cuda | auto (export/runtime.py: provider_chain)
    trt_cache: str = ""  # ONNX Runtime's TensorRT engine cache folder ("": none)

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.variant not in VARIANTS:
            raise UserError(f"unknown variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        if self.threads < 0:
            raise UserError(f"threads must be >= 0, got {self.threads}")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")


@dataclass
class LoadedDenoiser:
    run: Denoiser
    backend: str  # e.g. "onnxruntime", "tensorrt", "torch"
    variant: str  # fp32 | int8 | fp16
    label: str  # backend label for metrics, e.g. "onnxruntime-int8", "onnxruntime-tensorrt-fp16"
    provider: str = "CPUExecutionProvider"  # the ONNX Runtime execution provider that runs the graph


def resolve_variant(bundle: Model, wanted: str) -> str:
    if bundle.path is None or wanted == "fp32":
        return "fp32"
    if wanted == "auto":
        rec = read_record(bundle.path)
        fp32 = rec.get("measured", {}).get("onnxruntime-fp32", {}).get("seconds", {}).get("1")
        ok = [v for v in rec.get("variants", {}) if servable_variant(bundle.path, v) == v]
        faster = [v for v in ok if fp32 is None or rec["variants"][v].get("seconds", {}).get("1", fp32) < fp32]
        return faster[0] if faster else "fp32"
    if servable_variant(bundle.path, wanted) != wanted:
        raise UserError(f"{bundle.path}: no {wanted} variant recorded within the PSNR budget "
                        f"(run `srnas export --format onnx --quantize {wanted} --model {bundle.path}`)")
    return wanted


def load_denoiser(bundle: Model, cfg: BackendConfig | None = None) -> LoadedDenoiser:
    cfg = cfg or BackendConfig()
    cfg.validate()
    threads = cfg.threads or cpu_quota()
    if cfg.backend == "torch":
        import torch

        from models.eager import torch_denoiser

        torch.set_num_threads(threads)
        return LoadedDenoiser(torch_denoiser(_network(bundle)), "torch", "fp32", "torch")
    if cfg.backend == "tensorrt":
        from export.tensorrt import TensorRTDenoiser

        engine = Path(bundle.path or ".") / ENGINE_FILE
        if not engine.is_file():
            raise UserError(f"{engine}: no TensorRT engine (build one with "
                            f"`srnas export --format tensorrt --model {bundle.path}`)")
        return LoadedDenoiser(TensorRTDenoiser(engine), "tensorrt", "fp16", "tensorrt")
    variant = resolve_variant(bundle, cfg.variant)
    rt = RuntimeConfig(intra_threads=threads, device=cfg.device, trt_cache=cfg.trt_cache or None)
    sess = ort_session(onnx_source(bundle, variant), rt)
    provider = session_provider(sess)
    return LoadedDenoiser(session_denoiser(sess), "onnxruntime", variant, provider_label(provider, variant, rt.fp16),
                          provider)


def provider_label(provider: str, variant: str, fp16: bool = True) -> str:
    """The metrics' backend label: onnxruntime-<variant> on the CPU, and the GPU provider named with the
    precision it runs (TensorRT builds fp16 engines from an fp32 graph when asked to)."""
    name = PROVIDER_NAMES.get(provider, provider)
    if name == "cpu":
        return f"onnxruntime-{variant}"
    precision = "fp16" if name == "tensorrt" and fp16 and variant == "fp32" else variant
    return f"onnxruntime-{name}-{precision}"


def _network(model: Model):
    """The torch network: the bundle's own, or loaded from the spec's folder (this imports torch)."""
    net = getattr(model, "net", None)
    if net is None:
        from models.checkpoint import load_model

        net = load_model(model.path).net
    return net


def onnx_source(bundle: Model, variant: str = "fp32") -> Path | bytes:
    """The model folder's exported file, or (fp32 only) a fresh in-memory export, which needs torch."""
    if bundle.path is not None and (bundle.path / ONNX_FILES[variant]).is_file():
        return bundle.path / ONNX_FILES[variant]
    if variant != "fp32":
        raise UserError(f"{bundle.path}: missing {ONNX_FILES[variant]}")
    import torch

    from export.onnx_export import to_onnx

    net, size = _network(bundle), bundle.unet.image_size
    args = (torch.zeros(1, bundle.unet.in_channels, size, size), torch.full((1,), 0.5))
    return to_onnx(net, args, ["x", "noise_level"])


def ort_denoiser(model: Path | bytes, cfg: RuntimeConfig) -> Denoiser:
    return session_denoiser(ort_session(model, cfg))


def session_denoiser(sess) -> Denoiser:
    def run(x: np.ndarray, noise_level: np.ndarray) -> np.ndarray:
        feed = {"x": np.ascontiguousarray(x, dtype=np.float32),
                "noise_level": np.ascontiguousarray(noise_level, dtype=np.float32)}
        return sess.run(None, feed)[0]

    return run
