import pytest
import torch
from torch import nn

from nrp_lightning.attacks import SSP
from nrp_lightning.attacks.ssp import random_start, ssp
from nrp_lightning.losses import feature_distance


def tiny_features() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
    return net.requires_grad_(False).eval()


@pytest.mark.parametrize("eps", [0, 1, 8, 16])
@pytest.mark.parametrize("fill", [None, 0.0, 1.0])
@pytest.mark.parametrize("start", ["normal", "uniform", "none"])
def test_ssp_never_leaves_the_eps_ball_or_the_image_range(eps, fill, start):
    x = torch.rand(2, 3, 32, 32) if fill is None else torch.full((2, 3, 32, 32), fill)
    x_adv = ssp(x, tiny_features(), eps=eps, step_size=3, steps=4, start=start)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if eps == 0:
        assert torch.equal(x_adv, x)


@pytest.mark.parametrize("distance", ["mse", "mae", "cosine"])
def test_ssp_increases_the_feature_distortion_it_maximizes(distance):
    f, x = tiny_features(), torch.rand(4, 3, 32, 32)
    start = random_start(x, 16 / 255, "normal", torch.Generator().manual_seed(0))
    attacked = ssp(x, f, eps=16, step_size=2, steps=10, distance=distance, generator=torch.Generator().manual_seed(0))
    before = feature_distance(f(start), f(x), distance)
    after = feature_distance(f(attacked), f(x), distance)
    assert after > before * 1.05


def test_ssp_more_steps_distort_more():
    f, x = tiny_features(), torch.rand(4, 3, 32, 32)
    d = [feature_distance(f(ssp(x, f, eps=8, step_size=1, steps=t, start="uniform",
                                generator=torch.Generator().manual_seed(0))), f(x), "mse") for t in (1, 4, 16)]
    assert d[0] < d[1] < d[2]


def test_ssp_needs_a_random_start_because_the_gradient_vanishes_at_x():
    f, x = tiny_features(), torch.rand(2, 3, 32, 32)
    assert torch.equal(ssp(x, f, eps=16, steps=5, distance="mse", start="none"), x)


def test_ssp_is_reproducible_with_a_generator_and_leaves_features_frozen():
    f, x = tiny_features(), torch.rand(2, 3, 32, 32)
    a = ssp(x, f, steps=3, generator=torch.Generator().manual_seed(5))
    b = ssp(x, f, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert all(p.grad is None for p in f.parameters())


def test_ssp_callable_validates_its_settings():
    with pytest.raises(ValueError, match="unknown distance"):
        SSP(distance="l3")
    with pytest.raises(ValueError, match="start"):
        SSP(start="gaussian")
    with pytest.raises(ValueError, match=">= 0"):
        ssp(torch.rand(1, 3, 8, 8), tiny_features(), eps=-1)


@pytest.mark.gpu
def test_ssp_runs_on_cuda_without_host_syncs():
    f, x = tiny_features().cuda(), torch.rand(2, 3, 32, 32, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        x_adv = ssp(x, f, steps=3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x_adv.device == x.device
