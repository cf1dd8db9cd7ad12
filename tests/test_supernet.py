import torch

from models.blocks import MixedOp
from models.config import UNetConfig
from models.unet import UNet
from search.supernet import (arch_parameters, derive_arch, extract, mixed_ops, one_hot_weights, space_config,
                             weight_parameters)

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
