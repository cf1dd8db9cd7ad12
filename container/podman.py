"""podman as these scripts run it: rootful (sudo -n when not root), under a containers.conf of their own.

The generated containers.conf (CONTAINERS_CONF, so /etc stays untouched) picks runc, since crun cannot start
containers on hosts with hybrid cgroups v1/v2, and default ulimits within this host's hard limits, since podman's
defaults (nofile 1048576) exceed them on some hosts and every container start then fails in setrlimit."""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "image"  # generated files; runs/ is not tracked
APT_HINT = "apt-get install podman runc catatonit debootstrap"


class StepError(RuntimeError):
    """A failed step: main() prints it as one line, `<script>: <step>: <why>`, and exits non-zero."""

    def __init__(self, step: str, why: str):
        super().__init__(f"{step}: {why}")


def sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def require(step: str, *tools: str) -> None:
    for tool in tools:
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            raise StepError(step, f"{tool} not found: install it ({APT_HINT})")


def _limit(kind: int, want: int) -> int:
    hard = resource.getrlimit(kind)[1]
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


def containers_conf() -> Path:
    conf = WORK / "containers.conf"
    nofile, nproc = _limit(resource.RLIMIT_NOFILE, 65536), _limit(resource.RLIMIT_NPROC, 32768)
    text = (f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.is_file() or conf.read_text() != text:
        conf.write_text(text)
    return conf


def command(*args: str) -> list[str]:
    return [*sudo(), "env", f"CONTAINERS_CONF={containers_conf()}", "podman", *args]


def podman(*args: str, step: str, timeout: float = 600, check: bool = True,
           quiet: bool = True) -> subprocess.CompletedProcess:
    """Run podman; a non-zero exit (with check) is a StepError carrying podman's last line of error."""
    try:
        r = subprocess.run(command(*args), capture_output=quiet, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepError(step, f"podman {args[0]} did not finish within {timeout:.0f} s") from None
    if check and r.returncode != 0:
        last = ((r.stderr or "").strip().splitlines() or ["(no message)"])[-1]
        what = " ".join(a for a in args[:2] if not a.startswith("-"))
        raise StepError(step, f"podman {what} failed (exit {r.returncode}): {last}")
    return r


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, step="image lookup", check=False).returncode == 0


def run_main(main) -> None:
    """Call main(); a StepError is one line on stderr and exit 1."""
    try:
        sys.exit(main())
    except StepError as exc:
        print(f"{Path(sys.argv[0]).stem}: {exc}", file=sys.stderr)
        sys.exit(1)
