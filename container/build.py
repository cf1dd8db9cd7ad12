"""The serving image, built offline apart from the package registries: the bento (`bentoml build` from
pyproject.toml; `--gpu`: the GPU bento that `srnas bento --gpu` describes) with the models it names, on the
local Debian base (container/base.py) instead of python:3.11-slim, which cannot be pulled where registries are
unreachable.

Steps, each named in the one-line error a failure prints:
  store import   `srnas store-import`: the shipped models into a private BentoML home
  bento build    `bentoml build` (--gpu: of srnas.bento's GPU options)
  build context  BentoML's own containerize context: the bento, the models it lists, its Dockerfile
  wheels         the bento's Python packages as wheels, built here (the host's pip and its configuration) with the
                 versions of this checkout's venv pinned, so the image runs what the tests ran
  Containerfile  generated from the bento (envs, user, port, packages), then `podman build`
  image check    no torch inside; the Python the wheels were built for

The image runs as the bento's non-root user (uid 1034) with a read-only root filesystem: HOME, BENTOML_HOME (its
Prometheus multiprocess files) and every cache are under /tmp, the one writable place it needs.
Usage: python -m container.build [--gpu] [--image REF]"""
from __future__ import annotations

import argparse
import compileall
import importlib.metadata
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from container import base
from container.podman import ROOT, WORK, StepError, podman, require, run_main

CPU_REPO, GPU_REPO = "localhost/srnas", "localhost/srnas-gpu"
BENTO_PATH = "/home/bentoml/bento"
# Everything the server writes goes under /tmp (an emptyDir in the pod; the Deployment moves BENTOML_HOME to its
# own volume). PYTHONDONTWRITEBYTECODE: the code is compiled at build time and the tree is read-only anyway.
RUNTIME_ENV = {
    "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "UTF-8", "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp", "TMPDIR": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache",
    "BENTOML_HOME": "/tmp/bentoml", "BENTOML_DO_NOT_TRACK": "True", "BENTOML_CONTAINERIZED": "true",
    "BENTO_PATH": BENTO_PATH, "VIRTUAL_ENV": "/app/.venv",
    "PATH": "/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PORT": "3000",
}


def image_tag() -> str:
    """The tag the manifests deploy: newTag of k8s/base/kustomization.yaml."""
    doc = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    return str(doc["images"][0]["newTag"])


def default_image(gpu: bool) -> str:
    return f"{GPU_REPO if gpu else CPU_REPO}:{image_tag()}"


def venv_tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def run_step(step: str, cmd: list[str], env: dict | None = None, timeout: float = 900) -> str:
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepError(step, f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from None
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip() or "(no message)").splitlines()[-1]
        raise StepError(step, f"{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:3]))} failed "
                              f"(exit {r.returncode}): {last}")
    return r.stdout


def bento(gpu: bool, home: Path, work: Path) -> str:
    """Import the shipped models and build the bento into `home`; returns its tag. The CPU bento is `bentoml
    build` of pyproject.toml; the GPU bento is `bentoml build` of a bentofile holding srnas.bento's GPU options
    (what `srnas bento --gpu` builds), written out because bentoml.bentos.build() in BentoML 1.4.40 fails on
    envs given as dicts ('dict' object has no attribute 'name')."""
    from srnas.bento import build_options

    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    print(run_step("store import", [venv_tool("srnas"), "store-import"], env).strip(), flush=True)
    args = ["build", "-o", "tag"]
    if gpu:
        work.mkdir(parents=True, exist_ok=True)
        (work / "bentofile.yaml").write_text(yaml.safe_dump(build_options(gpu=True), sort_keys=False))
        args += ["-f", str(work / "bentofile.yaml"), str(ROOT)]
    out = run_step("bento build", [venv_tool("bentoml"), *args], env)
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


