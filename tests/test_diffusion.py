import math

import numpy as np
import pytest
import torch

from models.diffusion import Diffusion, DiffusionConfig, make_target, split_prediction
from models.errors import UserError
from models.sampler import SamplerConfig, sample
from models.schedule import NoiseSchedule, ScheduleConfig
from models.sr3_loss import noise_levels, sr3_loss


def test_linear_schedule_closed_form():
    s = NoiseSchedule(ScheduleConfig())
    assert s.T == 2000 and s.betas[0] == pytest.approx(1e-6) and s.betas[-1] == pytest.approx(1e-2)
    assert np.allclose(np.diff(s.betas), (1e-2 - 1e-6) / 1999)
    # gamma_T = prod(1 - beta) ~= exp(-sum(beta)) for small betas
    assert s.gammas[0] == 1.0
    assert s.gammas[-1] == pytest.approx(np.prod(1 - s.betas), rel=1e-12)
    assert s.gammas[-1] == pytest.approx(math.exp(-np.sum(s.betas) - np.sum(s.betas ** 2) / 2), rel=1e-3)


@pytest.mark.parametrize("k", [1, 2, 7, 100, 2000])
def test_respacing(k):
    s = NoiseSchedule(ScheduleConfig())
    ts = s.timesteps_for(k)
    assert len(ts) == k and ts[0] == 2000 and np.all(np.diff(ts) < 0)
    g, gp = s.respaced(k)
    assert gp[-1] == 1.0 and np.all(gp > g)
    # the respaced chain's alphas multiply back to the original cumulative gamma
    alphas = g / gp
    assert np.cumprod(alphas[::-1])[-1] == pytest.approx(s.gammas[2000], rel=1e-10)
    if k == 2000:
        assert np.allclose(g, s.gammas[1:][::-1])


@pytest.mark.parametrize("k,expected", [(1, [2000]), (2, [2000, 1000]), (3, [2000, 1333, 667]),
                                        (4, [2000, 1500, 1000, 500]), (7, [2000, 1714, 1429, 1143, 857, 571, 286])])
def test_trailing_spacing_closed_form(k, expected):
    """Trailing spacing: the path starts at T and its last call is at T/K, never at t = 1."""
    assert NoiseSchedule(ScheduleConfig()).timesteps_for(k).tolist() == expected


def test_two_steps_do_not_repeat_one_step():
    """With leading spacing the second call sat at t = 1 and changed nothing; now it denoises at t = T/2."""
    d = Diffusion(DiffusionConfig(prediction="v", target="residual", residual_scale=4.0))

    def net(x, nl):  # a fixed non-oracle function: its x0 depends on the noisy input
        return np.tanh(x[:, 3:]) * 0.3

    bic = np.zeros((1, 3, 16, 16), np.float32)
    one, two = (sample(net, d, bic, SamplerConfig("ddim", k), seeds=[5]) for k in (1, 2))
    assert np.abs(one - two).mean() > 1e-3


def test_x0_clip_is_per_pixel_for_residual_targets():
    d = Diffusion(DiffusionConfig(target="residual", residual_scale=20.0))
    bic = np.array([-1.0, -0.5, 0.0, 0.9, 1.0], np.float32)
    x0 = np.array([-50.0, 5.0, 30.0, 10.0, -1.0], np.float32)
    clipped = d.clip_x0(x0, bic)
    assert clipped.tolist() == pytest.approx([0.0, 5.0, 20.0, 2.0, -1.0])
    assert np.all(np.abs(bic + clipped / 20.0) <= 1.0 + 1e-7)  # every pixel stays inside the image range
    assert Diffusion(DiffusionConfig()).clip_x0(np.array([-3.0, 0.5, 2.0]), None).tolist() == [-1.0, 0.5, 1.0]


