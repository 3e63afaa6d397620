import pytest
import torch

from nrp_lightning.models import features
from nrp_lightning.weights import TORCHVISION_WEIGHTS, WeightsNotFoundError, resolve_torchvision_weights


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_mobilenet_v2_weights_come_offline_from_the_package(empty_torch_home):
    f = features.mobilenet_v2(layer=7)
    assert f(torch.rand(1, 3, 64, 64)).shape == (1, 32, 8, 8)
    assert not any(p.requires_grad for p in f.parameters())
    f.train()
    assert not f.training and not f.body.training  # frozen BatchNorm statistics


def test_mobilenet_v2_classifies_a_real_photo():
    """The packaged file is torchvision's own: the full network says 'tabby'/'tiger cat' for chelsea."""
    import skimage.data
    import torchvision

    from nrp_lightning.images import array_to_tensor
    from nrp_lightning.models.features import Normalize

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(resolve_torchvision_weights("mobilenet_v2"))
    x = torch.nn.functional.interpolate(array_to_tensor(skimage.data.chelsea())[None], size=(224, 224), mode="bilinear", antialias=True)
    top5 = model.eval()(Normalize()(x)).topk(5).indices[0].tolist()
    assert {281, 282, 285} & set(top5)  # tabby, tiger cat, Egyptian cat


def test_vgg16_without_weights_fails_fast_with_a_fix(empty_torch_home):
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_torchvision_weights("vgg16", download=False)
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and str(empty_torch_home) in msg and "download" in msg


def test_weights_from_the_hub_cache_and_from_an_explicit_path(empty_torch_home, tmp_path):
    net = features._torchvision_trunk("vgg16", 4, pretrained=False, weights_path=None)
    full = __import__("torchvision").models.vgg16().state_dict()
    empty_torch_home.mkdir(parents=True)
    torch.save(full, empty_torch_home / TORCHVISION_WEIGHTS["vgg16"].filename)
    f = features.vgg16(layer=4)
    torch.testing.assert_close(f.body[0].weight, full["features.0.weight"])
    path = tmp_path / "mine.pth"
    torch.save(full, path)
    assert features.vgg16(layer=4, weights_path=str(path)).body[0].weight.shape == net[0].weight.shape


def test_a_broken_weights_file_is_named_in_the_error(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        features.vgg16(layer=4, weights_path=str(bad))


def test_layer_out_of_range_is_refused():
    with pytest.raises(ValueError, match="layer must be in"):
        features.vgg16(layer=99, pretrained=False)


def _wct_state_from(trunk: torch.nn.Sequential) -> dict[str, torch.Tensor]:
    """A ``vgg_normalised_conv3_1.pth`` in the WCT layout whose 3x3 convs are torchvision VGG19's
    ``features.{0,2,5,7,10}`` and whose 1x1 conv 0 is Caffe's input transform."""
    caffe = torch.zeros(3, 3, 1, 1)
    for out_ch, in_ch in enumerate((2, 1, 0)):  # BGR <- RGB
        caffe[out_ch, in_ch] = 255.0
    state = {"0.weight": caffe, "0.bias": -torch.tensor([103.939, 116.779, 123.68])}
    for wct, tv in zip((2, 5, 9, 12, 16), (0, 2, 5, 7, 10)):
        state[f"{wct}.weight"], state[f"{wct}.bias"] = trunk[tv].weight.detach(), trunk[tv].bias.detach()
    return state


@pytest.fixture
def vgg19_trunk_in_wct_file(empty_torch_home):
    """A random torchvision ``vgg19().features[:12]`` and its WCT-layout file in the torch hub cache."""
    torch.manual_seed(0)
    trunk = __import__("torchvision").models.vgg19().features[:12].eval()
    empty_torch_home.mkdir(parents=True)
    torch.save(_wct_state_from(trunk), empty_torch_home / TORCHVISION_WEIGHTS["vgg19_relu3_1"].filename)
    return trunk


def test_vgg19_relu3_1_is_torchvision_vgg19_to_relu3_1_away_from_the_borders(vgg19_trunk_in_wct_file):
    """The file's layout maps onto torchvision ``vgg19().features[:12]`` (relu3_1) on Caffe input;
    only the padding differs (reflection there, zeros here), so the centres agree."""
    trunk = vgg19_trunk_in_wct_file
    f = features.vgg19_relu3_1()  # found in the torch hub cache
    x = torch.rand(2, 3, 64, 64)
    bgr = x.flip(1) * 255.0 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    ours, reference = f(x), trunk(bgr)
    assert ours.shape == reference.shape == (2, 256, 16, 16)
    scale = reference.abs().max().item()
    torch.testing.assert_close(ours[..., 4:-4, 4:-4], reference[..., 4:-4, 4:-4], rtol=1e-4, atol=1e-5 * scale)
    assert (ours - reference)[..., 0, :].abs().max() > 1e-3 * scale  # the borders do differ: reflection padding kept
    assert not any(p.requires_grad for p in f.parameters())


def test_vgg19_relu3_1_names_the_missing_file_and_refuses_another_layout(empty_torch_home, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="vgg_normalised_conv3_1.pth.*GOTStyleTranfer"):
        features.vgg19_relu3_1()
    other = tmp_path / "vgg16.pth"
    torch.save(__import__("torchvision").models.vgg16().features[:4].state_dict(), other)
    with pytest.raises(ValueError, match="not the WCT VGG19-to-relu3_1 encoder"):
        features.vgg19_relu3_1(weights_path=str(other))


def test_nrp_attack_takes_the_vgg19_relu3_1_backbone(vgg19_trunk_in_wct_file, empty_torch_home, tmp_path):
    from nrp_lightning.cli_attack import build_backbone
    from nrp_lightning.cli_common import UsageError

    moved = tmp_path / "wct.pth"
    (empty_torch_home / TORCHVISION_WEIGHTS["vgg19_relu3_1"].filename).rename(moved)
    f = build_backbone("vgg19_relu3_1", None, str(moved))  # --weights FILE
    torch.testing.assert_close(f.body[2].bias, vgg19_trunk_in_wct_file[0].bias)
    with pytest.raises(UsageError, match="--layer does not apply"):
        build_backbone("vgg19_relu3_1", 12, str(moved))
