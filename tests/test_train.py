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
