import torch

from nrp_lightning.evaluation.metrics import detail_ratio
from nrp_lightning.losses import feature_distance, pixel_loss, ragan_critic_loss, ragan_generator_loss, vanilla_critic_loss


def test_ragan_losses_reward_the_right_side():
    real, fake = torch.full((4,), 3.0), torch.full((4,), -3.0)
    # A critic that already separates real from fake has a small loss; the purifier a large one.
    assert ragan_critic_loss(real, fake) < 0.01
    assert ragan_generator_loss(fake, real) > 5
    assert ragan_generator_loss(real, fake) < 0.01  # purified judged more real than real
    assert vanilla_critic_loss(real, fake) < 0.05


def test_distances_are_zero_at_equality_and_positive_otherwise():
    a = torch.rand(2, 8, 4, 4)
    for d in ("mse", "mae", "cosine"):
        assert feature_distance(a, a, d).abs() < 1e-6
        assert feature_distance(a, a + torch.rand_like(a) - 0.5, d) > 0
    assert torch.isclose(pixel_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)), torch.tensor(1.0))


def test_detail_ratio_sees_smoothing_and_noise():
    """The fine detail a defence keeps: below 1 for a blurred copy, above 1 for a noisier one."""
    torch.manual_seed(0)
    texture = torch.rand(2, 3, 8, 8).repeat_interleave(2, -1).repeat_interleave(2, -2)
    x = torch.nn.functional.pad(texture.repeat(1, 1, 4, 4), (1, 1, 1, 1), mode="circular")  # 66 px, periodic
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert detail_ratio(blurred, x).max() < 0.5 < 1.2 < detail_ratio(noisy, x).min()  # measured: 1.35
    assert torch.allclose(detail_ratio(x, x), torch.ones(2))