def build_context(tag: str, home: Path, out: Path) -> dict:
    """BentoML's containerize context for `tag` (the bento, models/ with every model the bento lists, its
    generated Dockerfile) copied to out/bento; returns the bento's bento.yaml."""
    os.environ["BENTOML_HOME"] = str(home)  # read when bentoml is first imported, which is here
    import bentoml
    from bentoml._internal.container import construct_containerfile

    bento_obj = bentoml.bentos.get(tag)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with construct_containerfile(bento_obj, enable_buildkit=False) as (ctx, _dockerfile):
        shutil.copytree(ctx, out / "bento", symlinks=True)
    info = yaml.safe_load((out / "bento" / "bento.yaml").read_text())
    listed = sorted(m["tag"] for s in info.get("services", []) for m in s.get("models", []))
    packed = sorted(f"{p.parent.name}:{p.name}" for p in (out / "bento" / "models").glob("*/*") if p.is_dir()
                    and p.name != "latest")
    if not listed or listed != packed:
        raise StepError("build context", f"the bento lists models {listed} but the context holds {packed}")
    # Compiled here, where the tree is writable (the image's is not, and PYTHONDONTWRITEBYTECODE), by the image's
    # Python minor version (checked with the wheels); checked against the source's hash, since COPY need not keep
    # mtimes
    compileall.compile_dir(out / "bento" / "src", quiet=1,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    # Root owns the copied tree and the server only reads it: readable by all (BentoML makes model folders 0700,
    # which its own Dockerfile gets past with --chown), writable by none but root.
    for p in [out / "bento", *(out / "bento").rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() or p.name == "entrypoint.sh" else 0o644)
    return info


def python_version(info: dict) -> str:
    """The bento's Python (bento.yaml: image.python_version, or docker.python_version for a bentofile build)."""
    return str((info.get("image") or info.get("docker") or {}).get("python_version") or "3.11")


def pins() -> str:
    """name==version of every package in this venv (the project itself excepted): the image gets the versions
    the tests ran with; a package the venv lacks (onnxruntime-gpu) resolves freely."""
    lines = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "srnas" and "+" not in dist.version:  # local builds (torch+cpu) pin nothing
            lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def wheels(bento_dir: Path, out: Path, python_version: str) -> list[str]:
    """The bento's packages as wheels in `out` with requirements.txt and constraints.txt for the image's pip,
    built by this Python, which must be the image's version (binary wheels are per Python ABI, cp311 for 3.11;
    the image's pip refuses any that do not fit, and the image check asks its Python)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != python_version:
        raise StepError("wheels", f"this Python is {here}, the bento's (and the Debian base's) is {python_version}: "
                                  f"run with a Python {python_version} venv")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    reqs = [r.strip() for r in (bento_dir / "env" / "python" / "requirements.txt").read_text().splitlines()
            if r.strip() and not r.startswith("#")]
    (out / "requirements.txt").write_text("\n".join(dict.fromkeys(reqs)) + "\n")
    (out / "constraints.txt").write_text(pins())
    run_step("wheels", [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), "-r", str(out / "requirements.txt"),
                        "-c", str(ROOT / "constraints.txt"), "-c", str(out / "constraints.txt")], timeout=1800)
    names = sorted(p.name for p in out.glob("*.whl"))
    if any(re.match(r"(torch|triton)-|nvidia_\w+_cu\d+-", n.lower()) for n in names):  # not nvidia_ml_py (NVML)
        raise StepError("wheels", "the serving packages pulled in torch or CUDA wheels: serving needs neither")
    return names


def containerfile(info: dict, base_image: str, docker: str) -> str:
    """The Containerfile for the bento: BentoML's user and port (from its generated Dockerfile), the bento's envs,
    its packages installed from the wheels offline in a first stage, then copied without pip or the wheels."""
    uid = re.search(r"ARG BENTO_USER_UID=(\d+)", docker)
    gid = re.search(r"ARG BENTO_USER_GID=(\d+)", docker)
    port = re.search(r"^EXPOSE (\d+)", docker, re.M)
    if not (uid and gid and port):
        raise StepError("Containerfile", "BentoML's generated Dockerfile names no user uid/gid or port")
    env = {**RUNTIME_ENV, **{e["name"]: str(e["value"]) for e in info.get("envs", [])}, "PORT": port.group(1)}
    labels = {**info.get("labels", {}), "org.opencontainers.image.title": info["name"],
              "org.opencontainers.image.version": f"{info['name']}:{info['version']}", "bentoml.version":
              info["bentoml_version"]}
    lines = [
        f"# Generated by container/build.py from the bento {info['name']}:{info['version']}; BentoML's own",
        "# Dockerfile for it is bento/env/docker/Dockerfile (its base image must be pulled from a registry).",
        f"FROM {base_image} AS venv",
        "COPY wheels /wheels",
        "RUN python3 -m venv /app/.venv \\",
        " && /app/.venv/bin/pip install -q --no-index --no-cache-dir --find-links /wheels \\",
        "      -r /wheels/requirements.txt -c /wheels/constraints.txt \\",
        " && /app/.venv/bin/pip uninstall -q -y pip setuptools",
        "",
        f"FROM {base_image}",
        f"RUN groupadd -g {gid.group(1)} bentoml \\",
        f" && useradd -u {uid.group(1)} -g {gid.group(1)} -M -d /tmp -s /usr/sbin/nologin bentoml",
        "COPY --from=venv /app/.venv /app/.venv",
        f"COPY bento {BENTO_PATH}",
        *(f"ENV {k}={json.dumps(v)}" for k, v in env.items()),
        *(f"LABEL {json.dumps(k)}={json.dumps(str(v))}" for k, v in labels.items()),
        f"WORKDIR {BENTO_PATH}",
        f"EXPOSE {port.group(1)}",
        f"USER {uid.group(1)}:{gid.group(1)}",
        "# BentoML's entrypoint: `bentoml serve` of the bento, on $PORT",
        f'ENTRYPOINT ["{BENTO_PATH}/env/docker/entrypoint.sh"]',
        "",
    ]
    return "\n".join(lines)


def check_gpu_dockerfile(bento_dir: Path) -> list[str]:
    """What BentoML's Dockerfile for the GPU bento must hold to be a complete CUDA image; missing parts."""
    docker = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    reqs = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower()  # names, pinned or not
            for r in (bento_dir / "env" / "python" / "requirements.txt").read_text().split()}
    install = bento_dir / "env" / "python" / "install.sh"
    missing = [] if "onnxruntime-gpu" in reqs and "onnxruntime" not in reqs else ["onnxruntime-gpu alone"]
    if not (install.is_file() and 'REQUIREMENTS_TXT="$BASEDIR/requirements.txt"' in install.read_text()):
        missing.append("env/python/install.sh installing requirements.txt")
    wanted = {
        "a CUDA base image": r"^FROM nvidia/cuda:\S+",
        "the bento's requirements installed": r"^RUN bash -euxo pipefail \S+/env/python/install.sh",
        "the bento and its models copied": r"^COPY --chown=bentoml:bentoml \. \./",
        "the non-root user": r"^USER bentoml",
        "the serving port": r"^EXPOSE 3000",
        "SRNAS_DEVICE=cuda": r"^ENV SRNAS_DEVICE=\$SRNAS_DEVICE",
    }
    return missing + [what for what, pattern in wanted.items() if not re.search(pattern, docker, re.M)]


