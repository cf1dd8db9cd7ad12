"""torch -> ONNX, batch axis dynamic, opset >= 18."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch

OPSET = 18
GROUPNORM = ("decomposed", "native")  # exporter default | one GroupNormalization node per GroupNorm
NATIVE_GN_OPSET = 21  # GroupNormalization-18 (per-group affine) is deprecated; 21 has the per-channel affine


def _native_group_norm(g, x, groups, weight, bias, eps, cudnn_enabled):
    """aten::group_norm -> GroupNormalization with opset 21's per-channel scale and bias.

    The TorchScript exporter stops at opset 20, so the graph is built at 18 and its opset import is
    raised to 21 afterwards; none of the other ops it uses changed meaning between 18 and 21.
    """
    from torch.onnx import symbolic_helper as sh

    n, e = sh._get_const(groups, "i", "num_groups"), sh._get_const(eps, "f", "eps")
    return g.op("GroupNormalization", x, weight, bias, epsilon_f=e, num_groups_i=n)


def _raise_opset(data: bytes, version: int) -> bytes:
    import onnx

    model = onnx.load_from_string(data)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = version
    return model.SerializeToString()


@contextlib.contextmanager
def _groupnorm_symbolic(mode: str, opset: int) -> Iterator[None]:
    if mode not in GROUPNORM:
        raise ValueError(f"unknown GroupNorm lowering {mode!r}; choose from {', '.join(GROUPNORM)}")
    if mode == "decomposed":
        yield
        return
    torch.onnx.register_custom_op_symbolic("aten::group_norm", _native_group_norm, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::group_norm", opset)


def to_onnx(module: torch.nn.Module, args: Sequence[torch.Tensor], input_names: Sequence[str] | None = None,
            path: str | Path | None = None, dynamo: bool = False, opset: int = OPSET,
            groupnorm: str = "decomposed") -> bytes:
    """Export with every input's and the output's first axis dynamic; returns the model bytes.

    `groupnorm="native"` emits GroupNormalization (TensorRT runs it as one fused layer); the exporters'
    own lowering is Reshape + InstanceNormalization + Reshape + affine, which ONNX Runtime's CPU fuses.

    The TorchScript exporter is the default here because profiling exports hundreds of blocks
    (about 1 s each against 15-20 s for the dynamo exporter); both give the same graph ops.
    """
    module = module.eval()
    with torch.no_grad():  # lazily built parts (a supernet's narrow copies) must exist before tracing
        module(*args)
    names = list(input_names or [f"input{i}" for i in range(len(args))])
    if dynamo and groupnorm != "decomposed":
        raise ValueError("native GroupNormalization is emitted by the TorchScript exporter only")
    with warnings.catch_warnings(), _groupnorm_symbolic(groupnorm, opset):
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
    if groupnorm == "native":
        data = _raise_opset(data, NATIVE_GN_OPSET)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def export_unet(net: torch.nn.Module, path: str | Path, dynamo: bool = False, size: int | None = None,
                groupnorm: str = "decomposed") -> Path:
    """Export a UNet denoiser (inputs x: B x 6 x H x W, noise_level: B) and check the file with onnx.checker."""
    import onnx

    size = size or net.cfg.image_size
    args = (torch.zeros(1, net.cfg.in_channels, size, size), torch.full((1,), 0.5))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_onnx(net, args, ["x", "noise_level"], path, dynamo=dynamo, groupnorm=groupnorm)
    onnx.checker.check_model(str(path))
    return path
