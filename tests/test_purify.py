"""load_purifier (official layouts, our checkpoints, clear errors), dynamic inference, PurifiedModel."""
from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from torch import nn

from nrp_lightning.models.features import IMAGENET_MEAN, IMAGENET_STD
from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier
from nrp_lightning.purify import (DYNAMIC_SIGMA, PurifiedModel, PurifierLoadError, detect_purifier, dynamic_perturb,
                                  load_purifier, purify_images)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def official_rrdb_shapes(nf: int = 64, nb: int = 23, gc: int = 32) -> dict[str, tuple[int, ...]]:
    """The authors' NRP.pth layout, written out from the authors' released file layout (not from our module)."""
    shapes = {"conv_first.weight": (nf, 3, 3, 3), "conv_first.bias": (nf,)}
    for i in range(nb):
        for r in (1, 2, 3):
            for c in range(1, 6):
                out = nf if c == 5 else gc
                shapes[f"RRDB_trunk.{i}.RDB{r}.conv{c}.weight"] = (out, nf + (c - 1) * gc, 3, 3)
                shapes[f"RRDB_trunk.{i}.RDB{r}.conv{c}.bias"] = (out,)
    shapes |= {"trunk_conv.weight": (3, nf, 3, 3), "trunk_conv.bias": (3,)}
    return shapes


def official_resnet_shapes(nf: int = 64, nb: int = 23) -> dict[str, tuple[int, ...]]:
    """The authors' NRP_resG.pth layout."""
    shapes = {"conv_first.weight": (nf, 3, 3, 3), "conv_first.bias": (nf,)}
    for i in range(nb):
        for c in (1, 2):
            shapes[f"recon_trunk.{i}.conv{c}.weight"] = (nf, nf, 3, 3)
            shapes[f"recon_trunk.{i}.conv{c}.bias"] = (nf,)
    return shapes | {"conv_last.weight": (3, nf, 3, 3), "conv_last.bias": (3,)}


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}


@pytest.mark.parametrize("shapes, expected", [
    (official_rrdb_shapes(), "rrdb purifier (nf=64 nb=23 gc=32)"),
    (official_resnet_shapes(), "resnet purifier (nf=64 nb=23)"),
])
def test_official_checkpoints_load_strict_with_detected_size(tmp_path, shapes, expected):
    state = random_state(shapes)
    path = tmp_path / "official.pth"
    torch.save(state, path)
    purifier = load_purifier(path)
    assert str(purifier.spec) == expected
    loaded = purifier.state_dict()
    assert list(loaded) == list(shapes)  # same keys in the same order: strict load was possible
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not purifier.training and not any(p.requires_grad for p in purifier.parameters())


def test_small_sizes_detected_from_shapes():
    assert str(detect_purifier(random_state(official_rrdb_shapes(8, 2, 4)))) == "rrdb purifier (nf=8 nb=2 gc=4)"
    assert str(detect_purifier(random_state(official_resnet_shapes(16, 3)))) == "resnet purifier (nf=16 nb=3)"


def test_a_purifier_trained_with_the_removed_input_skip_is_refused_with_the_tag_that_loads_it(tmp_path):
    state = RRDBPurifier(8, 2, 4).state_dict()
    state["input_skip_marker"] = torch.zeros(0)  # what model.input_skip=true wrote up to lab-2026-12
    torch.save(state, tmp_path / "skip.pth")
    with pytest.raises(PurifierLoadError, match=r"model.input_skip=true.*lab-2026-12 \(commit 4733147\)"):
        load_purifier(tmp_path / "skip.pth")


