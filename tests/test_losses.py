import torch

from nrp_lightning.losses import (feature_distance, pixel_loss, ragan_critic_loss, ragan_generator_loss,
                                  vanilla_critic_loss)


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
