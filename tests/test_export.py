"""ONNX export: checker, dynamic batch, parity with torch in a real ONNX Runtime session."""
import numpy as np
import onnx
import pytest
import torch

from export.runtime import RuntimeConfig, cpu_quota, ort_session
from models.checkpoint import load_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tests.conftest import ROOT
    import subprocess
    from tests.conftest import srnas_cmd

    out = tmp_path_factory.mktemp("onnx") / "default.onnx"
    proc = subprocess.run([*srnas_cmd(), "export", "--format", "onnx", "--out", str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_export_passes_checker_with_opset_18(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch axis is symbolic


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnxruntime_matches_torch(exported, batch):
    net = load_model().net
    sess = ort_session(exported, RuntimeConfig(intra_threads=2))
    g = torch.Generator().manual_seed(batch)
    x, level = torch.randn(batch, 6, 128, 128, generator=g), torch.rand(batch, generator=g)
    with torch.no_grad():
        ref = net(x, level).numpy()
    out = sess.run(None, {"x": x.numpy(), "noise_level": level.numpy()})[0]
    assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-4


def test_preset_export_and_bad_input(run_srnas, tmp_path):
    proc = run_srnas("export", "--preset", "tiny", "--out", tmp_path / "tiny.onnx")
    assert proc.returncode == 0, proc.stderr
    assert onnx.load(str(tmp_path / "tiny.onnx")).graph.node
    bad = run_srnas("export", "--preset", "huge", "--out", tmp_path / "x.onnx")
    assert bad.returncode == 2 and "unknown preset" in bad.stderr and "Traceback" not in bad.stderr


def test_cpu_quota_is_positive_and_bounded():
    import os

    assert 1 <= cpu_quota() <= (os.cpu_count() or 1)
    assert RuntimeConfig().threads() == cpu_quota()
