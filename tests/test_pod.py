"""The serving image and the rendered Kubernetes Deployment under podman (container/), for real: the image is
built here (`make image`'s script: debootstrap base, bento, generated Containerfile, podman build), the CPU
overlay's Deployment is played with `podman kube play` and checked end to end (readiness, /upscale, /metrics, uid,
read-only root, a drain, nothing left after `podman kube down`); failures are one line naming the step, with
everything removed. The GPU image is built on the same base and must refuse to start on this GPU-less machine.

podman, runc and debootstrap come from apt (.ci/run installs them); where podman is missing the tests skip, saying
so. They need root or passwordless sudo (debootstrap, rootful podman)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # container/ is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))
WORK = ROOT / "runs" / "image"
pytestmark = pytest.mark.slow
MAX_IMAGE_MB = 700


def podman_or_skip() -> None:
    if not shutil.which("podman"):
        pytest.skip("podman is not installed here (apt-get install podman runc catatonit debootstrap, as .ci/run "
                    "does): the image and pod checks need it")


def run(module: str, *args: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def podman(*args: str) -> str:
    from container.podman import command

    return subprocess.run(command(*args), capture_output=True, text=True, timeout=120, check=True).stdout


def one_line_error(r: subprocess.CompletedProcess, prefix: str) -> str:
    """A failure is a non-zero exit and one line on stderr, `<script>: <step>: <why>`."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith(prefix), r.stderr[-3000:]
    return lines[0]


def nothing_left_of_the_checks() -> None:
    names = podman("ps", "-a", "--format", "{{.Names}}").split() + podman("pod", "ps", "--format", "{{.Name}}").split()
    volumes = podman("volume", "ls", "--format", "{{.Name}}").split()
    assert [n for n in names + volumes if n.startswith("srnas-check-")] == []


