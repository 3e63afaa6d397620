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
