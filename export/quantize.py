"""ONNX Runtime int8 static quantization, calibrated on what the network sees while serving.

Calibration inputs are captured from real sampling runs (training photos, several step counts and
both samplers), so activation ranges cover every noise level a request can reach. QDQ format with
per-channel int8 weights and uint8 activations: the VNNI kernels of x86 CPUs run it.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.checkpoint import ModelBundle
from models.sampler import SamplerConfig, sample
from models.eager import torch_denoiser
from models.upscaler import tile_seeds


@dataclass
class CalibrationConfig:
    crops: int = 16  # training crops
    settings: list[tuple[str, int]] = field(default_factory=lambda: [("ddim", 1), ("ddim", 4), ("ddpm", 10)])
    method: str = "percentile"  # minmax | entropy | percentile; percentile lost least PSNR (BENCHMARKS.md)
    fp32_ends: bool = True  # keep the first and last conv (image in, prediction out) in fp32
    seed: int = 0


def calibration_inputs(bundle: ModelBundle, bic: np.ndarray, cfg: CalibrationConfig) -> list[dict[str, np.ndarray]]:
    """The denoiser inputs of real sampling runs on `bic`, bicubic-upsampled training crops (N x 3 x H x W
    in [-1, 1]; the caller picks the data, e.g. `search.data.calibration_crops`)."""
    net, feeds = torch_denoiser(bundle.net), []

    def capture(x: np.ndarray, level: np.ndarray) -> np.ndarray:
        feeds.append({"x": x.copy(), "noise_level": level.copy()})
        return net(x, level)

    for sampler, steps in cfg.settings:
        sample(capture, bundle.diffusion, bic, SamplerConfig(sampler, steps),
               tile_seeds(cfg.seed, len(bic)))
    return feeds


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over captured feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def quantize_int8(fp32_onnx: str | Path, out: str | Path, bundle: ModelBundle, crops: np.ndarray,
                  cfg: CalibrationConfig | None = None) -> Path:
    """int8 QDQ model calibrated on the denoiser inputs of sampling runs on `crops`."""
    from onnxruntime.quantization import CalibrationMethod

    cfg = cfg or CalibrationConfig()
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    feeds = calibration_inputs(bundle, crops, cfg)
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # the quantizer warns once for every 1-D constant it leaves alone
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _quantize(Path(fp32_onnx), Path(out), Path(tmp) / "pre.onnx", feeds, method, cfg.fp32_ends)
    finally:
        root.setLevel(level)
    return Path(out)


def _quantize(src: Path, out: Path, pre: Path, feeds: list[dict[str, np.ndarray]], method, fp32_ends: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]  # topological order
    exclude = [convs[0], convs[-1]] if fp32_ends and convs else []
    quantize_static(str(pre), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_exclude=exclude,  # norms stay fp32
                    extra_options={"CalibTensorRangeSymmetric": False})
