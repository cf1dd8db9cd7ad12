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


def test_a_folded_network_runs_every_operator_below_the_tile():
    torch.manual_seed(0)
    net = UNet(preset("tiny-fold2")).eval()
    sizes = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[-1]))
    with torch.no_grad():
        out = net(torch.randn(2, 6, 128, 128), torch.tensor([0.5, 0.5]))
    assert out.shape == (2, 3, 128, 128) and max(sizes) == 64
    assert net.stem.in_channels == 24 and net.head.op.out_channels == 12
    plain = UNet(preset("tiny"))  # fold 1 adds no parameters: shipped weights load as before
    assert plain.stem.weight.shape == (16, 6, 3, 3) and not any("fold" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="fold 3"):
        UNet(UNetConfig.from_dict({**preset("tiny").to_dict(), "fold": 3}))


def test_the_norm_free_preset_has_no_normalisation_and_its_subnets_export():
    import onnx

    from export.onnx_export import to_onnx
    from export.runtime import RuntimeConfig, ort_session
    from search.space import make_space
    from search.supernet import derive_arch, extract, space_config

    torch.manual_seed(0)
    base = preset("tiny-fold2-nonorm")
    supernet = UNet(space_config(base, make_space("default", base)))
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in supernet.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in UNet(preset("tiny-fold2")).modules())
    sub = extract(supernet, derive_arch(supernet)).eval()
    x, t = torch.randn(1, 6, 128, 128), torch.tensor([0.3])
    with torch.no_grad():
        want = sub(x, t)
    model = to_onnx(sub, (x, t), ["x", "t"])
    assert not {n.op_type for n in onnx.load_from_string(model).graph.node} & {"GroupNormalization",
                                                                               "InstanceNormalization"}
    sess = ort_session(model, RuntimeConfig(intra_threads=1, providers=("CPUExecutionProvider",)))
    got = sess.run(None, {"x": x.numpy(), "t": t.numpy()})[0]
    assert abs(got - want.numpy()).max() < 1e-4


def test_a_folded_subnet_exports_and_matches_its_supernet():
    from export.onnx_export import to_onnx
    from export.runtime import RuntimeConfig, ort_session
    from search.space import make_space
    from search.supernet import derive_arch, extract, one_hot_weights, search_slots, space_config

    torch.manual_seed(0)
    base = preset("tiny-fold2")
    supernet = UNet(space_config(base, make_space("default", base))).eval()
    for m in search_slots(supernet):
        m.alpha.data.normal_()
    arch = derive_arch(supernet)
    sub = extract(supernet, arch)
    one_hot_weights(supernet, arch)
    x, t = torch.randn(1, 6, 128, 128), torch.tensor([0.3])
    with torch.no_grad():
        want = sub(x, t)
        assert torch.equal(supernet(x, t), want)  # the argmax widths and operators, weights inherited
    sess = ort_session(to_onnx(sub, (x, t), ["x", "t"]), RuntimeConfig(intra_threads=1,
                                                                        providers=("CPUExecutionProvider",)))
    got = sess.run(None, {"x": x.numpy(), "t": t.numpy()})[0]
    assert abs(got - want.numpy()).max() < 1e-4
