"""The architecture search loop, at toy scale: splits, resume, collapse warning, CLI outputs."""
import json
import warnings

import pytest
import torch
import yaml

from search.nas import SearchConfig, SearchTrainer, entropy
from search.supernet import arch_parameters, mixed_ops

# "ops" keeps the widths fixed (16 width contexts would multiply the cost tables); the CLI test covers widths.
TOY = dict(batch=1, patch=32, warmup=1, checkpoint_every=2, space="ops",
           unet_overrides={"base_channels": 8, "groups": 4})


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


@pytest.mark.parametrize("paths", ["relaxed", "sandwich"])
def test_search_resume_is_exact(tmp_path, paths):
    cfg = dict(warmup_alpha=1, relax="temperature", weight_paths=paths, **TOY)
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
    cfg.write_text(yaml.safe_dump({"warmup": 1}))  # the tiny preset in the default space, widths included
    run = tmp_path / "search"
    proc = run_srnas("search", "--config", cfg, "--iters", "3", "--batch", "1", "--patch", "32", "--warmup-alpha",
                     "1", "--relax", "gumbel", "--cost", "flops", "--loss-form", "budget", "--target-flops", "1e8", "--lambda-budget", "0.5",
                     "--out", run, "--no-progress", "--prediction", "v", "--target", "residual", "--score-crops", "1")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / "arch.json").read_text())
    assert record["predicted"]["flops_per_step"] > 0 and len(record["choices"]) > 20
    assert record["search"]["cost_loss"]["lambda_budget"] == 0.5 and record["search"]["cost_loss"]["form"] == "budget"
    assert {"width0", "down0.down", "up1.up"} <= set(record["choices"])
    slots = set(record["alpha_weights"])
    assert set(record["entropy"]) == set(record["margin"]) == slots and all(0 <= m <= 1 for m in record["margin"].values())
    gap = record["discretization"]  # the supernet as it ended beside the subnet it hands over, on val
    assert gap["split"] == "val" and gap["gap_db"] == pytest.approx(gap["supernet_psnr_y"] - gap["inherited_psnr_y"])
    assert f"gap {gap['gap_db']:.3f} dB" in proc.stdout
    header = (run / "search_log.csv").read_text().splitlines()[0].split(",")
    assert {"mean_margin", "min_margin", "cost_scale", "priced_latency_ms", "expected_skip_share"} <= set(header)
    for name in ("search.png", "alpha.png", "search_log.csv", "alpha_log.csv"):
        assert (run / name).is_file(), name
    info = json.loads(run_srnas("info", "--model", run / "subnet", "--json").stdout)
    assert info["arch"] == record["choices"]
    assert info["flops_per_step"] == pytest.approx(record["predicted"]["flops_per_step"], rel=1e-9)
    # the arch carried over to a preset's network: the same preset gives the same costs
    info = json.loads(run_srnas("info", "--preset", "tiny", "--arch", run / "arch.json", "--json", "--latency", "2").stdout)
    assert info["arch"] == record["choices"] and info["latency_s"]["seconds"] > 0
    assert info["flops_per_step"] == pytest.approx(record["predicted"]["flops_per_step"], rel=1e-9)
    bad = run_srnas("info", "--preset", "tiny", "--arch", cfg)
    assert bad.returncode == 2 and "not a searched arch.json" in bad.stderr and "Traceback" not in bad.stderr
    ft = tmp_path / "ft"
    proc = run_srnas("finetune", "--model", run / "subnet", "--iters", "2", "--batch", "1", "--patch", "32",
                     "--out", ft, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    tuned = json.loads((ft / "model" / "config.json").read_text())
    assert tuned["unet"]["arch"] == record["choices"] and tuned["diffusion"]["prediction"] == "v"
    # the comparison table: the supernet and the fine-tuned subnet against the subnet as searched
    proc = run_srnas("compare", f"searched={run / 'subnet'}", f"supernet={run / 'supernet'}",
                     f"tuned={ft / 'model'}", "--reps", "2", "--crops", "1", "--out", tmp_path / "cmp", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["model"] for r in rows] == ["searched", "supernet", "tuned"]
    assert rows[1]["flops_per_step"] > rows[0]["flops_per_step"] == rows[2]["flops_per_step"]
    assert rows[0]["predicted_latency_s"] is None and all(r["latency_s"] > 0 and r["psnr_y"] > 10 for r in rows)
    assert "| searched |" in proc.stdout and "1.00×" in proc.stdout


@pytest.mark.parametrize("command", ["compare", "bench"])
def test_model_lists_reject_bad_input(run_srnas, tmp_path, command):
    proc = run_srnas(command, "no-equals-sign")
    assert proc.returncode == 2 and "give NAME=MODEL_DIR (got 'no-equals-sign')" in proc.stderr
    proc = run_srnas(command, f"x={tmp_path / 'missing'}")
    assert proc.returncode == 2 and "no model folder" in proc.stderr and "Traceback" not in proc.stderr


def test_hard_gumbel_runs_one_candidate_per_slot(tmp_path):
    t = SearchTrainer(SearchConfig(iters=2, relax="gumbel-hard", warmup_alpha=0, **TOY), tmp_path)
    calls = []
    for m in mixed_ops(t.net).values():
        for name, cand in m.candidates.items():
            cand.register_forward_hook(lambda *a, slot=m.slot: calls.append(slot))
    t.net(torch.randn(1, 6, 32, 32), torch.tensor([0.5])).mean().backward()
    assert calls and len(calls) == len(set(calls))  # one candidate ran in each slot reached
    assert all(a.grad is not None for a in arch_parameters(t.net) if a.grad is not None)
    assert sum(a.grad.abs().sum().item() > 0 for a in arch_parameters(t.net) if a.grad is not None) > 5


def test_yaml_exponents_become_numbers():
    from search.objective import CostLossConfig

    assert CostLossConfig(form="budget", target_flops="0.7e9").target_flops == 7e8
    with pytest.raises(ValueError, match="expected a number"):
        CostLossConfig(target_latency="fast")


def test_search_rejects_latency_without_a_table(run_srnas, tmp_path):
    proc = run_srnas("search", "--cost", "latency", "--iters", "1", "--out", tmp_path)
    assert proc.returncode == 2 and "needs --lut" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("relax", ["softmax", "gumbel-hard"])  # hard Gumbel prices the forward's own sample
def test_balance_brings_the_task_gradient_to_the_cost_penalty_scale(tmp_path, relax):
    from search.nas import _rms, grads_of
    from search.objective import CostLossConfig

    loss = CostLossConfig(form="absolute", target_flops=1e6, lambda_budget=0.0)  # the task's gradient alone
    t = SearchTrainer(SearchConfig(iters=2, warmup_alpha=0, alpha_lr=0.0, balance_alpha=True, lambda_skip=0.0,
                                   cost_loss=loss, relax=relax, **TOY), tmp_path)
    row = t.alpha_step()
    alphas = arch_parameters(t.net)
    assert row["task_gain"] > 0 and _rms([a.grad for a in alphas]) > 0
    if relax == "softmax":  # (a Gumbel step's sample, and its graph, are gone once the step is done)
        flops, _ = t.expected_costs(t.cfg.priced())
        unit = _rms(grads_of(torch.abs(flops / 1e6 - 1), alphas))
        assert _rms([a.grad for a in alphas]) == pytest.approx(unit, rel=1e-4)


def test_balance_needs_a_target(run_srnas, tmp_path):
    proc = run_srnas("search", "--balance-alpha", "--loss-form", "additive", "--iters", "1", "--out", tmp_path)
    assert proc.returncode == 2 and "balance_alpha needs a cost form with a target" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_alpha_gradient_report_on_a_finished_search(tmp_path):
    from bench.alpha_gradients import measure
    from search.objective import CostLossConfig

    loss = CostLossConfig(form="budget", target_flops=1e6)
    SearchTrainer(SearchConfig(iters=2, warmup_alpha=0, cost_loss=loss, **TOY), tmp_path).run(progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = measure(tmp_path, batches=3)
    assert r["step"] == 2 and r["batches"] == 3 and sorted(p.name for p in tmp_path.iterdir()) == before
    assert r["task_grad_abs"] > 0 and r["cost_grad_abs"] > 0 and r["task_snr_median"] >= 0
    assert r["alpha_held_by_decay"] == pytest.approx(r["task_mean_grad_abs"] / 1e-3)
