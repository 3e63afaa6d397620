import torch

from nrp_lightning.losses import (detail_loss, detail_ratio, feature_distance, local_detail, output_consistency_loss, pixel_loss, ragan_critic_loss,
                                  ragan_generator_loss, vanilla_critic_loss)


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


def test_output_consistency_is_the_kl_of_the_clean_prediction_to_the_purified_one():
    clean = torch.tensor([[4.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert output_consistency_loss(clean + 7.0, clean).abs() < 1e-6  # same softmax, shifted logits
    purified = torch.tensor([[0.0, 4.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    loss = output_consistency_loss(purified, clean)
    p, q = clean.softmax(1)[0], purified.detach().softmax(1)[0]
    assert torch.isclose(loss, (p * (p / q).log()).sum() / 2)  # KL(f(x) || f(P(x'))), mean over the batch
    loss.backward()
    assert purified.grad[0].abs().sum() > 0 and purified.grad[1].abs().sum() < 1e-6


def test_detail_loss_sees_smoothing_and_noise_but_not_a_shift_of_the_texture():
    """L_detail compares how much fine detail each 8 px patch has, not where: the same texture moved
    by a pixel costs (nearly) nothing, a blurred or a noisier copy costs, and so does the smoothing
    that detail_ratio reports below 1."""
    torch.manual_seed(0)
    texture = torch.rand(2, 3, 8, 8).repeat_interleave(2, -1).repeat_interleave(2, -2)
    x = torch.nn.functional.pad(texture.repeat(1, 1, 4, 4), (1, 1, 1, 1), mode="circular")  # 66 px, periodic
    assert local_detail(x).shape == (2, 3, 8, 8)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    moved = torch.roll(x, 2, dims=-1)
    assert detail_loss(x, x) == 0
    assert detail_loss(moved, x) < 0.2 * detail_loss(blurred, x)  # measured: 0.055 against 0.50
    assert detail_loss(blurred, x) > 0.05 and detail_loss(noisy, x) > 0.05
    assert detail_ratio(blurred, x).max() < 0.5 < 1.2 < detail_ratio(noisy, x).min()  # measured: 1.35
    assert torch.allclose(detail_ratio(x, x), torch.ones(2))
    blurred.requires_grad_(True)
    detail_loss(blurred, x).backward()
    assert blurred.grad.abs().sum() > 0
