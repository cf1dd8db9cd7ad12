"""The proxy study's scores and its rank correlations (bench/proxies.py)."""
import math

import torch

from bench import proxies
from models.config import preset
from models.unet import UNet


def _rows(values, psnrs, target=2.0):
    return [{"target": target, "psnr_val": v, "proxies": {k: x for k in proxies.PROXIES}}
            for x, v in zip(values, psnrs)]


def test_spearman_per_target_and_over_all():
    rows = _rows([1, 2, 3, 4], [30.0, 31.0, 32.0, 33.0]) + _rows([4, 3, 2, 1], [30.0, 31.0, 32.0, 33.0], 3.0)
    rho = proxies.correlations(rows)
    assert rho["2x"]["zen"] == 1.0 and rho["3x"]["zen"] == -1.0 and rho["all"]["n"] == 8
    assert abs(rho["all"]["zen"]) < 1.0
    few = proxies.correlations(_rows([1, 2, 3], [30.0, 31.0, 32.0]))
    assert math.isnan(few["all"]["gradnorm"])  # three networks rank nothing worth reporting


def test_synflow_leaves_the_weights_as_they_were_and_zen_is_finite():
    torch.manual_seed(0)
    net = UNet(preset("tiny"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    score = proxies.synflow(net, 32)
    assert math.isfinite(score) and net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert math.isfinite(proxies.zen(net, 32))