def check_image(image: str) -> None:
    probe = ("import importlib.util as u, sys; print(sys.version_info[:2], "
             "[m for m in ('torch', 'onnxruntime', 'bentoml') if u.find_spec(m)])")
    r = podman("run", "--rm", "--read-only", "--entrypoint", "/app/.venv/bin/python", image, "-c", probe,
               step="image check", timeout=120)
    if r.stdout.strip() != "(3, 11) ['onnxruntime', 'bentoml']":
        raise StepError("image check", f"expected Python 3.11 with onnxruntime and bentoml and no torch, got "
                                       f"{r.stdout.strip()}")


def build(gpu: bool = False, image: str | None = None) -> dict:
    image = image or default_image(gpu)
    require("prerequisites", "podman", "runc")
    flavor = "gpu" if gpu else "cpu"
    work = WORK / flavor
    started = time.monotonic()
    base_image = base.ensure()
    base_s = time.monotonic() - started
    home = WORK / "bentoml"
    tag = bento(gpu, home, work)
    info = build_context(tag, home, work / "context")
    docker = (work / "context" / "bento" / "env" / "docker" / "Dockerfile").read_text()
    if gpu and (missing := check_gpu_dockerfile(work / "context" / "bento")):
        raise StepError("GPU Containerfile", f"BentoML's Dockerfile for {tag} lacks: {', '.join(missing)}")
    names = wheels(work / "context" / "bento", work / "context" / "wheels", python_version(info))
    (work / "context" / "Containerfile").write_text(containerfile(info, base_image, docker))
    print(f"Containerfile: {work / 'context' / 'Containerfile'} ({len(names)} wheels)", flush=True)
    old = podman("image", "inspect", "--format", "{{.Id}}", image, step="podman build", check=False).stdout.strip()
    t0 = time.monotonic()
    podman("build", "--layers", "--pull=never", "-f", str(work / "context" / "Containerfile"), "-t", image,
           str(work / "context"), step="podman build", timeout=1800)
    build_s = time.monotonic() - t0
    new = podman("image", "inspect", "--format", "{{.Id}}", image, step="podman build").stdout.strip()
    if old and old != new:  # the image this tag named before, now untagged (kept if a container still uses it)
        podman("rmi", old, step="podman build", check=False)
    check_image(image)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image, step="image check").stdout.strip())
    report = {"image": image, "bento": tag, "models": sorted(m["tag"] for s in info["services"] for m in s["models"]),
              "size_mb": round(size / 1e6), "podman_build_s": round(build_s, 1),
              "total_s": round(time.monotonic() - started, 1), "base_s": round(base_s, 1),
              "containerfile": str(work / "context" / "Containerfile"),
              "bentoml_dockerfile": str(work / "context" / "bento" / "env" / "docker" / "Dockerfile")}
    (work / "image.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU bento (onnxruntime-gpu) on the same base")
    ap.add_argument("--image", help=f"image reference (default {CPU_REPO}:<newTag>, --gpu {GPU_REPO}:<newTag>)")
    args = ap.parse_args()
    r = build(args.gpu, args.image)
    print(f"{r['image']}: {r['size_mb']} MB, bento {r['bento']} with {', '.join(r['models'])}; podman build "
          f"{r['podman_build_s']:.0f} s, all steps {r['total_s']:.0f} s (base image {r['base_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    run_main(main)
