"""The architecture search loop, at toy scale: splits, resume, collapse warning, CLI outputs."""
import json
import warnings

import pytest
import torch
import yaml

from search.nas import SearchConfig, SearchTrainer, entropy
from search.supernet import arch_parameters, mixed_ops

TOY = dict(batch=1, patch=32, warmup=1, checkpoint_every=2, unet_overrides={"base_channels": 8, "groups": 4})


def test_weights_and_alpha_use_disjoint_images(tmp_path):
    t = SearchTrainer(SearchConfig(iters=1, **TOY), tmp_path)
    weight_names = {p.name for p in t.data.pairs}
    alpha_names = {p.name for p in t.alpha_data.pairs}
    assert weight_names and alpha_names and weight_names.isdisjoint(alpha_names)


def test_alpha_frozen_during_warmup_then_moves(tmp_path):
    t = SearchTrainer(SearchConfig(iters=4, warmup_alpha=2, alpha_lr=0.05, **TOY), tmp_path)
    before = [a.detach().clone() for a in arch_parameters(t.net)]
    t.train_step(), t.train_step()
    assert all(torch.equal(a, b) for a, b in zip(arch_parameters(t.net), before))
    t.train_step()
    assert any(not torch.equal(a, b) for a, b in zip(arch_parameters(t.net), before))


def test_search_resume_is_exact(tmp_path):
    cfg = dict(warmup_alpha=1, relax="temperature", **TOY)
    whole = SearchTrainer(SearchConfig(iters=4, **cfg), tmp_path / "a")
    whole.run(progress=False)
    SearchTrainer(SearchConfig(iters=2, **cfg), tmp_path / "b").run(progress=False)
    rest = SearchTrainer(SearchConfig(iters=4, **cfg), tmp_path / "b")
    assert rest.resume() and rest.step == 2
    rest.run(progress=False)
    for a, b in zip(arch_parameters(whole.net), arch_parameters(rest.net)):
        assert torch.equal(a, b)
    assert json.loads((tmp_path / "a" / "arch.json").read_text())["choices"] == \
        json.loads((tmp_path / "b" / "arch.json").read_text())["choices"]


def test_collapse_to_skip_warns(tmp_path):
    t = SearchTrainer(SearchConfig(iters=3, warmup_alpha=0, alpha_lr=0.0, **TOY), tmp_path)
    with torch.no_grad():
        for m in mixed_ops(t.net).values():
            if "skip" in m.names:
                m.alpha[m.names.index("skip")] = 5.0
    with pytest.warns(UserWarning, match="collapsing to skip"):
        t.train_step()


def test_entropy_measures_decisiveness():
    assert entropy(torch.ones(4) / 4) == pytest.approx(1.0)
    assert entropy(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-6)


def test_search_finetune_info_cli(run_srnas, tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({"unet_overrides": {"base_channels": 8, "groups": 4}, "warmup": 1}))
    run = tmp_path / "search"
    proc = run_srnas("search", "--config", cfg, "--iters", "3", "--batch", "1", "--patch", "32", "--warmup-alpha",
                     "1", "--relax", "gumbel", "--cost", "flops", "--loss-form", "budget", "--target-flops", "1e8",
                     "--out", run, "--no-progress", "--prediction", "v", "--target", "residual")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / "arch.json").read_text())
    assert record["predicted"]["flops_per_step"] > 0 and len(record["choices"]) > 20
    for name in ("search.png", "alpha.png", "search_log.csv", "alpha_log.csv"):
        assert (run / name).is_file(), name
    info = json.loads(run_srnas("info", "--model", run / "subnet", "--json").stdout)
    assert info["arch"] == record["choices"]
    assert info["flops_per_step"] == pytest.approx(record["predicted"]["flops_per_step"], rel=1e-9)
    ft = tmp_path / "ft"
    proc = run_srnas("finetune", "--model", run / "subnet", "--iters", "2", "--batch", "1", "--patch", "32",
                     "--out", ft, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    tuned = json.loads((ft / "model" / "config.json").read_text())
    assert tuned["unet"]["arch"] == record["choices"] and tuned["diffusion"]["prediction"] == "v"


def test_search_rejects_latency_without_a_table(run_srnas, tmp_path):
    proc = run_srnas("search", "--cost", "latency", "--iters", "1", "--out", tmp_path)
    assert proc.returncode == 2 and "needs --lut" in proc.stderr and "Traceback" not in proc.stderr
