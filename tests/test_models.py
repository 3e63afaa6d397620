import pytest
import torch

from nrp_lightning.models.critic import VGGCritic
from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier, purify


def official_rrdb_state_dict(nf=64, nb=23, gc=32) -> dict[str, torch.Tensor]:
    """The key layout and shapes of the authors' NRP.pth, written out independently of our module."""
    sd = {"conv_first.weight": torch.randn(nf, 3, 3, 3), "conv_first.bias": torch.randn(nf)}
    for i in range(nb):
        for r in (1, 2, 3):
            for c in range(1, 6):
                c_in, c_out = nf + (c - 1) * gc, (gc if c < 5 else nf)
                sd[f"RRDB_trunk.{i}.RDB{r}.conv{c}.weight"] = torch.randn(c_out, c_in, 3, 3)
                sd[f"RRDB_trunk.{i}.RDB{r}.conv{c}.bias"] = torch.randn(c_out)
    sd["trunk_conv.weight"], sd["trunk_conv.bias"] = torch.randn(3, nf, 3, 3), torch.randn(3)
    return sd


def official_resnet_state_dict(nf=64, nb=23) -> dict[str, torch.Tensor]:
    """The key layout and shapes of the authors' NRP_resG.pth."""
    sd = {"conv_first.weight": torch.randn(nf, 3, 3, 3), "conv_first.bias": torch.randn(nf)}
    for i in range(nb):
        for c in (1, 2):
            sd[f"recon_trunk.{i}.conv{c}.weight"] = torch.randn(nf, nf, 3, 3)
            sd[f"recon_trunk.{i}.conv{c}.bias"] = torch.randn(nf)
    sd["conv_last.weight"], sd["conv_last.bias"] = torch.randn(3, nf, 3, 3), torch.randn(3)
    return sd


def test_official_rrdb_checkpoint_loads_strict():
    model = RRDBPurifier(nf=64, nb=23, gc=32)
    sd = official_rrdb_state_dict()
    model.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 16_550_275  # the paper's 16.55M
    assert torch.equal(model.RRDB_trunk[22].RDB3.conv5.weight, sd["RRDB_trunk.22.RDB3.conv5.weight"])


def test_official_resnet_checkpoint_loads_strict():
    model = ResNetPurifier(nf=64, nb=23)
    model.load_state_dict(official_resnet_state_dict(), strict=True)


@pytest.mark.parametrize("net", [RRDBPurifier(8, 2, 4), ResNetPurifier(8, 2)])
def test_purifier_keeps_shape_at_any_size_and_has_no_input_skip(net):
    x = torch.rand(2, 3, 37, 50)
    assert net(x).shape == x.shape
    last = net.trunk_conv if isinstance(net, RRDBPurifier) else net.conv_last
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.25)
    # With the last conv zeroed, nothing of x can reach the output: no skip from input to output.
    assert torch.equal(net(x), torch.full_like(x, 0.25))
    assert purify(net, x * 9).max() <= 1.0


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = RRDBPurifier(8, 2, 4)
    b = RRDBPurifier(8, 2, 4, activation_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 16, 16)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_invalid_purifier_sizes_are_refused():
    with pytest.raises(ValueError, match="nf, nb, gc"):
        RRDBPurifier(nf=0)


def test_critic_matches_esrgan_at_128_and_accepts_other_sizes():
    critic = VGGCritic(nf=8, fc_dim=16)
    assert critic.features(torch.rand(2, 3, 128, 128)).shape == (2, 64, 4, 4)
    assert critic(torch.rand(2, 3, 128, 128)).shape == (2,)
    assert critic(torch.rand(2, 3, 64, 96)).shape == (2,)
    with pytest.raises(ValueError, match="at least 32"):
        critic(torch.rand(2, 3, 16, 16))
