"""`srnas pipeline --quick`: every stage runs for real with tiny budgets, resumes, and reports."""
import json
import subprocess

import pytest
from PIL import Image

from srnas.pipeline_report import MIN_GAIN_DB, TOLERANCE_DB, choose_default
from tests.conftest import ROOT, srnas_cmd

MODELS = ("base", "supernet", "softmax", "temperature", "gumbel-hard")


def _srnas(*args, timeout=900):
    return subprocess.run([*srnas_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# steps 1 and 2 of both samplers: the smallest set the report's quality table needs
QUICK_ARGS = ("--quick", "--threads", "2", "--steps", "1,2")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    proc = _srnas("pipeline", *QUICK_ARGS, "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_every_stage_runs_and_the_report_compares_every_model(quick):
    out, proc = quick
    done = json.loads((out / "pipeline.json").read_text())["done"]
    assert done[0] == "train-base" and done[-1] == "bench"
    for r in ("softmax", "temperature", "gumbel-hard"):
        assert done.index(f"search-{r}") < done.index(f"finetune-{r}") < done.index(f"evaluate-{r}")
        assert (out / f"search-{r}" / "arch.json").is_file()
        model = out / f"finetune-{r}" / "model"
        assert json.loads((model / "config.json").read_text())["meta"]["arch"]["choices"]
        assert (model / "model.onnx").is_file()
        assert json.loads((model / "deploy.json").read_text())["predicted"]
    report = (out / "report.md").read_text()
    assert report.count("<!-- srnas pipeline: start -->") == 1
    table = [line for line in report.splitlines() if line.startswith("| ")]
    for name in MODELS:
        assert any(line.startswith(f"| {name} |") for line in table), name
    assert "ddpm 2" in report and "ddim 1" in report  # the quality table has both samplers
    for name in MODELS:  # --quick's figures follow the best setting's own path, not a 20-step one
        assert json.loads((out / f"eval-{name}" / "metrics.json").read_text())["trajectory"]["steps"] <= 2
    rows = json.loads((out / "compare" / "compare.json").read_text())
    assert [r["model"] for r in rows] == list(MODELS)
    assert all(r["latency_s"] > 0 and r["flops_per_step"] > 0 for r in rows)
    for png in ("psnr_steps.png", "psnr_latency.png"):
        assert Image.open(out / png).size[0] > 100
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench["models"]) == {"base", "softmax", "temperature", "gumbel-hard"}
    assert "Default by rule" in report and (out / "default.json").is_file()


def test_a_second_run_resumes_without_redoing_work(quick):
    out, _ = quick
    log = out / "base" / "train_log.csv"
    before = log.stat().st_mtime_ns
    proc = _srnas("pipeline", *QUICK_ARGS, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done before") == len(json.loads((out / "pipeline.json").read_text())["done"])
    assert log.stat().st_mtime_ns == before


def test_other_settings_in_the_same_folder_are_refused(quick):
    out, _ = quick
    proc = _srnas("pipeline", "--quick", "--out", out, "--steps", "1,4")
    assert proc.returncode == 2 and "other settings" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--relax", "annealing"], "--relax"), (["--samplers", "euler"], "--samplers"),
    (["--preset", "nope"], "no train recipe")])
def test_bad_arguments_are_refused(tmp_path, argv, message):
    proc = _srnas("pipeline", "--quick", "--out", tmp_path / "x", *argv)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def _row(model, psnr, latency, ssim=0.92):
    return {"model": model, "path": model, "served": "ddim 1", "psnr_y": psnr, "ssim_y": ssim, "latency_s": latency,
            "bicubic_psnr_y": 35.0, "bicubic_ssim_y": 0.89}


def test_default_rule_prefers_the_fastest_subnet_close_to_the_base():
    rows = [_row("base", 38.0, 0.030), _row("a", 38.0 - TOLERANCE_DB / 2, 0.012), _row("b", 37.9, 0.008),
            _row("c", 37.0, 0.005)]
    assert choose_default(rows, ["a", "b", "c"])["model"] == "b"


def test_default_rule_falls_back_to_the_best_subnet_that_clearly_beats_bicubic():
    rows = [_row("base", 38.0, 0.030), _row("a", 37.2, 0.012), _row("b", 36.5, 0.008),
            _row("c", 35.0 + MIN_GAIN_DB + 3, 0.005, ssim=0.85)]  # SSIM below bicubic: out
    pick = choose_default(rows, ["a", "b", "c"])
    assert pick["model"] == "a" and not pick["within_tolerance_of_base"]
    assert choose_default([_row("base", 38.0, 0.03), _row("a", 35.5, 0.01)], ["a"]) is None
