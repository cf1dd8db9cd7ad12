"""Sandwich-rule weight steps: whole single-path subnets, the largest and smallest among them, the relaxation back."""
import pytest
import torch

from search.nas import SearchConfig, SearchTrainer
from search.sandwich import extreme_arch, running
from search.supernet import arch_parameters, mixed_ops, search_slots, weight_parameters

TOY = dict(batch=1, patch=32, warmup=1, checkpoint_every=2, space="ops",
           unet_overrides={"base_channels": 8, "groups": 4})


def _ran(t: SearchTrainer) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    for m in mixed_ops(t.net).values():
        for name, cand in m.candidates.items():
            cand.register_forward_hook(lambda *a, slot=m.slot, name=name: calls.append((slot, name)))
    return calls


def test_the_extremes_are_the_costliest_and_cheapest_choices(tmp_path):
    t = SearchTrainer(SearchConfig(iters=1, **TOY), tmp_path)
    big, small = extreme_arch(t.flops, largest=True), extreme_arch(t.flops, largest=False)
    assert t.flops.of_arch(big) > t.flops.of_arch(small)
    for slot, per_ctx in t.flops.per_slot.items():
        costs = next(iter(per_ctx.values()))
        assert costs[big[slot]] == max(costs.values()) and costs[small[slot]] == min(costs.values())


def test_a_running_path_computes_its_choices_alone_then_the_relaxation_returns(tmp_path):
    t = SearchTrainer(SearchConfig(iters=1, **TOY), tmp_path)
    calls = _ran(t)
    small = extreme_arch(t.flops, largest=False)
    weighs = [m.weigh for m in search_slots(t.net)]
    with running(t.net, small):
        t.net(torch.randn(1, 6, 32, 32), torch.tensor([0.5])).mean().backward()
    assert calls and all(small[slot] == name for slot, name in calls)
    assert len(calls) == len({slot for slot, _ in calls})  # one candidate per slot reached
    assert all(a.grad is None for a in arch_parameters(t.net))  # a fixed path says nothing about alpha
    assert [m.weigh for m in search_slots(t.net)] == weighs
    assert not any(m.single_path for m in mixed_ops(t.net).values())
    calls.clear()
    t.net(torch.randn(1, 6, 32, 32), torch.tensor([0.5]))
    assert len(calls) > len({slot for slot, _ in calls})  # the relaxed supernet runs every candidate again


def test_a_sandwich_weight_step_trains_the_largest_smallest_and_drawn_subnets(tmp_path):
    t = SearchTrainer(SearchConfig(iters=2, weight_paths="sandwich", sandwich_drawn=2, warmup_alpha=1, **TOY),
                      tmp_path)
    calls = _ran(t)
    before = [p.detach().clone() for p in weight_parameters(t.net)]
    alphas = [a.detach().clone() for a in arch_parameters(t.net)]
    row = t.train_step()  # the weight warm-up: weights only
    assert row["loss"] > 0 and row["alpha_loss"] == ""
    per_slot = {}
    for slot, name in calls:
        per_slot.setdefault(slot, []).append(name)
    big, small = t._extremes
    assert all(len(names) == 4 for names in per_slot.values())  # 4 subnets, one candidate each
    assert all(names[0] == big[slot] and names[1] == small[slot] for slot, names in per_slot.items())
    assert any(not torch.equal(p, b) for p, b in zip(weight_parameters(t.net), before))
    assert all(torch.equal(a, b) for a, b in zip(arch_parameters(t.net), alphas))
    t.train_step()  # alpha's step still goes through the relaxation
    assert any(not torch.equal(a, b) for a, b in zip(arch_parameters(t.net), alphas))


def test_unknown_weight_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="weight_paths"):
        SearchTrainer(SearchConfig(iters=1, weight_paths="ladder", **TOY), tmp_path)


def test_a_sandwich_warm_up_hands_the_weights_to_the_relaxation_once_alpha_moves(tmp_path):
    t = SearchTrainer(SearchConfig(iters=2, weight_paths="sandwich-warmup", sandwich_drawn=1, warmup_alpha=1, **TOY),
                      tmp_path)
    calls = _ran(t)
    t.train_step()  # warm-up: the largest, the smallest and one drawn subnet, one candidate per slot each
    assert len(calls) == 3 * len({slot for slot, _ in calls})
    calls.clear()
    t.weight_step()  # after the warm-up: the weighted sum runs every candidate of every slot reached
    reached = {slot for slot, _ in calls}
    assert len(calls) == sum(len(m.names) for m in mixed_ops(t.net).values() if m.slot in reached)
