"""torch -> ONNX, batch axis dynamic, opset >= 18."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import torch

OPSET = 18


def to_onnx(module: torch.nn.Module, args: Sequence[torch.Tensor], input_names: Sequence[str] | None = None,
            path: str | Path | None = None, dynamo: bool = False, opset: int = OPSET) -> bytes:
    """Export with every input's and the output's first axis dynamic; returns the model bytes.

    The TorchScript exporter is the default here because profiling exports hundreds of blocks
    (about 1 s each against 15-20 s for the dynamo exporter); both give the same graph ops.
    """
    module = module.eval()
    with torch.no_grad():  # lazily built parts (a supernet's narrow copies) must exist before tracing
        module(*args)
    names = list(input_names or [f"input{i}" for i in range(len(args))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            prog = torch.onnx.export(module, tuple(args), dynamo=True, opset_version=opset, input_names=names,
                                     output_names=["out"], dynamic_shapes=[{0: batch} for _ in args], verbose=False)
            data = prog.model_proto.SerializeToString()
        else:
            buf = io.BytesIO()
            axes = {n: {0: "batch"} for n in names} | {"out": {0: "batch"}}
            torch.onnx.export(module, tuple(args), buf, dynamo=False, opset_version=opset, input_names=names,
                              output_names=["out"], dynamic_axes=axes)
            data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def export_unet(net: torch.nn.Module, path: str | Path, dynamo: bool = False, size: int | None = None) -> Path:
    """Export a UNet denoiser (inputs x: B x 6 x H x W, noise_level: B) and check the file with onnx.checker."""
    import onnx

    size = size or net.cfg.image_size
    args = (torch.zeros(1, net.cfg.in_channels, size, size), torch.full((1,), 0.5))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_onnx(net, args, ["x", "noise_level"], path, dynamo=dynamo)
    onnx.checker.check_model(str(path))
    return path
