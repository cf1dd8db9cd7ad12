import csv

import torch

from models.checkpoint import load_model
from models.diffusion import DiffusionConfig
from search.train import TrainConfig, Trainer, lr_at

SMALL = dict(preset="tiny", batch=2, patch=32, warmup=2, checkpoint_every=3,
             unet_overrides={"base_channels": 8, "groups": 4},
             diffusion=DiffusionConfig(prediction="v", target="residual"))


def test_resume_continues_exactly(tmp_path):
    whole = Trainer(TrainConfig(iters=6, **SMALL), tmp_path / "whole")
    whole.run(progress=False)
    first = Trainer(TrainConfig(iters=3, **SMALL), tmp_path / "split")
    first.run(progress=False)
    second = Trainer(TrainConfig(iters=6, **SMALL), tmp_path / "split")
    assert second.resume() and second.step == 3
    second.run(progress=False)
    for k, v in whole.net.state_dict().items():
        assert torch.equal(v, second.net.state_dict()[k]), k
    for k, v in whole.ema.state_dict().items():
        assert torch.equal(v, second.ema.state_dict()[k]), k
    rows = list(csv.DictReader(open(tmp_path / "split" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert float(rows[-1]["loss"]) > 0


def test_ema_is_exported_and_loadable(tmp_path):
    t = Trainer(TrainConfig(iters=4, ema_decay=0.5, **SMALL), tmp_path / "run")
    model_dir = t.run(progress=False)
    bundle = load_model(model_dir)
    ema = t.ema.module.state_dict()
    raw = t.net.state_dict()
    key = "stem.weight"
    assert torch.equal(bundle.net.state_dict()[key], ema[key])
    assert not torch.equal(ema[key], raw[key])  # EMA differs from the raw weights
    assert bundle.meta["train_steps"] == 4


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    t = Trainer(TrainConfig(iters=40, lr=2e-3, **SMALL), tmp_path / "run")
    batch = t.data.batch(2)
    t.data.batch = lambda n: batch  # overfit one batch
    gen_state = t.gen.get_state()
    first = []
    for _ in range(3):
        t.gen.set_state(gen_state)
        first.append(t.train_step()["loss"])
    for _ in range(60):
        t.gen.set_state(gen_state)
        last = t.train_step()["loss"]
    assert last < 0.7 * first[0]


def test_lr_schedule_warms_up_and_decays():
    cfg = TrainConfig(iters=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) < lr_at(cfg, 9) <= 1e-3
    assert abs(lr_at(cfg, 10) - 1e-3) < 1e-9 and abs(lr_at(cfg, 100) - 1e-4) < 1e-9


def test_distillation_needs_a_teacher_with_the_same_diffusion(tmp_path):
    import pytest

    from models.checkpoint import CheckpointError

    teacher = Trainer(TrainConfig(iters=1, **SMALL), tmp_path / "teacher").run(progress=False)
    student = Trainer(TrainConfig(iters=2, teacher=str(teacher), distill=1.0, **SMALL), tmp_path / "student")
    assert student.teacher is not None and not any(p.requires_grad for p in student.teacher.parameters())
    assert student.train_step()["loss"] > 0
    other = {**SMALL, "diffusion": DiffusionConfig(prediction="eps", target="residual")}
    with pytest.raises(CheckpointError, match="diffusion config"):
        Trainer(TrainConfig(iters=2, teacher=str(teacher), distill=1.0, **other), tmp_path / "bad")


def test_a_device_without_hardware_is_refused_with_a_clear_message(run_srnas, tmp_path):
    import pytest

    from search.train import training_device

    assert training_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unsupported device|unknown device"):
        training_device("tpu")
    if not torch.cuda.is_available():
        proc = run_srnas("train", "--device", "cuda", "--iters", "1", "--out", tmp_path / "r")
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_training_on_a_gpu_matches_the_cpu_loss_scale(tmp_path):
    """Where a CUDA GPU exists: the same run on it trains, checkpoints and exports a CPU-loadable model."""
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (this torch build is CPU-only or the machine has none)")
    t = Trainer(TrainConfig(iters=3, device="cuda", **SMALL), tmp_path / "gpu")
    assert next(t.net.parameters()).is_cuda
    bundle = load_model(t.run(progress=False))
    assert not next(bundle.net.parameters()).is_cuda


def test_fresh_weights_keep_the_architecture_and_reinitialise(tmp_path):
    src = Trainer(TrainConfig(iters=2, **SMALL), tmp_path / "src").run(progress=False)
    t = Trainer(TrainConfig(iters=1, init_model=str(src), fresh_weights=True, **SMALL), tmp_path / "fresh")
    old = load_model(src).net.state_dict()
    assert t.net.cfg == load_model(src).net.cfg
    assert not torch.equal(t.net.state_dict()["stem.weight"], old["stem.weight"])
    kept = Trainer(TrainConfig(iters=1, init_model=str(src), **SMALL), tmp_path / "kept")
    assert torch.equal(kept.net.state_dict()["stem.weight"], old["stem.weight"])


def test_validation_curve_is_logged(tmp_path):
    from search.degrade import DegradeConfig

    cfg = TrainConfig(iters=4, val_every=2, val_crops=1, degradation=DegradeConfig(), **SMALL)
    Trainer(cfg, tmp_path / "run").run(progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "val_log.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(10 < float(r["psnr_y"]) < 60 and 0 < float(r["hf_ratio"]) for r in rows)
    assert TrainConfig.from_dict(cfg.to_dict()).degradation == cfg.degradation
    assert (tmp_path / "run" / "val.png").stat().st_size > 5000


def test_a_runs_own_config_reads_back_as_a_recipe(tmp_path):
    """train_config.json writes beta_start as 1e-06; YAML 1.1 would read that back as text."""
    import json

    from models.diffusion import Diffusion
    from search.configfile import read_yaml

    cfg = TrainConfig(iters=1, focus_steps=[1], focus_share=0.5, **SMALL)
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert "1e-06" in path.read_text()
    back = TrainConfig.from_dict(read_yaml(path, "config"))
    assert back.diffusion.schedule.beta_start == 1e-6 and back.focus_share == 0.5
    assert Diffusion(back.diffusion).schedule.T == 2000
