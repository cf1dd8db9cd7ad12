"""GroupNormalization export, int8 variant, backend factory, deploy record, TensorRT, bench."""
import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from bench.run import available
from export.backends import BackendConfig, load_denoiser, ort_denoiser
from export.onnx_export import to_onnx
from search.data import BUILTIN_VAL
from export.record import (interpolate, key_for, predicted_entry, predicted_step_seconds, read_record,
                           servable_variant, update_record)
from export.runtime import RuntimeConfig, ort_session
from export.tensorrt import tensorrt_missing
from models.checkpoint import load_model
from models.errors import UserError
from tests.conftest import ROOT

NAS = ROOT / "models" / "weights" / "default"  # the searched subnet
NORMED = ROOT / "models" / "weights" / "softmax-balanced-absolute-tiny"  # a searched subnet with GroupNorm
TRT_MISSING = tensorrt_missing()


@pytest.fixture
def nas_copy(tmp_path):
    """A writable copy of the shipped searched subnet (its weights and config only)."""
    out = tmp_path / "nas-tiny"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(NAS / name, out / name)
    return out


def _io(batch: int):
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 6, 128, 128, generator=g), torch.rand(batch, generator=g)


@pytest.fixture(scope="module")
def native_gn():
    net = load_model(NORMED).net
    return net, to_onnx(net, _io(1), ["x", "noise_level"], groupnorm="native")


