"""The image's base, made here: public registries may be unreachable, a Debian mirror is not. debootstrap makes a
minimal bookworm (its python3 is 3.11, the Python the project targets) from the mirror apt uses, trimmed of
documentation and apt's lists, imported as a podman image. The rootfs tarball is cached, so a second machine run
only imports it again. Usage: python -m container.base [--force]"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from container.podman import StepError, image_exists, podman, require, run_main, sudo

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv")  # python3-venv: ensurepip, so the image builds its venv offline
IMAGE = f"localhost/srnas-base:{SUITE}"
# What the image never reads: docs, manuals, translations, apt's package lists and its .deb cache.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
        "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf/templates.dat-old", "var/log")
STEP = "base image"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "srnas"


def apt_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list"),),
               folder: Path = Path("/etc/apt/sources.list.d")) -> str:
    """The Debian archive that apt uses here for the suite (one-line or deb822 sources)."""
    files = [p for p in sources if p.is_file()] + (sorted(folder.glob("*")) if folder.is_dir() else [])
    for path in files:
        text = path.read_text(errors="replace")
        for m in re.finditer(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", text, re.M):
            return m.group(1)
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    raise StepError(STEP, f"no Debian {SUITE} mirror in /etc/apt/sources.list*: debootstrap needs one")


def tarball(mirror: str) -> Path:
    key = hashlib.sha256(f"{SUITE} {mirror} {' '.join(PACKAGES)} {' '.join(TRIM)}".encode()).hexdigest()[:12]
    return cache_dir() / f"rootfs-{SUITE}-{key}.tar"


def make_rootfs(mirror: str, out: Path) -> float:
    """debootstrap into a temporary folder and pack it as `out`; returns seconds taken."""
    require(STEP, "debootstrap")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        try:
            cmd = [*sudo(), "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                   str(rootfs), mirror]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
            if r.returncode != 0:
                last = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["(no message)"]
                raise StepError(STEP, f"debootstrap {SUITE} from {mirror} failed: {last[0]}")
            subprocess.run([*sudo(), "rm", "-rf", *(str(rootfs / p) for p in TRIM)], check=True)
            subprocess.run([*sudo(), "mkdir", "-p", str(rootfs / "var/log"), str(rootfs / "var/cache/apt")],
                           check=True)
            part = out.with_suffix(".part")
            subprocess.run([*sudo(), "tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(part), "."], check=True)
            part.replace(out)
        finally:  # root owns what debootstrap made: removed as root, whatever happened
            subprocess.run([*sudo(), "rm", "-rf", str(rootfs)], check=False)
    return time.monotonic() - start


def ensure(force: bool = False) -> str:
    """The base image, made when podman lacks it (from the cached rootfs where there is one)."""
    require(STEP, "podman", "runc")
    if image_exists(IMAGE) and not force:
        return IMAGE
    mirror = apt_mirror()
    tar = tarball(mirror)
    if force or not tar.is_file():
        print(f"{STEP}: debootstrap {SUITE} ({', '.join(PACKAGES)}) from {mirror}", flush=True)
        took = make_rootfs(mirror, tar)
        print(f"{STEP}: rootfs {tar.stat().st_size / 1e6:.0f} MB in {took:.0f} s, cached as {tar}", flush=True)
    start = time.monotonic()
    podman("import", "--change", "CMD=/bin/bash", "--change", "ENV=LANG=C.UTF-8", str(tar), IMAGE, step=STEP)
    print(f"{STEP}: imported {IMAGE} in {time.monotonic() - start:.0f} s", flush=True)
    return IMAGE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="debootstrap again, replacing the cached rootfs")
    print(ensure(ap.parse_args().force))
    return 0


if __name__ == "__main__":
    run_main(main)
