import math

import pytest
import torch

from models.config import UNetConfig
from models.unet import UNet
from search.costs import count_flops, slot_flops
from search.relax import Relaxation, TemperatureSchedule
from search.supernet import (arch_parameters, derive_arch, extract, mixed_ops, random_arch, search_slots,
                             space_config)

BASE = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, attn_resolutions=(64,))
SPACE = {"down0.0.unit1": ["conv3x3", "dwsep3x3", "ibn2"], "down0.0.unit2": ["conv3x3", "skip"],
         "down1.0.attn": ["none", "self", "linear"], "up1.0.unit1": ["conv3x3", "gconv3x3", "dwsep5x5"]}
WIDE_SPACE = {**SPACE, "width0": ["1", "0.5"], "width1": ["1", "0.5", "0.25"], "down1.0.shortcut": "conv1x1"}


def test_slot_flops_predict_every_subnet_exactly():
    net = UNet(space_config(BASE, SPACE))
    costs = slot_flops(net, 64)
    torch.manual_seed(1)
    for _ in range(5):
        with torch.no_grad():
            for m in mixed_ops(net).values():
                m.alpha.copy_(torch.randn_like(m.alpha))
        arch = derive_arch(net)
        assert costs.of_arch(arch) == pytest.approx(count_flops(extract(net), 64), rel=1e-9)


def test_cost_gradient_matches_the_softmax_closed_form():
    net = UNet(space_config(BASE, SPACE))
    costs = slot_flops(net, 64)
    torch.manual_seed(2)
    with torch.no_grad():
        for m in mixed_ops(net).values():
            m.alpha.copy_(torch.randn_like(m.alpha))
    costs.expected(net).backward()
    for m in mixed_ops(net).values():
        w = torch.softmax(m.alpha.detach(), 0).double()
        c = torch.tensor([costs.per_slot[m.slot][""][n] for n in m.names], dtype=torch.float64)
        closed = w * (c - (w * c).sum())  # d/d alpha_j of sum_k softmax_k c_k
        assert torch.allclose(m.alpha.grad.double(), closed, rtol=1e-4, atol=1e-3 * c.max().item())


