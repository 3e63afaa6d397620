"""The purification gate: purify only the inputs whose features purification moves far."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nrp_lightning.cli_purify import purify_main
from nrp_lightning.defenses import NRPDefense, load_nrp
from nrp_lightning.gate import GateConfigError, GateSpec, PurificationGate, calibrate_threshold
from nrp_lightning.images import load_image
from nrp_lightning.models.purifier import RRDBPurifier
from nrp_lightning.purify import DEFAULT_PURIFIER, load_purifier, purify_images

from _tiny import smooth_images

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


class Shift(nn.Module):
    """A stand-in purifier: adds ``delta`` to the images whose index is in ``moved`` (others unchanged;
    the identity 1x1 conv gives tiling a conv net to size)."""

    def __init__(self, delta: float, moved: list[int]) -> None:
        super().__init__()
        self.delta, self.moved = nn.Parameter(torch.tensor(delta)), moved
        self.identity = nn.Conv2d(3, 3, 1, bias=False).requires_grad_(False)
        self.identity.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x):
        out = self.identity(x)
        out[self.moved] = x[self.moved] + self.delta
        return out


def _features() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())


def test_calibration_takes_the_midpoint_of_the_gap_or_the_clean_maximum_where_the_sets_overlap():
    assert calibrate_threshold(torch.tensor([0.1, 0.3]), torch.tensor([0.5, 0.9])) == pytest.approx(0.4)
    assert calibrate_threshold(torch.tensor([0.1, 0.3]), torch.tensor([0.25, 0.9])) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="cannot tell them apart"):
        calibrate_threshold(torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.3]))


@pytest.mark.parametrize("threshold", [0.0, -1.0, math.nan, math.inf, True, "0.3"])
def test_a_bad_threshold_is_refused(threshold):
    with pytest.raises(GateConfigError, match="positive number"):
        GateSpec("mobilenet_v2", 7, threshold)


def test_the_gate_keeps_unmoved_images_exactly_and_passes_moved_ones_with_their_gradient():
    gate = PurificationGate(_features(), threshold=1e-3)
    x = smooth_images(4, 32).requires_grad_(True)
    purifier = Shift(0.2, moved=[1, 3])
    purified = purifier(x).clamp(0, 1)
    flags = gate.flags(x, purified)
    assert flags.tolist() == [False, True, False, True]
    out = gate(x, purified)
    assert torch.equal(out[[0, 2]], x[[0, 2]]) and torch.equal(out[[1, 3]], purified[[1, 3]])
    out.sum().backward()  # exact gradient of the branch taken: 1 for a kept pixel, 0 or 1 for a shifted one
    assert torch.equal(x.grad[[0, 2]], torch.ones_like(x.grad[[0, 2]]))
    assert purifier.delta.grad > 0  # and the flagged images' gradient runs through the purifier


def test_nrp_defense_with_a_gate_returns_clean_inputs_untouched():
    x = smooth_images(3, 32)
    defense = NRPDefense(Shift(0.3, moved=[2]), gate=PurificationGate(_features(), threshold=1e-3))
    out = defense(x)
    assert torch.equal(out[:2], x[:2]) and not torch.equal(out[2], x[2])
    assert "gate_threshold=0.001" in repr(defense)  # the evaluation's cache keys tell gated from plain
    ungated = NRPDefense(Shift(0.3, moved=[2]))
    assert torch.equal(ungated(x)[2], out[2])


def test_a_purifier_without_a_calibrated_gate_says_how_to_make_one(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(RRDBPurifier(8, 1, 4).state_dict(), path)
    with pytest.raises(GateConfigError, match="calibrate_gate.py"):
        load_nrp(str(path), gate=True)
    (tmp_path / "tiny.json").write_text(json.dumps({"architecture": "rrdb"}))
    with pytest.raises(GateConfigError, match="no usable 'gate' entry"):
        load_nrp(str(path), gate=True)


def test_the_shipped_purifier_carries_its_calibrated_gate():
    entry = json.loads(DEFAULT_PURIFIER.with_suffix(".json").read_text())["gate"]
    calibration = entry["calibration"]
    assert calibration["clean_max"] <= entry["threshold"] and calibration["images"] >= 50
    defense = load_nrp(gate=True)
    assert defense.gate.threshold == entry["threshold"] and defense.gate.features.name == "mobilenet_v2[:7]"
    assert load_nrp(gate=True, gate_threshold=0.5).gate.threshold == 0.5


def test_the_shipped_gate_keeps_a_clean_photo_and_purifies_its_attacked_copy():
    """On a real photo at 224 px: the clean image passes untouched, MI-FGSM at eps 8 from MobileNetV2
    is flagged and purified."""
    import skimage.data

    from nrp_lightning.attacks.transfer import mifgsm
    from nrp_lightning.eval_data import center_square
    from nrp_lightning.images import array_to_tensor
    from nrp_lightning.models.classifiers import load_classifier

    torch.set_num_threads(2)
    x = center_square(array_to_tensor(skimage.data.astronaut()), 224).unsqueeze(0)
    source = load_classifier("mobilenet_v2").eval()
    attacked = mifgsm(eps=8)(x, source(x).argmax(1), source)
    defense = load_nrp(gate=True)
    both = torch.cat([x, attacked])
    scores = defense.gate.score(both, defense.purifier(both).clamp(0, 1))
    assert scores[0] < defense.gate.threshold < scores[1]
    out = defense(both)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], load_nrp()(attacked)[0])


def _folder(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"{name}.png")
    return root


def _gated_checkpoint(tmp_path, threshold):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(RRDBPurifier(8, 1, 4).state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"gate": {"backbone": "mobilenet_v2", "layer": 7,
                                                              "threshold": threshold}}))
    return path


def test_purify_cli_gate_writes_unflagged_images_unchanged_and_reports_the_count(tmp_path, capsys):
    root = _folder(tmp_path)
    checkpoint = _gated_checkpoint(tmp_path, 1e6)  # nothing scores this high: every image kept
    assert purify_main([str(root), str(tmp_path / "kept"), "--checkpoint", str(checkpoint), "--gate",
                        "--no-progress"]) == 0
    for name in ("a", "b"):
        assert torch.equal(load_image(tmp_path / "kept" / f"{name}.png"), load_image(root / f"{name}.png"))
    assert "0 of 2 image(s) looked attacked and were purified; 2 written unchanged" in capsys.readouterr().err
    # --gate-threshold overrides the calibrated one (and implies --gate): now every image is purified
    assert purify_main([str(root), str(tmp_path / "purified"), "--checkpoint", str(checkpoint),
                        "--gate-threshold", "1e-9", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "2 of 2 image(s) looked attacked and were purified (a.png, b.png); 0 written unchanged" in err
    plain = purify_images(load_purifier(checkpoint), load_image(root / "a.png").unsqueeze(0))[0]
    assert (load_image(tmp_path / "purified" / "a.png") - plain).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("extra, message", [
    ([], "calibrate_gate.py"),
    (["--gate-threshold", "-1"], "positive number"),
])
def test_purify_cli_gate_errors_are_one_line_usage_errors(tmp_path, capsys, extra, message):
    root = _folder(tmp_path)
    path = tmp_path / "tiny.pth"
    torch.save(RRDBPurifier(8, 1, 4).state_dict(), path)
    if extra:
        path.with_suffix(".json").write_text(json.dumps({"gate": {"backbone": "mobilenet_v2", "layer": 7,
                                                                  "threshold": 0.3}}))
    with pytest.raises(SystemExit) as info:
        purify_main([str(root), str(tmp_path / "out"), "--checkpoint", str(path), "--gate", *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_purified_model_with_a_gate_hands_unflagged_images_on_as_they_came():
    from nrp_lightning.purify import PurifiedModel

    seen = []
    x = smooth_images(2, 32) * 255  # a model fed raw pixels
    wrapped = PurifiedModel(Shift(0.3, moved=[1]), nn.Identity(), input_range=(0, 255),
                            gate=PurificationGate(_features(), threshold=1e-3))
    wrapped.model.register_forward_hook(lambda module, args, out: seen.append(out))
    wrapped(x)
    assert torch.allclose(seen[0][0], x[0], atol=1e-4)
    assert torch.allclose(seen[0][1], (x[1] / 255 + 0.3).clamp(0, 1) * 255, atol=1e-4)


def test_a_gate_on_an_unknown_backbone_is_refused_by_name(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(RRDBPurifier(8, 1, 4).state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"gate": {"backbone": "resnet_9000", "layer": 3, "threshold": 0.3}}))
    with pytest.raises(GateConfigError, match="'resnet_9000' is not one of mobilenet_v2"):
        load_nrp(str(path), gate=True)
