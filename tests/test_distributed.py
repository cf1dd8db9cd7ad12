"""`srnas search` and `srnas finetune` under torchrun: 2 CPU processes, gloo, DDP."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, srnas_cmd


def _torchrun(*args, tmp_path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun is not installed with this torch")
    cmd = [exe, "--standalone", "--nproc_per_node", "2", *srnas_cmd(), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def _ddp_record(run: Path) -> dict:
    record = json.loads((run / "ddp.json").read_text())
    assert record["world_size"] == 2 and len(record["digests"]) == 2
    assert record["ranks_agree"] and record["digests"][0] == record["digests"][1]
    return record


def test_search_and_finetune_under_torchrun(tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({"unet_overrides": {"base_channels": 8, "groups": 4}, "warmup": 1, "threads": 1}))
    run = tmp_path / "search"
    proc = _torchrun("search", "--config", cfg, "--iters", "4", "--batch", "1", "--patch", "32", "--warmup-alpha", "1",
                     "--alpha-lr", "0.05", "--relax", "temperature", "--out", run, "--no-progress", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _ddp_record(run)  # identical alpha and weights on both ranks (alpha is part of the digest)
    assert (run / "arch.json").is_file() and (run / "subnet" / "model.safetensors").is_file()
    ft = tmp_path / "ft"
    proc = _torchrun("finetune", "--model", run / "subnet", "--iters", "3", "--batch", "1", "--patch", "32",
                     "--threads", "1", "--out", ft, "--no-progress", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _ddp_record(ft)
    assert (ft / "model" / "config.json").is_file()
