"""`srnas ablate --quick`: every variant trains for real (tiny budget), changes only its factor, resumes,
and lands in one table."""
import json
import subprocess

import pytest
import yaml

from tests.conftest import ROOT, srnas_cmd

VARIANTS = "eps-prediction,cosine-schedule,iters-500"


def _srnas(*args, timeout=600):
    return subprocess.run([*srnas_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation") / "run"
    proc = _srnas("ablate", "--quick", "--out", out, "--variants", VARIANTS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _train(out, name):
    return json.loads((out / name / "train_config.json").read_text())


def test_each_variant_changes_only_its_factor(quick):
    recipe, eps, cosine = _train(quick, "recipe"), _train(quick, "eps-prediction"), _train(quick, "cosine-schedule")
    assert recipe["diffusion"]["prediction"] == "v" and eps["diffusion"]["prediction"] == "eps"
    assert cosine["diffusion"]["schedule"]["kind"] == "cosine" and recipe["diffusion"]["schedule"]["kind"] == "linear"
    for other in (eps, cosine):
        diff = {k for k in recipe if recipe[k] != other[k]}
        assert diff == {"diffusion"}, diff
    assert _train(quick, "iters-500")["iters"] < recipe["iters"]
    arch_from = yaml.safe_load((ROOT / "search/recipes/ablation-tiny.yaml").read_text())["arch_from"]
    ablated = json.loads((ROOT / arch_from / "config.json").read_text())["unet"]["arch"]
    assert recipe["unet_overrides"]["arch"] == ablated and len(set(ablated.values())) > 2  # a searched arch


def test_the_table_has_bicubic_and_every_variant(quick):
    rows = json.loads((quick / "ablation.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["recipe", "no EMA", *VARIANTS.split(",")]
    assert all(set(r["psnr_y"]) == {"1", "2", "4"} for r in rows)
    assert rows[0]["psnr_y"] != rows[2]["psnr_y"]  # a different objective scores differently
    md = (quick / "ablation.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[1].startswith("| bicubic") and len(lines) == 2 + len(rows)
    assert "| **recipe** | none (the recipe) |" in md and "+0.00" in md


def test_a_second_run_reuses_finished_variants(quick):
    log = quick / "eps-prediction" / "train_log.csv"
    before = log.stat().st_mtime_ns
    proc = _srnas("ablate", "--quick", "--out", quick, "--variants", "eps-prediction")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert log.stat().st_mtime_ns == before


@pytest.mark.parametrize("variants, yaml_text, message", [
    ("nope", None, "unknown variant(s) nope"),
    (None, "variants: {recipe: {}, bad: {diffusion.nope: 1}}", "'diffusion.nope' names no field"),
    (None, "variants: {only: {iters: 5}}", "need a 'recipe' entry"),
    (None, "variants: {recipe: {}, bad: {diffusion.prediction: z}}", "unknown prediction 'z'"),
])
def test_bad_configs_are_refused_before_training(tmp_path, variants, yaml_text, message):
    config = tmp_path / "ablation.yaml"
    config.write_text(yaml_text or (ROOT / "search/recipes/ablation-tiny.yaml").read_text())
    args = ["ablate", "--quick", "--out", tmp_path / "run", "--config", config]
    proc = _srnas(*args, *(["--variants", variants] if variants else []))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "recipe").exists()
