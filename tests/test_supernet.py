import dataclasses

import torch

from models.blocks import MixedOp, WidthSlot
from models.config import UNetConfig
from models.unet import UNet
from search.supernet import (arch_parameters, derive_arch, extract, mixed_ops, one_hot_weights, random_arch,
                             space_config, weight_parameters)

BASE = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, attn_resolutions=(64,))
SPACE = {"down0.0.unit1": ["conv3x3", "dwsep3x3", "ibn2"], "down0.0.unit2": ["conv3x3", "skip"],
         "down1.0.attn": ["none", "self", "linear"], "up0.1.unit2": ["gconv3x3", "dwsep5x5", "skip"]}


def test_supernet_has_one_mixed_op_per_searchable_slot():
    net = UNet(space_config(BASE, SPACE))
    slots = sorted(m.slot for m in mixed_ops(net).values())
    assert slots == sorted(SPACE)
    assert len(arch_parameters(net)) == 4
    assert len(weight_parameters(net)) + 4 == len(list(net.parameters()))


def test_extracted_subnet_equals_supernet_with_one_hot_alpha():
    torch.manual_seed(0)
    net = UNet(space_config(BASE, SPACE)).eval()
    with torch.no_grad():
        for m in mixed_ops(net).values():
            m.alpha.copy_(torch.randn_like(m.alpha))
    arch = derive_arch(net)
    sub = extract(net)
    assert not any(isinstance(m, MixedOp) for m in sub.modules())
    one_hot_weights(net, arch)
    x, level = torch.randn(2, 6, 64, 64), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        assert torch.allclose(net(x, level), sub(x, level), atol=1e-6)
    assert sub.cfg.arch == arch and all(isinstance(v, str) for v in arch.values())


def test_default_softmax_mixes_all_candidates():
    net = UNet(space_config(BASE, SPACE))
    x, level = torch.randn(1, 6, 64, 64), torch.tensor([0.5])
    net(x, level).square().mean().backward()
    for a in arch_parameters(net):
        assert a.grad is not None and a.grad.abs().sum() > 0


WIDE_SPACE = {**SPACE, "width0": ["1", "0.5"], "width1": ["1", "0.5"], "down1.0.shortcut": "conv1x1"}


def test_width_extraction_equals_supernet_with_one_hot_alpha():
    torch.manual_seed(1)
    net = UNet(space_config(BASE, WIDE_SPACE)).eval()
    x, level = torch.randn(2, 6, 64, 64), torch.tensor([0.3, 0.9])
    for widths in (("0.5", "1"), ("1", "0.5"), ("0.5", "0.5")):
        arch = {**derive_arch(net), "width0": widths[0], "width1": widths[1], "down0.0.unit1": "ibn2",
                "up0.1.unit2": "gconv3x3"}
        sub = extract(net, arch)
        assert sub.stem.out_channels == int(8 * float(widths[0]))
        assert not any(isinstance(m, (MixedOp, WidthSlot)) for m in sub.modules())
        one_hot_weights(net, arch)
        with torch.no_grad():
            assert torch.equal(net(x, level), sub(x, level))
        assert len(list(sub.parameters())) < len(list(net.parameters()))


def test_narrow_widths_train_the_shared_weights():
    torch.manual_seed(2)
    net = UNet(space_config(BASE, WIDE_SPACE)).train()
    chosen = set()
    for _ in range(8):
        net.zero_grad()
        net(torch.randn(1, 6, 64, 64), torch.tensor([0.5])).square().mean().backward()
        w = net.width_slots["width0"]
        chosen.add(net.stem.weight.grad[4:].abs().sum().item() > 0)  # channels 4..7 exist only at full width
        assert w.alpha.grad is not None and w.alpha.grad.abs().sum() > 0  # the straight-through gate
    assert chosen == {True, False}  # both widths were sampled; the narrow one leaves the outer channels alone


def test_skip_concatenations_keep_each_part_prefix():
    net = UNet(space_config(BASE, WIDE_SPACE))
    narrow, params = net.narrow({"width0": "0.5", "width1": "1"})
    wide_w = dict(net.named_parameters())
    stage = next(k for k, parts in narrow.concat_parts.items()
                 if parts[0] == net.concat_parts[k][0] and parts[1] < net.concat_parts[k][1])
    key = f"{stage}.res.skip.weight"
    (a, b), (a2, b2) = net.concat_parts[stage], narrow.concat_parts[stage]
    cut = params[key]
    assert cut.shape[1] == a2 + b2
    assert torch.equal(cut[:, :a2], wide_w[key][: cut.shape[0], :a2])
    assert torch.equal(cut[:, a2:], wide_w[key][: cut.shape[0], a:a + b2])


def test_transfer_arch_to_a_deeper_preset():
    from models.config import preset
    from search.costs import count_flops
    from search.space import make_space, stages, transfer_arch

    tiny = preset("tiny")
    searched = random_arch(UNet(space_config(tiny, make_space("default", tiny))), torch.Generator().manual_seed(5))
    assert transfer_arch(searched, tiny) == searched  # same preset: unchanged
    paper = preset("sr3-paper")
    arch = transfer_arch(searched, paper)
    assert arch["width4"] == searched["width3"] and arch["down4.0.unit1"] == searched["down3.0.unit1"]
    assert arch["up4.1.unit2"] == searched["up3.1.unit2"] and arch["down3.down"] == searched["down2.down"]
    has_attn = dict(stages(paper))
    assert all(has_attn[k.rsplit(".", 1)[0]] for k in arch if k.endswith(".attn"))
    net = UNet(dataclasses.replace(paper, arch=arch))
    assert not any(isinstance(m, (MixedOp, WidthSlot)) for m in net.modules())
    assert count_flops(net, 32) < count_flops(UNet(paper), 32)