def manifest(overlay: str) -> dict:
    from container.pod import kubectl

    out = subprocess.run([kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    (dep,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    return dep


def build(*args: str) -> dict:
    r = run("container.build", *args, timeout=2400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    print(r.stdout.strip().splitlines()[-1])
    return json.loads((WORK / ("gpu" if "--gpu" in args else "cpu") / "image.json").read_text())


@pytest.fixture(scope="module")
def cpu_image() -> dict:
    podman_or_skip()
    return build()


@pytest.fixture(scope="module")
def gpu_image() -> dict:
    podman_or_skip()
    return build("--gpu")


def in_image(image: str, code: str) -> str:
    return podman("run", "--rm", "--read-only", "--entrypoint", "/app/.venv/bin/python", image, "-c", code).strip()


def shipped() -> list[str]:
    """The store names of the shipped models this checkout has: what the bento, and so the image, must carry."""
    from models.spec import SHIPPED_MODELS

    return sorted(f"srnas-{name}" for name, folder in SHIPPED_MODELS.items() if (folder / "config.json").is_file())


def test_image_carries_the_bento_and_its_models_runs_as_the_manifests_user_without_torch(cpu_image):
    assert [m.split(":")[0] for m in cpu_image["models"]] == shipped()
    assert cpu_image["size_mb"] <= MAX_IMAGE_MB, cpu_image
    pod = manifest("cpu")["spec"]["template"]["spec"]
    user = podman("image", "inspect", "--format", "{{.Config.User}}", cpu_image["image"]).strip()
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    listed = in_image(cpu_image["image"], "import importlib.metadata as m, json; print(json.dumps(sorted("
                                          "d.metadata['Name'].lower() for d in m.distributions())))")
    packages = set(json.loads(listed))
    assert {"bentoml", "onnxruntime", "numpy", "pillow"} <= packages
    assert not {p for p in packages if p.startswith(("torch", "nvidia-cu", "triton"))}, packages
    models = in_image(cpu_image["image"], "import os; print(sorted(os.listdir('/home/bentoml/bento/models')))")
    assert models == str(shipped())
    containerfile = Path(cpu_image["containerfile"]).read_text()
    assert "FROM localhost/srnas-base:bookworm" in containerfile and "USER 1034:1034" in containerfile
    print(f"{cpu_image['image']}: {cpu_image['size_mb']} MB, podman build {cpu_image['podman_build_s']} s")


def test_the_rendered_deployment_serves_drains_and_leaves_nothing_under_podman(cpu_image, tmp_path):
    """The CPU overlay as rendered (the service calibrates its latency prediction at start-up, as in a cluster)."""
    out = tmp_path / "pod.json"
    r = run("container.pod", "--image", cpu_image["image"], "--json", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    figures = json.loads(out.read_text())
    pod = manifest("cpu")["spec"]["template"]["spec"]
    assert figures["uid"] == pod["securityContext"]["runAsUser"] and figures["read_only_root"] is True
    assert 0 < figures["play_to_ready_s"] < 240 and figures["upscale_s"] < 60
    assert figures["drain_s"] < pod["terminationGracePeriodSeconds"]
    nothing_left_of_the_checks()
    print(r.stdout.strip().splitlines()[-1])


def test_a_pod_that_never_becomes_ready_is_one_line_and_removed(cpu_image):
    r = run("container.pod", "--image", cpu_image["image"], "--env", "SRNAS_MODELS=default=srnas-absent",
            "--timeout", "120", timeout=600)
    line = one_line_error(r, "pod: readiness: ")
    assert "srnas-absent" in line, line
    nothing_left_of_the_checks()


def test_a_missing_image_is_one_line():
    podman_or_skip()
    line = one_line_error(run("container.pod", "--image", "localhost/srnas:absent", timeout=300), "pod: image: ")
    assert "make image" in line
    nothing_left_of_the_checks()


@pytest.mark.parametrize("module", ["container.build", "container.pod"])
def test_a_missing_podman_is_one_line(module, tmp_path):
    """PATH without podman (the venv's python still runs): the first step says what to install."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    line = one_line_error(run(module, timeout=120, env=env), f"{module.split('.')[1]}: prerequisites: ")
    assert re.search(r": podman not found: install it \(apt-get install podman runc catatonit debootstrap\)$", line)


def test_a_failed_image_build_is_one_line_naming_the_step(cpu_image):
    line = one_line_error(run("container.build", "--image", "localhost/Not A Reference", timeout=1200), "build: ")
    assert line.startswith("build: podman build: ") and "Not A Reference" in line, line


def test_the_gpu_bentos_own_containerfile_is_complete(gpu_image):
    """BentoML's Dockerfile for the GPU bento (CUDA base image: it builds where registries are reachable) holds
    every part, and the bento asks for onnxruntime-gpu alone; the local GPU image is within the same bounds."""
    docker = Path(gpu_image["bentoml_dockerfile"]).read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.\S+-cudnn-runtime", docker, re.M)
    assert re.search(r"^ENV SRNAS_DEVICE=\$SRNAS_DEVICE", docker, re.M) and "ARG SRNAS_DEVICE=cuda" in docker
    assert "USER bentoml" in docker and "EXPOSE 3000" in docker and "ARG BENTO_USER_UID=1034" in docker
    reqs = (Path(gpu_image["bentoml_dockerfile"]).parents[1] / "python" / "requirements.txt").read_text().split()
    import tomllib

    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert set(gpu_extra) <= set(reqs) and not [r for r in reqs if re.match(r"onnxruntime\b(?!-gpu)", r)]
    assert [m.split(":")[0] for m in gpu_image["models"]] == shipped()
    assert gpu_image["size_mb"] <= 2 * MAX_IMAGE_MB, gpu_image  # onnxruntime-gpu alone is about 300 MB


def test_the_gpu_image_refuses_to_start_without_a_gpu(gpu_image):
    """The GPU overlay (SRNAS_DEVICE=cuda) on this machine, which has no GPU: the server must say so and never
    turn ready, instead of serving on the CPU behind a GPU pod's name. One thread: the overlay's CPU limit (4) may
    exceed this machine's cores, which the server would refuse first, for another reason."""
    r = run("container.pod", "--overlay", "gpu", "--image", gpu_image["image"], "--expect-no-gpu", "--env",
            "SRNAS_THREADS=1", "--env", "OMP_NUM_THREADS=1", "--timeout", "180", timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "refused to start without a GPU" in r.stdout and "device cuda" in r.stdout
    nothing_left_of_the_checks()
    print(r.stdout.strip().splitlines()[-1])
