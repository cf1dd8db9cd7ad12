"""The `srnas` console script, run as a user would, including every bad-input case."""
import json

import numpy as np
import pytest
from PIL import Image

from search.data import BUILTIN_VAL
from tests.conftest import rgb


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr


def test_info_presets(run_srnas):
    for name, params, flops in [("sr3-paper", 158.5e6, 79.6e9), ("tiny", None, None)]:
        proc = run_srnas("info", "--preset", name, "--json")
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["preset"] == name and info["params"] > 0 and info["flops_per_step"] > 0
        if params:
            assert abs(info["params"] / params - 1) < 0.03 and abs(info["flops_per_step"] / flops - 1) < 0.03


def test_info_default_model_reports_its_files(run_srnas):
    proc = run_srnas("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["preset"] == "tiny-fold2-nonorm" and info["path"].endswith("weights/default")
    assert info["params"] > 10_000 and info["defaults"]["steps"] >= 1
    assert info["arch"] and set(info["arch"].values()) & {"dwsep3x3", "gconv3x3", "dwsep5x5", "ibn2", "skip"}


def test_upscale_default_model(run_srnas, photo, tmp_path):
    out = tmp_path / "sr.png"
    proc = run_srnas("upscale", photo, "-o", out, "--steps", "2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    lr, sr = np.asarray(Image.open(photo)), np.asarray(Image.open(out))
    assert sr.shape == (2 * lr.shape[0], 2 * lr.shape[1], 3)
    again = tmp_path / "again.png"
    assert run_srnas("upscale", photo, "-o", again, "--steps", "2", "--seed", "3").returncode == 0
    assert out.read_bytes() == again.read_bytes()  # a seed gives identical output


@pytest.mark.parametrize("name", ["default", "real"])
def test_upscale_takes_a_shipped_models_name(name, photo, tmp_path, capsys):
    """`--model default` and `--model real` name the shipped folders; a shipped model this installation does not
    have is one line and exit 2."""
    from models.spec import SHIPPED_MODELS
    from srnas.cli import main

    out = tmp_path / "sr.png"
    code = main(["upscale", str(photo), "-o", str(out), "--model", name, "--steps", "1"])
    if (SHIPPED_MODELS[name] / "model.safetensors").is_file():
        assert code == 0, capsys.readouterr().err
        lr, sr = np.asarray(Image.open(photo)), np.asarray(Image.open(out))
        assert sr.shape == (2 * lr.shape[0], 2 * lr.shape[1], 3)
    else:
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"shipped model {name!r} is not in this installation" in err


def test_train_and_evaluate_small(run_srnas, tmp_path):
    run = tmp_path / "run"
    proc = run_srnas("train", "--iters", "2", "--batch", "1", "--patch", "32", "--out", run, "--no-progress",
                     "--prediction", "v", "--target", "residual")
    assert proc.returncode == 0, proc.stderr
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoint" / "train_state.json").is_file()
    proc = run_srnas("train", "--iters", "3", "--batch", "1", "--patch", "32", "--out", run, "--resume",
                     "--no-progress", "--prediction", "v", "--target", "residual")
    assert proc.returncode == 0 and "resuming" in proc.stdout, proc.stderr
    ev = tmp_path / "eval"
    proc = run_srnas("evaluate", "--model", run / "model", "--steps", "1,2", "--samplers", "ddim,ddpm",
                     "--crops", "1", "--out", ev, "--no-progress", "--choose-defaults", "--trajectory-steps", "3")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((ev / "metrics.json").read_text())
    assert report["crops"] == len(BUILTIN_VAL) and report["split"] == "val" and len(report["results"]) == 4
    best = max(report["results"], key=lambda r: r["psnr_y"])
    defaults = json.loads((run / "model" / "config.json").read_text())["defaults"]
    assert best["psnr_y"] - 0.05 <= next(r["psnr_y"] for r in report["results"]
                                         if (r["sampler"], r["steps"]) == (defaults["sampler"], defaults["steps"]))
    assert 20 < report["bicubic"]["psnr_y"] < 50
    assert report["trajectory"] == {"sampler": best["sampler"], "steps": 3}  # at least the best setting's 1 or 2
    for name in ("grid.png", "trajectory.png"):
        assert Image.open(ev / name).size[0] > 200


def _bad_cases(tmp_path, photo):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    small = tmp_path / "small.png"
    Image.fromarray(rgb(6, 40)).save(small)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(photo.read_bytes()[:200])
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{}")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    unweighted = tmp_path / "unweighted"
    unweighted.mkdir()
    (unweighted / "config.json").write_text("{}")
    out = str(tmp_path / "o.png")
    return {
        "missing file": (["upscale", tmp_path / "nope.png", "-o", out], "no such file"),
        "not an image": (["upscale", text, "-o", out], "not a readable image"),
        "truncated image": (["upscale", trunc, "-o", out], "not a readable image"),
        "too small": (["upscale", small, "-o", out], "at least 8"),
        "zero steps": (["upscale", photo, "-o", out, "--steps", "0"], "steps must be in 1..2000"),
        "too many steps": (["upscale", photo, "-o", out, "--steps", "2001"], "steps must be in 1..2000"),
        "non-integer steps": (["upscale", photo, "-o", out, "--steps", "ten"], "invalid int value"),
        "unknown sampler": (["upscale", photo, "-o", out, "--sampler", "euler"], "unknown sampler"),
        "corrupt checkpoint": (["upscale", photo, "-o", out, "--model", corrupt], "invalid model config"),
        "missing model": (["upscale", photo, "-o", out, "--model", tmp_path / "nomodel"], "not a model folder"),
        "unknown model name": (["upscale", photo, "-o", out, "--model", "fancy"],
                               "nor a shipped model's name (default, real)"),
        "model folder without weights": (["upscale", photo, "-o", out, "--model", unweighted],
                                         "without weights (expected config.json and model.safetensors)"),
        "bad output folder": (["upscale", photo, "-o", tmp_path / "no" / "x.png"], "does not exist"),
        "empty data folder": (["evaluate", "--data", empty, "--steps", "1"], "no images found"),
        "evaluate bad steps": (["evaluate", "--steps", "0"], "steps must be in 1..2000"),
        "evaluate no trajectory": (["evaluate", "--steps", "1", "--trajectory-steps", "0"],
                                   "--trajectory-steps must be >= 1"),
        "unknown preset": (["info", "--preset", "huge"], "unknown preset"),
        "train empty folder": (["train", "--data", empty, "--iters", "1"], "no images found"),
        "profile on a GPU without one": (["profile", "--device", "cuda", "--out", tmp_path / "lut.json"],
                                         "no CUDA or TensorRT execution provider"),
        "profile torch on cuda": (["profile", "--backend", "torch", "--device", "cuda"], "use --backend onnxruntime"),
    }


def test_bad_input_exits_2_with_a_message(tmp_path, photo, capsys):
    """Every case through the CLI's own entry point, in this process (a process per case spent a minute on
    imports): exit 2 and the message, never an exception."""
    from srnas.cli import main

    for name, (args, message) in _bad_cases(tmp_path, photo).items():
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, (name, code, err)
        assert message in err, (name, err)


def test_the_installed_command_exits_2_without_a_traceback(run_srnas, tmp_path, photo):
    """The console script end to end, for one CLI error and one argparse error."""
    cases = _bad_cases(tmp_path, photo)
    for name in ("missing file", "non-integer steps"):
        args, message = cases[name]
        proc = run_srnas(*args)
        assert proc.returncode == 2 and message in proc.stderr, (name, proc.stderr)
        _no_traceback(proc)


def test_choose_defaults_picks_fewest_steps_near_the_best():
    from search.evaluate import choose_defaults

    rows = [{"sampler": "ddim", "steps": 1, "eta": 0.0, "psnr_y": 30.00},
            {"sampler": "ddim", "steps": 4, "eta": 0.0, "psnr_y": 30.50},
            {"sampler": "ddpm", "steps": 8, "eta": 0.0, "psnr_y": 30.53},
            {"sampler": "ddim", "steps": 20, "eta": 0.0, "psnr_y": 30.40}]
    report = {"results": rows, "crops": 4, "bicubic": {"psnr_y": 29.0}}
    chosen = choose_defaults(report, tolerance_db=0.05)
    assert (chosen["sampler"], chosen["steps"]) == ("ddim", 4)
    assert choose_defaults(report, tolerance_db=0.0)["steps"] == 8


def test_shipped_searched_default_and_its_base(run_srnas, photo, tmp_path):
    """The default is a searched subnet (its arch recorded, a fraction of its space's base FLOPs); the trained
    base network ships as models/weights/base-tiny and upscales too."""
    info = json.loads(run_srnas("info", "--json").stdout)
    space_base = json.loads(run_srnas("info", "--preset", info["preset"], "--json").stdout)
    assert info["arch"] and info["flops_per_step"] * 3 < space_base["flops_per_step"]
    base = json.loads(run_srnas("info", "--model", "models/weights/base-tiny", "--json").stdout)
    assert base["arch"] is None and base["params"] > 1_000_000
    assert info["defaults"]["steps"] == 1
    proc = run_srnas("upscale", photo, "-o", tmp_path / "up.png", "--model", "models/weights/base-tiny")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "up.png").size == tuple(2 * s for s in Image.open(photo).size)