def test_native_groupnorm_nodes_replace_instance_norm(native_gn):
    net, data = native_gn
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    n_gn = sum(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert ops["GroupNormalization"] == n_gn > 0 and ops["InstanceNormalization"] == 0
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_native_groupnorm_matches_torch(native_gn, batch):
    net, data = native_gn
    x, level = _io(batch)
    with torch.no_grad():
        ref = net(x, level).numpy()
    out = ort_session(data, RuntimeConfig(intra_threads=2)).run(None, {"x": x.numpy(), "noise_level": level.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-4


def test_backends_agree_and_config_errors():
    bundle = load_model(NAS)
    x, level = (t.numpy() for t in _io(2))  # every denoiser takes and returns numpy arrays
    ort = load_denoiser(bundle, BackendConfig("onnxruntime", "fp32", 2))
    eager = load_denoiser(bundle, BackendConfig("torch", "fp32", 2))
    assert ort.label == "onnxruntime-fp32" and eager.label == "torch"
    a, b = ort.run(x, level), eager.run(x, level)
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.abs(a - b).max() <= 1e-4
    for bad, message in ((BackendConfig("tpu"), "unknown backend"), (BackendConfig(threads=-1), "threads must be"),
                         (BackendConfig(device="npu"), "unknown device"), (BackendConfig(variant="fp8"), "unknown variant")):
        with pytest.raises(UserError, match=message):
            bad.validate()


def test_record_interpolates_and_guards_variants(nas_copy):
    table = {"1": 0.010, "4": 0.025, "8": 0.045}
    assert interpolate(table, 4) == pytest.approx(0.025)
    assert interpolate(table, 2) == pytest.approx(0.015)
    assert interpolate(table, 6) == pytest.approx(0.035)
    assert interpolate(table, 16) == pytest.approx(0.085)  # along the last segment
    assert interpolate({"1": 0.01}, 3) == pytest.approx(0.03) and interpolate({}, 3) is None
    assert predicted_step_seconds(nas_copy, "onnxruntime", 1) is None
    update_record(nas_copy, "predicted", "onnxruntime@2t", {"threads": 2, "seconds": table})
    update_record(nas_copy, "predicted", "onnxruntime@1t", {"threads": 1, "seconds": {"1": 0.02}})
    assert predicted_step_seconds(nas_copy, "onnxruntime", 2) == pytest.approx(0.015)  # any count: the first
    assert predicted_step_seconds(nas_copy, "onnxruntime", 2, threads=1) == pytest.approx(0.04)
    assert predicted_step_seconds(nas_copy, "onnxruntime", 1, threads=4) is None
    # a second host's table at one thread goes beside the first one's, and each host reads its own
    rec = read_record(nas_copy)
    mine, other = {"threads": 1, "host": "vm|B", "seconds": {"1": 0.005}}, {"threads": 1, "host": None}
    assert key_for(rec, "onnxruntime", mine) == "onnxruntime@1t@vm|B"
    assert key_for(rec, "onnxruntime", other) == "onnxruntime@1t"  # the same host (unnamed) replaces its own
    rec = update_record(nas_copy, "predicted", key_for(rec, "onnxruntime", mine), mine)
    assert predicted_entry(rec, ["onnxruntime"], 1, "vm|B")["seconds"]["1"] == 0.005
    assert predicted_entry(rec, ["onnxruntime"], 1, "vm|C")["seconds"]["1"] == 0.02  # no table of its own: the first
    assert predicted_entry(rec, ["onnxruntime"], 2, "vm|B")["seconds"]["1"] == 0.010
    (nas_copy / "model.int8.onnx").write_bytes(b"x")
    update_record(nas_copy, "variants", "int8", {"file": "model.int8.onnx", "psnr_drop_db": 0.3})
    assert servable_variant(nas_copy, "int8") == "fp32"  # over the 0.1 dB budget
    runnable, skipped = available(["onnxruntime-fp32", "onnxruntime-int8"], {"nas": str(nas_copy)})
    assert runnable == ["onnxruntime-fp32"] and "no servable int8 variant for nas" in skipped["onnxruntime-int8"]
    with pytest.raises(UserError, match="within the PSNR budget"):
        load_denoiser(load_model(nas_copy), BackendConfig("onnxruntime", "int8"))
    update_record(nas_copy, "variants", "int8", {"file": "model.int8.onnx", "psnr_drop_db": 0.05})
    assert servable_variant(nas_copy, "int8") == "int8"
    assert available(["onnxruntime-int8"], {"nas": str(nas_copy)}) == (["onnxruntime-int8"], {})


@pytest.mark.slow
def test_deploy_int8_records_quality_and_prediction(run_srnas, nas_copy):
    proc = run_srnas("deploy", "--model", nas_copy, "--int8")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((nas_copy / "deploy.json").read_text())
    v = rec["variants"]["int8"]
    assert v["servable"] == (v["psnr_drop_db"] <= 0.1) and v["crops"] == 4 * len(BUILTIN_VAL)  # 4 per image
    assert abs(v["psnr_drop_db"] - (v["fp32_psnr_db"] - v["psnr_db"])) < 1e-9 and v["psnr_db"] > 30
    q = onnx.load(str(nas_copy / "model.int8.onnx"))
    onnx.checker.check_model(q)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    assert rec["predicted"]["onnxruntime@2t"]["threads"] == 2  # keyed by the shipped table's thread count
    meta = json.loads((NAS / "config.json").read_text())["meta"]["arch"]["predicted"]["latency_per_step_s"]
    ((lut, search_time),) = meta.items()  # the table the search priced the architecture with
    assert run_srnas("deploy", "--model", nas_copy, "--lut", lut).returncode == 0
    rec = json.loads((nas_copy / "deploy.json").read_text())
    key, entry = next((k, e) for k, e in rec["predicted"].items() if e["source"] == lut)
    assert key.startswith(f"onnxruntime@{entry['threads']}t") and "onnxruntime@2t" in rec["predicted"]  # beside
    assert entry["seconds"]["1"] == pytest.approx(search_time, rel=0.2)  # the search-time prediction, corrected
    bundle = load_model(nas_copy)
    x, level = (t.numpy() for t in _io(2))
    ref = load_denoiser(bundle, BackendConfig("torch", "fp32", 2)).run(x, level)
    quantized = ort_denoiser(nas_copy / "model.int8.onnx", RuntimeConfig(intra_threads=2))
    err = np.abs(quantized(x, level) - ref).mean() / np.abs(ref).mean()
    assert 0 < err < 0.5  # quantized, not garbage (its PSNR cost, asserted above, is the real measure)
    if v["servable"]:
        assert load_denoiser(bundle, BackendConfig("onnxruntime", "int8", 2)).label == "onnxruntime-int8"
    else:  # over the PSNR budget: the loader refuses it, as the server would
        with pytest.raises(UserError, match="no int8 variant recorded within the PSNR budget"):
            load_denoiser(bundle, BackendConfig("onnxruntime", "int8", 2))


def test_tensorrt_export_fails_clearly_without_it(run_srnas, tmp_path):
    if TRT_MISSING is None:
        pytest.skip("TensorRT and a GPU are present: the build test below runs instead")
    proc = run_srnas("export", "--format", "tensorrt", "--out", tmp_path / "m.plan")
    assert proc.returncode == 2 and "TensorRT is unavailable" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.plan").exists()
    with pytest.raises(UserError, match="no TensorRT engine"):
        load_denoiser(load_model(NAS), BackendConfig("tensorrt"))


@pytest.mark.skipif(TRT_MISSING is not None, reason=f"TensorRT engine build needs TensorRT and a GPU: {TRT_MISSING}")
def test_tensorrt_engine_builds_and_matches_torch(run_srnas, nas_copy):
    proc = run_srnas("export", "--format", "tensorrt", "--model", nas_copy, "--out", nas_copy / "model.plan")
    assert proc.returncode == 0, proc.stderr
    bundle = load_model(nas_copy)
    trt = load_denoiser(bundle, BackendConfig("tensorrt"))
    for batch in (1, 3, 8):
        x, level = _io(batch)
        with torch.no_grad():
            ref = bundle.net(x, level)
        assert (trt.run(x, level) - ref).abs().max() <= 2e-2  # fp16 engine


@pytest.mark.slow
def test_bench_measures_records_and_writes_markdown(run_srnas, nas_copy, tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nkept text\n")
    args = ("bench", f"nas={nas_copy}", "--backends", "onnxruntime-fp32,torch,tensorrt", "--batches", "1,2",
            "--reps", "3", "--out", tmp_path / "b.json", "--markdown", md, "--record", "--no-progress")
    proc = run_srnas(*args)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "b.json").read_text())
    rows = rep["models"]["nas"]["rows"]
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("onnxruntime-fp32", "torch") for n in (1, 2)}
    # the peak is a measured fp32 matmul, not the hardware's limit: a network's convolutions may run faster
    peak = rep["peak_fp32_matmul_gflops"]
    assert all(r["seconds_per_step"] > 0 and r["fraction_of_peak"] == pytest.approx(r["gflops_per_s"] / peak)
               for r in rows)
    assert 20 < rep["peak_fp32_matmul_gflops"] < 5000 and ("tensorrt" in rep["skipped"]) == (TRT_MISSING is not None)
    levels = rep["models"]["nas"]["levels"]
    assert [lv["resolution"] for lv in levels] == [128, 64, 32, 16] and all(lv["gflops_per_s"] > 0 for lv in levels)
    assert rep["models"]["nas"]["level_reps"] == 3  # --reps sets every median's runs, the levels' too
    measured = json.loads((nas_copy / "deploy.json").read_text())["measured"]
    assert measured["torch"]["seconds"]["2"] == pytest.approx(next(r["seconds_per_step"] for r in rows
                                                                   if r["backend"] == "torch" and r["batch"] == 2))
    text = md.read_text()
    assert "kept text" in text and text.count("<!-- srnas bench: start -->") == 1 and "| onnxruntime-fp32 |" in text
    assert run_srnas(*args).returncode == 0 and md.read_text().count("<!-- srnas bench: start -->") == 1
    bad = run_srnas("bench", "nas=/nonexistent", "--no-progress")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_provider_chain_follows_the_device(tmp_path):
    """cpu: the CPU provider only; cuda: TensorRT (fp16, engines cached in the configured folder), then CUDA, then
    CPU for what they cannot run; auto: cuda only where the build has a GPU provider; cuda without one: a clear
    error naming the [gpu] extra. (No GPU here: the chain is what ONNX Runtime is asked for.)"""
    from export.runtime import CPU, CUDA, TENSORRT, provider_chain

    gpu_build = [TENSORRT, CUDA, CPU]
    assert provider_chain(RuntimeConfig(device="cpu"), gpu_build) == [(CPU, {})]
    assert provider_chain(RuntimeConfig(device="auto"), [CPU]) == [(CPU, {})]
    cache = tmp_path / "trt"
    chain = provider_chain(RuntimeConfig(device="auto", trt_cache=str(cache)), gpu_build)
    assert [p for p, _ in chain] == [TENSORRT, CUDA, CPU] and cache.is_dir()
    assert chain[0][1] == {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                           "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                           "trt_timing_cache_path": str(cache)}
    assert [p for p, _ in provider_chain(RuntimeConfig(device="cuda", fp16=False), [CUDA, CPU])] == [CUDA, CPU]
    with pytest.raises(UserError, match=r"no CUDA or TensorRT execution provider .*\[gpu\] extra"):
        provider_chain(RuntimeConfig(device="cuda"), [CPU])
    with pytest.raises(UserError, match="unknown device"):
        provider_chain(RuntimeConfig(device="tpu"), gpu_build)


def test_the_backend_label_names_the_provider_that_runs():
    from export.backends import provider_label

    assert provider_label("CPUExecutionProvider", "fp32") == "onnxruntime-fp32"
    assert provider_label("CPUExecutionProvider", "int8") == "onnxruntime-int8"
    assert provider_label("TensorrtExecutionProvider", "fp32") == "onnxruntime-tensorrt-fp16"
    assert provider_label("TensorrtExecutionProvider", "fp32", fp16=False) == "onnxruntime-tensorrt-fp32"
    assert provider_label("CUDAExecutionProvider", "fp32") == "onnxruntime-cuda-fp32"


def test_a_loaded_onnxruntime_denoiser_reports_its_provider():
    from models.spec import read_spec

    loaded = load_denoiser(read_spec(NAS), BackendConfig("onnxruntime", "fp32", 1, device="auto"))
    assert loaded.provider == "CPUExecutionProvider" and loaded.label == "onnxruntime-fp32"


def test_gpu_bento_options_come_from_the_same_dependency_list():
    """The GPU bento is pyproject.toml's bento with the [gpu] extra in place of onnxruntime and a CUDA image;
    every other package and option is the CPU bento's."""
    import tomllib

    from srnas.bento import GPU_ENVS, build_options

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    cpu, gpu = build_options(False), build_options(True)
    assert cpu["python"]["packages"] == data["project"]["dependencies"] and "cuda_version" not in cpu["docker"]
    assert gpu["python"]["packages"] == [d for d in cpu["python"]["packages"] if d != "onnxruntime"] + \
        data["project"]["optional-dependencies"]["gpu"]
    assert gpu["docker"]["cuda_version"].startswith("12") and gpu["name"] == "srnas-gpu"
    assert {e["name"]: e["value"] for e in gpu["envs"]}.items() >= GPU_ENVS.items()
    assert {k: v for k, v in gpu.items() if k not in ("python", "docker", "envs", "name", "labels")} == \
        {k: v for k, v in cpu.items() if k not in ("python", "docker", "envs", "name", "labels")}


def test_a_cuda_request_that_ends_on_the_cpu_is_refused(tmp_path):
    """A GPU build of ONNX Runtime silently falls back to the CPU without a GPU; asked for cuda, that is refused."""
    import torch

    from export.runtime import RuntimeConfig, check_gpu_kept, ort_session
    from models.errors import UserError

    path = tmp_path / "id.onnx"
    torch.onnx.export(torch.nn.Identity(), (torch.zeros(1, 3),), str(path), dynamo=False)
    sess = ort_session(path, RuntimeConfig(device="cpu"))  # a real session that runs on the CPU
    check_gpu_kept(RuntimeConfig(device="cpu"), sess)
    with pytest.raises(UserError, match="SRNAS_DEVICE=cpu"):
        check_gpu_kept(RuntimeConfig(device="cuda"), sess)


def test_deploy_without_a_table_for_the_models_preset_says_so(run_srnas, tmp_path):
    """A preset with no shipped table (the folded space with GroupNorm) needs --lut: one line, exit 2, and the
    folder is left as it was."""
    folder = tmp_path / "fold2"
    shutil.copytree(ROOT / "bench" / "results" / "pareto-fold2" / "models" / "floor-1x", folder)
    before = sorted(p.name for p in folder.iterdir())
    proc = run_srnas("deploy", "--model", folder)
    assert proc.returncode == 2 and "no shipped latency table for preset 'tiny-fold2'" in proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in folder.iterdir()) == before
    assert run_srnas("deploy", "--model", folder, "--lut", "none").returncode == 0  # an export, no prediction
    assert json.loads((folder / "deploy.json").read_text())["network"]["params"] > 0
