"""Bento builds from pyproject.toml, the one place that lists the serving dependencies and build options.

`bentoml build` reads pyproject.toml itself (the CPU bento). The GPU bento (`srnas bento --gpu`) takes the same
options and packages with two changes: the `[gpu]` extra's packages in place of `onnxruntime` (the same module,
built with the CUDA and TensorRT execution providers) and a CUDA base image; the service then runs ONNX Runtime on
the GPU (SRNAS_DEVICE=cuda) with its TensorRT engine cache where SRNAS_TRT_CACHE points."""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CUDA_VERSION = "12.6"  # a CUDA base image BentoML 1.4 offers, within onnxruntime-gpu's CUDA 12 support
GPU_ENVS = {"SRNAS_BACKEND": "onnxruntime", "SRNAS_DEVICE": "cuda", "SRNAS_TRT_CACHE": "/var/cache/srnas-trt"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def build_options(gpu: bool = False, pyproject: Path = ROOT / "pyproject.toml") -> dict[str, Any]:
    """Keyword arguments for `bentoml.bentos.build`: [tool.bentoml.build] with [project].dependencies as the
    Python packages; for the GPU, the [gpu] extra replaces onnxruntime and the image gets CUDA."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    opts = copy.deepcopy(data["tool"]["bentoml"]["build"])
    packages = list(data["project"]["dependencies"])
    opts["name"] = data["project"]["name"]
    if gpu:
        extra = data["project"]["optional-dependencies"]["gpu"]
        replaced = {_name(r) for r in extra} | {"onnxruntime"}
        packages = [r for r in packages if _name(r) not in replaced] + extra
        opts["name"] += "-gpu"
        opts["labels"] = {**opts.get("labels", {}), "accelerator": "gpu"}
        opts["docker"] = {**opts.get("docker", {}), "cuda_version": CUDA_VERSION}
        envs = {e["name"]: e["value"] for e in opts.get("envs", [])} | GPU_ENVS
        opts["envs"] = [{"name": k, "value": v} for k, v in envs.items()]
    opts["python"] = {**opts.get("python", {}), "packages": packages}
    return opts


def build(gpu: bool = False) -> str:
    """Build the bento into the BentoML store (the model must be imported first: `srnas store-import`)."""
    import bentoml

    from bentoml._internal.bento.build_config import BentoEnvSchema  # pinned BentoML (test_bentoml_internals)

    opts = build_options(gpu)
    # bentofile.yaml's loader turns env entries into BentoEnvSchema; bentos.build takes them only in that form
    opts["envs"] = [BentoEnvSchema(**e) for e in opts.get("envs", [])]
    bento = bentoml.bentos.build(**opts, build_ctx=str(ROOT))
    return str(bento.tag)