def test_sampler_step_uses_the_per_pixel_clip():
    """First DDIM step of two with an x0 prediction far out of range: y = sqrt(gp) x0c + sqrt(1 - gp) eps,
    eps = (y_T - sqrt(g) x0c) / sqrt(1 - g), with x0c the per-pixel clip."""
    d = Diffusion(DiffusionConfig(prediction="x0", target="residual", residual_scale=4.0))
    bic = np.linspace(-0.9, 0.9, 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    seen = {}
    sample(lambda x, nl: np.full_like(x[:, 3:], 7.0), d, bic, SamplerConfig("ddim", 2), seeds=[9],
           on_step=lambda k, y, pred: seen.setdefault(k, y.copy()))
    (g, _), (gp, _) = d.schedule.respaced(2)
    y_t = np.random.default_rng(9).standard_normal((3, 8, 8), dtype=np.float32)[None]
    x0c = np.minimum(7.0, (1 - bic) * 4.0)
    eps = (y_t - math.sqrt(g) * x0c) / math.sqrt(1 - g)
    assert np.allclose(seen[0], math.sqrt(gp) * x0c + math.sqrt(1 - gp) * eps, atol=1e-5)


def test_sqrt_one_minus_gamma_is_exact_near_gamma_one():
    """At gamma = 1 - 1e-6, sqrt(1 - gamma) from a float32 sqrt(gamma) is off by percents; the sampler takes it
    from gamma in float64. A v-prediction's x0 = sqrt(g) y - sqrt(1 - g) v shows which one it used."""
    d = Diffusion(DiffusionConfig(prediction="v", target="residual", residual_scale=10.0,
                                  schedule=ScheduleConfig(timesteps=1, beta_start=1e-6, beta_end=1e-6)))
    bic = np.zeros((1, 3, 8, 8), np.float32)
    out = sample(lambda x, nl: np.full_like(x[:, 3:], 50.0), d, bic, SamplerConfig("ddim", 1, clip=False), seeds=[2])
    y_t = np.random.default_rng(2).standard_normal((3, 8, 8), dtype=np.float32)[None].astype(np.float64)
    exact = (math.sqrt(1 - 1e-6) * y_t - 1e-3 * 50.0) / 10.0
    assert np.allclose(out, exact, atol=2e-6)
    sg32 = np.float32(math.sqrt(1 - 1e-6))
    assert abs(float(np.sqrt(1 - sg32.astype(np.float64) ** 2)) - 1e-3) > 1e-5  # the old way was off


@pytest.mark.parametrize("k", [0, -1, 2001])
def test_steps_out_of_range(k):
    with pytest.raises(UserError):
        NoiseSchedule(ScheduleConfig()).timesteps_for(k)


def test_continuous_noise_level_lies_between_neighbours():
    d = Diffusion(DiffusionConfig())
    sg = noise_levels(d, 10000, torch.Generator().manual_seed(0))
    assert sg.min() >= math.sqrt(d.schedule.gammas[-1]) - 1e-7 and sg.max() <= 1.0
    assert sg.std() > 0.2  # spread over the whole range, not a few discrete levels


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_parameterisations_invert(kind):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    sg = torch.rand(4, 1, 1, 1, generator=g) * 0.9 + 0.05
    y = sg * x0 + (1 - sg ** 2).sqrt() * eps
    x0_hat, eps_hat = split_prediction(kind, make_target(kind, x0, eps, sg), y, sg)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-4)
    # the same arithmetic on numpy arrays (the sampler's)
    x0_np, eps_np = split_prediction(kind, make_target(kind, x0.numpy(), eps.numpy(), sg.numpy()), y.numpy(), sg.numpy())
    assert np.allclose(x0_np, x0.numpy(), atol=1e-4) and np.allclose(eps_np, eps.numpy(), atol=1e-4)