class _Holder(pl.LightningModule):
    """The part of NRPModule that matters for checkpoints: the purifier under ``purifier.``."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": 1e-4, "betas": (0.9, 0.999)})
        self.purifier, self.critic = RRDBPurifier(8, 1, 4), nn.Linear(2, 1)

    def training_step(self, batch, _):
        return (self.purifier(batch[0]) - batch[0]).abs().mean() + 0 * self.critic.weight.sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_real_lightning_checkpoint_loads(tmp_path):
    model = _Holder()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(2, 3, 16, 16)), batch_size=2)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    purifier = load_purifier(tmp_path / "last.ckpt")
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(purifier(x), model.purifier.eval()(x))


def test_compiled_prefix_and_exported_state_dict(tmp_path):
    net = ResNetPurifier(8, 2)
    ckpt = {"epoch": 0, "state_dict": {f"purifier._orig_mod.{k}": v for k, v in net.state_dict().items()}}
    torch.save(ckpt, tmp_path / "compiled.ckpt")
    torch.save(net.state_dict(), tmp_path / "exported.pth")
    for name in ("compiled.ckpt", "exported.pth"):
        loaded = load_purifier(tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))


def test_errors_say_what_the_file_is(tmp_path):
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), tmp_path / "classifier.pth")
    (tmp_path / "text.pth").write_text("hello, not weights")
    torch.save({"state_dict": {"critic.fc.weight": torch.zeros(1)}, "epoch": 3}, tmp_path / "critic.ckpt")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    broken = random_state(official_rrdb_shapes(8, 1, 4))
    del broken["trunk_conv.bias"]
    torch.save(broken, tmp_path / "broken.pth")
    cases = {
        "classifier.pth": "keys look like a torchvision classifier (features.0.0.weight",
        "text.pth": "is not a PyTorch file",
        "critic.ckpt": "is a Lightning checkpoint without purifier weights (its state_dict has the prefixes critic.",
        "list.pth": "is a PyTorch file holding a list",
        "broken.pth": "does not load strictly",
        "missing.pth": "does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(PurifierLoadError) as info:
            load_purifier(tmp_path / name)
        assert message in str(info.value), str(info.value)
        if name != "missing.pth":
            assert "expected a purifier" in str(info.value)


def test_dynamic_perturb_bounds_and_seed():
    x = torch.rand(2, 3, 32, 32)
    a = dynamic_perturb(x, torch.Generator().manual_seed(1))
    b = dynamic_perturb(x, torch.Generator().manual_seed(1))
    c = dynamic_perturb(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - x).abs().max() <= 16 / 255 + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert abs((a - x).std().item() - DYNAMIC_SIGMA) < 0.01  # mostly unclipped at sigma 0.05 < 16/255


def test_tiny_and_odd_sizes_purify():
    purifier = RRDBPurifier(8, 1, 4).eval()
    for h, w in ((1, 1), (2, 7), (33, 17)):
        out = purify_images(purifier, torch.rand(2, 3, h, w))
        assert out.shape == (2, 3, h, w) and out.min() >= 0 and out.max() <= 1


class _Recorder(nn.Module):
    def forward(self, x, *args, **kwargs):
        self.seen, self.extra = x, (args, kwargs)
        return "prediction"


def test_purified_model_keeps_ranges_and_normalization():
    torch.manual_seed(0)
    purifier = RRDBPurifier(8, 1, 4).eval()
    x = torch.rand(2, 3, 24, 24)
    reference = purify_images(purifier, x)
    norm = lambda t: (t - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    wrapped = PurifiedModel(purifier, _Recorder(), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert wrapped(x, "target", k=1) == "prediction"
    torch.testing.assert_close(wrapped.model.seen, norm(reference))
    assert wrapped.model.extra == (("target",), {"k": 1})

    wrapped = PurifiedModel(purifier, _Recorder(), input_range=(0, 255))
    wrapped(x * 255)
    torch.testing.assert_close(wrapped.model.seen, reference * 255, atol=1e-4, rtol=0)

    wrapped = PurifiedModel(purifier, _Recorder(), mean=IMAGENET_MEAN, std=IMAGENET_STD, input_normalized=True)
    wrapped(norm(x))
    torch.testing.assert_close(wrapped.model.seen, norm(reference), atol=1e-5, rtol=0)

    wrapped = PurifiedModel(purifier, _Recorder())  # detector style: a list of differently sized images
    wrapped([x[0], x[1, :, :10, :20]])
    torch.testing.assert_close(wrapped.model.seen[0], reference[0])
    assert wrapped.model.seen[1].shape == (3, 10, 20)


def test_purified_model_dynamic_is_seeded_and_random_per_call():
    purifier = RRDBPurifier(8, 1, 4).eval()
    x = torch.rand(1, 3, 16, 16)
    first = PurifiedModel(purifier, nn.Identity(), dynamic=True, seed=3)
    second = PurifiedModel(purifier, nn.Identity(), dynamic=True, seed=3)
    a1, a2, b1 = first(x), first(x), second(x)
    assert torch.equal(a1, b1) and not torch.equal(a1, a2)
    assert not torch.equal(a1, PurifiedModel(purifier, nn.Identity())(x))


def test_purified_model_rejects_half_normalization():
    with pytest.raises(ValueError, match="both mean and std"):
        PurifiedModel(RRDBPurifier(8, 1, 4), nn.Identity(), mean=IMAGENET_MEAN)


def test_purified_model_refuses_to_normalize_for_a_classifier_that_normalizes_itself():
    from nrp_lightning.models.classifiers import Ensemble, load_classifier

    purifier, classifier = load_purifier(), load_classifier("mobilenet_v2", pretrained=False)
    for model in (classifier, Ensemble([classifier])):
        with pytest.raises(ValueError, match="normalizes its own input.*drop mean/std"):
            PurifiedModel(purifier, model, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    PurifiedModel(purifier, classifier)  # the right call
