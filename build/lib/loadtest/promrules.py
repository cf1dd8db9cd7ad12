"""The Prometheus rules have one source, k8s/base/prometheus/rules.yaml (a PrometheusRule whose spec
is a plain rule file). This module writes that spec out as a rule file for promtool and for the local
Prometheus of `make observe`, so nothing is kept twice.

    python -m loadtest.promrules OUTDIR    # writes OUTDIR/rules.yaml and OUTDIR/rules.test.yaml
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "k8s" / "base" / "prometheus"
SOURCE = RULES_DIR / "rules.yaml"
TESTS = RULES_DIR / "rules.test.yaml"


def rule_groups(source: Path = SOURCE) -> dict:
    """The rule file held in the PrometheusRule's spec, checked to be one."""
    doc = yaml.safe_load(source.read_text())
    if not isinstance(doc, dict) or doc.get("kind") != "PrometheusRule":
        raise ValueError(f"{source}: expected a PrometheusRule object")
    spec = doc.get("spec") or {}
    if set(spec) != {"groups"} or not spec["groups"]:
        raise ValueError(f"{source}: spec must hold exactly a non-empty 'groups' list")
    return spec


class _Dumper(yaml.SafeDumper):
    """Writes multi-line PromQL as literal blocks, as in the source."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def write_rule_files(out_dir: Path, source: Path = SOURCE) -> Path:
    """Write rules.yaml (plain rule file) and its promtool tests into out_dir; return the rule file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rule_file = out_dir / "rules.yaml"
    rule_file.write_text(yaml.dump(rule_groups(source), Dumper=_Dumper, sort_keys=False, width=1000))
    shutil.copyfile(TESTS, out_dir / "rules.test.yaml")
    return rule_file


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        raise FileNotFoundError("promtool not found: install Debian's 'prometheus' package "
                                "(apt-get install -y prometheus); .ci/run does this")
    return exe


def check(out_dir: Path) -> subprocess.CompletedProcess:
    """promtool check rules, then promtool test rules; raises CalledProcessError on failure."""
    rule_file = write_rule_files(out_dir)
    subprocess.run([promtool(), "check", "rules", str(rule_file)], check=True, capture_output=True, text=True)
    return subprocess.run([promtool(), "test", "rules", "rules.test.yaml"], cwd=out_dir, check=True,
                          capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadtest.promrules OUTDIR", file=sys.stderr)
        return 2
    print(write_rule_files(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