def _oracle(d: Diffusion, x0: np.ndarray):
    def denoise(x, noise_level):
        y, sg = x[:, 3:], noise_level[:, None, None, None]
        eps = (y - sg * x0) / np.sqrt(1 - sg ** 2)
        return make_target(d.cfg.prediction, x0, eps, sg)
    return denoise


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("target", ["image", "residual"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("k", [1, 3, 50, 2000])
def test_oracle_denoiser_recovers_x0_for_every_k(prediction, target, sampler, k):
    d = Diffusion(DiffusionConfig(prediction=prediction, target=target, residual_scale=4.0))
    g = np.random.default_rng(0)
    hr = (g.random((2, 3, 8, 8)) * 1.8 - 0.9).astype(np.float32)
    bic = (hr + 0.05 * g.standard_normal((2, 3, 8, 8))).clip(-1, 1).astype(np.float32)
    out = sample(_oracle(d, d.to_x0(hr, bic)), d, bic, SamplerConfig(sampler, k), seeds=[3, 4])
    assert out.dtype == np.float32 and np.allclose(out, hr, atol=1e-4)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_stochastic_marginals_match_forward_process(sampler, eta):
    """With x0 known, each step of the respaced chain has marginal N(sqrt(g) x0, 1 - g)."""
    d = Diffusion(DiffusionConfig(prediction="eps"))
    x0 = np.full((1, 3, 96, 96), 0.5, np.float32)
    steps = 10
    seen = {}
    sample(_oracle(d, x0), d, np.zeros_like(x0), SamplerConfig(sampler, steps, eta), seeds=[7],
           on_step=lambda k, y, pred: seen.__setitem__(k, y.copy()))
    _, gp = d.schedule.respaced(steps)
    for k in (2, 5, 8):
        y = seen[k]
        assert y.mean() == pytest.approx(math.sqrt(gp[k]) * 0.5, abs=0.03)
        assert y.var() == pytest.approx(1 - gp[k], rel=0.05)


def test_same_seed_same_output_and_batch_independence():
    d = Diffusion(DiffusionConfig(prediction="eps"))

    def fake(x, nl):  # a fixed per-item function standing in for a network
        return np.tanh(x[:, 3:] * 0.5 + x[:, :3]) * nl[:, None, None, None]

    bic = np.linspace(-1, 1, 2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    cfg = SamplerConfig("ddpm", 5)
    a = sample(fake, d, bic, cfg, seeds=[11, 12])
    b = sample(fake, d, bic, cfg, seeds=[11, 12])
    c = sample(fake, d, bic, cfg, seeds=[11, 13])
    solo = sample(fake, d, bic[1:], cfg, seeds=[12])
    assert np.array_equal(a, b)
    assert not np.allclose(a[1], c[1])
    assert np.array_equal(a[1:], solo)


def test_sampler_config_validation():
    for bad in (SamplerConfig("euler", 5), SamplerConfig("ddim", 0), SamplerConfig("ddim", 5, eta=2.0)):
        with pytest.raises(UserError):
            bad.validate(2000)


def test_training_loss_reaches_zero_for_the_oracle():
    d = Diffusion(DiffusionConfig(prediction="v", target="residual"))
    hr = torch.rand(2, 3, 8, 8) * 2 - 1
    bic = hr * 0.9
    x0 = d.to_x0(hr, bic)
    g = torch.Generator().manual_seed(0)
    seen = {}

    def model(x, nl):
        y, sg = x[:, 3:], nl[:, None, None, None]
        seen["y"] = y
        eps = (y - sg * x0) / (1 - sg ** 2).sqrt()
        return make_target("v", x0, eps, sg)

    assert sr3_loss(d, model, hr, bic, g).item() < 1e-5
    assert sr3_loss(d, lambda x, nl: torch.zeros_like(x[:, :3]), hr, bic, g).item() > 1e-2


def test_distillation_adds_the_weighted_distance_to_the_teacher():
    d = Diffusion(DiffusionConfig(prediction="v", target="residual", loss="l1"))
    hr = torch.rand(2, 3, 8, 8) * 2 - 1
    bic = hr * 0.9
    student = lambda x, nl: torch.zeros_like(x[:, :3])  # noqa: E731
    teacher = lambda x, nl: torch.full_like(x[:, :3], 0.5)  # noqa: E731
    plain = sr3_loss(d, student, hr, bic, torch.Generator().manual_seed(0)).item()
    same = sr3_loss(d, student, hr, bic, torch.Generator().manual_seed(0), teacher=student, distill=3.0).item()
    guided = sr3_loss(d, student, hr, bic, torch.Generator().manual_seed(0), teacher=teacher, distill=3.0).item()
    assert same == pytest.approx(plain)  # a teacher that agrees adds nothing
    assert guided == pytest.approx(plain + 3.0 * 0.5)


def test_focused_noise_levels_sit_on_the_served_path():
    d = Diffusion(DiffusionConfig())
    sqrt_g = np.sqrt(d.schedule.gammas)
    only = noise_levels(d, 64, torch.Generator().manual_seed(0), focus_steps=[1], focus_share=1.0)
    assert torch.all(only == sqrt_g[d.schedule.T])  # one step: the network only ever runs at t = T
    served = set(sqrt_g[np.concatenate([d.schedule.timesteps_for(1), d.schedule.timesteps_for(2)])].tolist())
    mixed = noise_levels(d, 4000, torch.Generator().manual_seed(1), focus_steps=[1, 2], focus_share=0.5)
    on_path = np.array([v in served for v in mixed.tolist()])
    assert 0.45 < on_path.mean() < 0.55  # the share, up to sampling noise (4000 draws: sd 0.008)
    assert {v for v in mixed.tolist() if v in served} == served  # both served counts' levels are drawn


def test_no_focus_keeps_the_uniform_draws():
    d = Diffusion(DiffusionConfig())
    plain = noise_levels(d, 32, torch.Generator().manual_seed(3))
    assert torch.equal(plain, noise_levels(d, 32, torch.Generator().manual_seed(3), focus_steps=[1], focus_share=0.0))
    assert not torch.equal(plain, noise_levels(d, 32, torch.Generator().manual_seed(3), [1], 0.5))