def test_tanh_schedule_runs_from_exactly_max_to_exactly_min():
    s = TemperatureSchedule("tanh", 20.0, 0.08, 1000)
    assert s(0) == pytest.approx(20.0, abs=1e-9) and s(1000) == pytest.approx(0.08, abs=1e-9)
    assert s(-5) == s(0) and s(2000) == s(1000)  # held at both ends
    assert s(500) == pytest.approx((20.0 + 0.08) / 2)
    vals = [s(x) for x in range(0, 1001, 50)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    for kind in ("linear", "exp"):
        k = TemperatureSchedule(kind, 20.0, 0.08, 100)
        assert k(0) == pytest.approx(20.0) and k(100) == pytest.approx(0.08)


def _random_alphas(net: UNet, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for a in arch_parameters(net):
            a.copy_(2 * torch.randn_like(a))


@pytest.mark.parametrize("mode", ["gumbel", "gumbel-hard"])
def test_gumbel_cost_prices_the_sample_the_forward_drew(mode):
    net = UNet(space_config(BASE, WIDE_SPACE)).train()
    costs = slot_flops(net, 64)
    _random_alphas(net, 5)
    relax = Relaxation(mode, TemperatureSchedule(steps=10)).install(net)
    seen = set()
    for _ in range(6):
        relax.samples.clear()
        net(torch.zeros(1, 6, 64, 64), torch.full((1,), 0.5))
        assert set(relax.samples) == {m.slot for m in search_slots(net)}  # every slot, widths included
        first, again = costs.expected(net, "sample").item(), costs.expected(net, "sample").item()
        assert first == again  # pricing draws nothing new
        if mode == "gumbel-hard":  # one-hot samples: exactly the cost of the architecture that ran
            ran = {**derive_arch(net), **{k: names[int(w.argmax())] for k, w, names in
                                          ((m.slot, relax.samples[m.slot], m.names) for m in search_slots(net))}}
            assert first == pytest.approx(costs.of_arch(ran), rel=1e-9)
            seen.add(first)
    assert mode == "gumbel" or len(seen) > 1  # the samples differ from step to step, and so do their costs


def test_width_slots_draw_from_the_chosen_relaxation():
    net = UNet(space_config(BASE, WIDE_SPACE)).train()
    slot = net.width_slots["width0"]
    with torch.no_grad():
        slot.alpha.copy_(torch.tensor([0.0, 2.0]))  # "0.5" favoured: softmax 0.88
    torch.manual_seed(0)
    for mode, temperature, expected in [("softmax", None, 0.881), ("temperature", 20.0, 0.525)]:
        relax = Relaxation(mode, TemperatureSchedule("linear", 20.0, 20.0, 10)).install(net)
        draws = [slot.choose(True) for _ in range(600)]
        share = sum(name == "0.5" for name, _ in draws) / len(draws)
        assert share == pytest.approx(expected, abs=0.06), (mode, share)
        name, gate = draws[-1]
        assert gate.item() == pytest.approx(1.0) and gate.requires_grad  # straight-through: 1, with a gradient
        assert relax.samples["width0"][slot.names.index(name)].item() == pytest.approx(1.0)
    assert slot.choose(False)[0] == "0.5"  # eval mode: the most likely width


def test_argmax_pricing_is_the_extracted_architecture_with_the_expected_gradient():
    net = UNet(space_config(BASE, WIDE_SPACE))
    costs = slot_flops(net, 64)
    _random_alphas(net, 6)
    hard = costs.expected(net, "argmax")
    assert hard.item() == pytest.approx(costs.of_arch(derive_arch(net)), rel=1e-9)
    hard.backward()
    grads = [a.grad.clone() for a in arch_parameters(net)]
    for a in arch_parameters(net):
        a.grad = None
    soft = costs.expected(net, "probs")
    assert soft.item() != pytest.approx(hard.item(), rel=1e-3)
    assert all(g.abs().sum() > 0 for g in grads)  # every slot still receives a pull


def test_cost_weight_ramp_and_skip_share():
    from search.nas import expected_skip_share
    from search.objective import CostLossConfig, cost_loss

    task, lat = torch.tensor(0.5), torch.tensor(0.02)
    budget = CostLossConfig(form="budget", target_latency=0.01)
    assert cost_loss(task, budget, None, lat, scale=0.0).item() == pytest.approx(0.5)
    assert cost_loss(task, budget, None, lat, scale=0.5).item() == pytest.approx(0.5 + 0.5 * 1.0)
    assert cost_loss(task, CostLossConfig(form="fbnet"), None, lat, scale=0.0).item() == pytest.approx(0.5)
    net = UNet(space_config(BASE, SPACE))
    assert expected_skip_share(net).item() == pytest.approx(0.5)  # uniform alphas, one of two choices
    with torch.no_grad():
        mixed_ops(net)["down.0.res.unit2"].alpha.copy_(torch.tensor([0.0, 4.0]))
    assert expected_skip_share(net).item() > 0.95


@pytest.mark.parametrize("mode", ["softmax", "temperature", "gumbel", "gumbel-hard"])
def test_relaxations_give_distributions(mode):
    r = Relaxation(mode, TemperatureSchedule(steps=10))
    r.step = 10
    a = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
    w = r(a)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-5) and (w >= 0).all()
    if mode == "gumbel-hard":
        assert sorted(w.tolist()) == [0.0, 0.0, 1.0]
    (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0  # straight-through keeps a gradient
    if mode == "temperature":  # low temperature sharpens towards the argmax
        assert w[0] > 0.99


def test_cost_loss_forms():
    from search.objective import CostLossConfig, cost_loss

    task = torch.tensor(0.5)
    flops, lat = torch.tensor(2e9, requires_grad=True), torch.tensor(0.02, requires_grad=True)
    add = cost_loss(task, CostLossConfig(), flops, lat)
    assert add.item() == pytest.approx(0.5 + 5e-17 * 2e9 + 5e-5 * 0.02)
    fb = cost_loss(task, CostLossConfig(form="fbnet"), None, lat)
    assert fb.item() == pytest.approx(0.5 * 0.2 * math.log(20.0) ** 0.6)
    under = cost_loss(task, CostLossConfig(form="budget", target_flops=3e9), flops, None)
    over = cost_loss(task, CostLossConfig(form="budget", target_flops=1e9), flops, None)
    assert under.item() == pytest.approx(0.5) and over.item() == pytest.approx(1.5)
    over.backward()
    assert flops.grad.item() > 0  # only cost above the budget pulls alpha
    flops.grad = None
    below = cost_loss(task, CostLossConfig(form="absolute", target_flops=4e9), flops, None)
    assert below.item() == pytest.approx(1.0)  # |2/4 - 1| = 0.5: cost below the target is penalised too
    below.backward()
    assert flops.grad.item() < 0  # and pulls the search up to its budget
    assert cost_loss(task, CostLossConfig(form="absolute", target_flops=2e9), flops, None).item() == pytest.approx(0.5)


def test_width_contexts_predict_every_subnet_exactly():
    net = UNet(space_config(BASE, WIDE_SPACE))
    costs = slot_flops(net, 64)
    assert len(costs.fixed) == 2 * 3
    rng = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(6):
        arch = random_arch(net, rng)
        seen.add((arch["width0"], arch["width1"]))
        assert costs.of_arch(arch) == pytest.approx(count_flops(extract(net, arch), 64), rel=1e-9)
    assert len(seen) > 1
    half = {**derive_arch(net), "width0": "0.5", "width1": "0.5"}
    assert costs.of_arch(half) < 0.5 * costs.of_arch(derive_arch(net))  # narrow levels are where FLOPs go


def test_expected_cost_gradient_matches_finite_differences():
    net = UNet(space_config(BASE, WIDE_SPACE)).double()
    costs = slot_flops(net, 64)
    torch.manual_seed(4)
    alphas = arch_parameters(net)
    with torch.no_grad():
        for a in alphas:
            a.copy_(torch.randn_like(a))
    costs.expected(net).backward()
    h = 1e-6
    for a in alphas:
        for j in range(a.numel()):
            with torch.no_grad():
                a[j] += h
                up = costs.expected(net).item()
                a[j] -= 2 * h
                down = costs.expected(net).item()
                a[j] += h
            numeric = (up - down) / (2 * h)
            assert a.grad[j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-6 * abs(up))
