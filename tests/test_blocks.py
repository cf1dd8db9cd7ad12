import pytest
import torch

from models.blocks import ATTN_OPS, SKIP, UNIT_OPS, ResBlock
from models.config import UNetConfig
from models.unet import UNet
from search.costs import count_flops


@pytest.mark.parametrize("op", sorted(UNIT_OPS))
def test_unit_candidates_share_the_output_shape(op):
    m = UNIT_OPS[op](16, 32)
    assert m(torch.randn(2, 16, 12, 12)).shape == (2, 32, 12, 12)


@pytest.mark.parametrize("op", sorted(ATTN_OPS))
def test_attention_candidates_keep_the_shape(op):
    m = ATTN_OPS[op](32, 8)
    x = torch.randn(2, 32, 8, 8)
    assert m(x).shape == x.shape


def _flops(module, shape):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        module(torch.randn(*shape))
    return fc.get_total_flops()


def test_efficient_candidates_are_cheaper_than_sr3s_conv():
    base = _flops(UNIT_OPS["conv3x3"](64, 64), (1, 64, 32, 32))
    for op in ("dwsep3x3", "dwsep5x5", "ibn2", "gconv3x3"):
        assert _flops(UNIT_OPS[op](64, 64), (1, 64, 32, 32)) < 0.6 * base, op
    full = _flops(ATTN_OPS["self"](64, 8), (1, 64, 32, 32))
    for op in ("pooled", "linear", "channel"):
        assert _flops(ATTN_OPS[op](64, 8), (1, 64, 32, 32)) < 0.5 * full, op


def test_skip_removes_the_second_unit():
    full, skipped = ResBlock(16, 16, 16, 4), ResBlock(16, 16, 16, 4, ops=("conv3x3", SKIP))
    assert sum(p.numel() for p in skipped.parameters()) < sum(p.numel() for p in full.parameters())
    x, emb = torch.randn(1, 16, 8, 8), torch.randn(1, 16)
    assert skipped(x, emb).shape == x.shape


def test_arch_choices_reach_the_network():
    cfg = UNetConfig(base_channels=16, channel_mults=(1, 2), groups=4, attn_resolutions=(64,))
    base = UNet(cfg)
    slim = UNet(UNetConfig(**{**cfg.__dict__, "arch": {"down0.0.unit1": "dwsep3x3", "down0.0.unit2": SKIP,
                                                         "down1.0.attn": "linear"}}))
    assert count_flops(slim, 128) < count_flops(base, 128)
    assert slim(torch.randn(1, 6, 128, 128), torch.tensor([0.3])).shape == (1, 3, 128, 128)
