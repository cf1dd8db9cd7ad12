import pytest
import torch

from models.config import UNetConfig, preset
from models.unet import UNet
from models.blocks import SelfAttention, Stage
from search.costs import count_flops, count_params


def test_sr3_paper_matches_published_size():
    net = UNet(preset("sr3-paper"))
    params, flops = count_params(net), count_flops(net, 128)
    assert abs(params / 158.5e6 - 1) <= 0.03, params
    assert abs(flops / 79.6e9 - 1) <= 0.03, flops


def test_attention_only_at_configured_resolution_and_middle():
    net = UNet(preset("sr3-paper"))
    slots = [m.slot for m in net.modules() if isinstance(m, Stage) and isinstance(m.attn, SelfAttention)]
    # 16x16 is level 3 of 128/64/32/16/8: one encoder block, two decoder blocks, plus the middle.
    assert slots == ["down3.0", "mid.0", "up3.0", "up3.1"]


def test_tiny_forward_shape_and_noise_conditioning():
    torch.manual_seed(0)
    net = UNet(preset("tiny")).eval()
    x = torch.randn(2, 6, 128, 128)
    with torch.no_grad():
        a = net(x, torch.tensor([0.1, 0.1]))
        b = net(x, torch.tensor([0.9, 0.9]))
    assert a.shape == (2, 3, 128, 128)
    assert (a - b).abs().max() > 1e-4  # the noise level reaches the output


def test_fully_convolutional_on_other_sizes():
    net = UNet(preset("tiny")).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 6, 64, 96), torch.tensor([0.5]))
    assert out.shape == (1, 3, 64, 96)


def test_config_round_trip_and_unknown_keys():
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), attn_resolutions=(), groups=4, dropout=0.1)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"bogus": 1})


def test_every_option_changes_the_network():
    base = dict(base_channels=8, channel_mults=(1, 2), groups=4, attn_resolutions=())
    n0 = count_params(UNet(UNetConfig(**base)))
    assert count_params(UNet(UNetConfig(**{**base, "res_blocks": 2}))) > n0
    assert count_params(UNet(UNetConfig(**{**base, "attn_resolutions": (64,)}))) > n0
    assert count_params(UNet(UNetConfig(**{**base, "channel_mults": (1, 2, 2)}))) > n0
