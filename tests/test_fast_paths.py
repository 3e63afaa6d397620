"""The CPU fast paths: which precision each machine gets, and that channels_last and bf16 agree
with NCHW fp32 on small inputs (speed is measured by ``make bench``, never in a test)."""
import os
import platform
import subprocess
import sys

import pytest
import torch
from _tiny import smooth_images, tiny_classifier
from timm.layers import BatchNormAct2d
from torch import nn

from nrp_lightning import fast_paths
from nrp_lightning.attacks.transfer import mifgsm
from nrp_lightning.models.classifiers import Classifier
from nrp_lightning.models.purifier import RRDBPurifier

AMX = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
AVX512_BF16 = frozenset({"avx512f", "avx512_bf16"})
AVX2 = frozenset({"avx", "avx2", "fma"})


@pytest.mark.parametrize("flags, precision, expected", [
    (AMX, "auto", True), (AVX512_BF16, "auto", True), (AVX2, "auto", False), (frozenset(), "auto", False),
    (AMX, "fp32", False), (AVX2, "bf16", True),
])
def test_auto_precision_is_bf16_only_on_cpus_that_compute_it(flags, precision, expected):
    assert fast_paths.use_bf16("cpu", precision, flags) is expected


def _bn_classifier(depthwise: bool = True) -> Classifier:
    """Conv-BN-ReLU6 blocks (a depthwise one if asked, a timm BatchNormAct2d) with BatchNorm
    statistics far from identity, frozen in eval mode like every source and victim."""
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, 1, 1, groups=8 if depthwise else 1, bias=False), BatchNormAct2d(8, act_layer=nn.ReLU6),
        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for m in body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5), m.running_var.uniform_(0.3, 3), m.weight.data.normal_(1, 0.3)
            m.bias.data.normal_(0, 0.3)
    return Classifier(body, "bn", 32)


@pytest.mark.parametrize("flags, precision, depthwise, expected", [
    (AVX512_BF16, "auto", True, False), (AVX512_BF16, "auto", False, True), (AMX, "auto", True, True),
    (AVX512_BF16, "bf16", True, True), (AVX2, "auto", False, False),
])
def test_auto_skips_bf16_for_depthwise_networks_on_cpus_without_amx(flags, precision, depthwise, expected):
    net = _bn_classifier(depthwise)
    assert fast_paths.has_depthwise(net) is depthwise
    assert fast_paths.use_bf16("cpu", precision, flags, net=net) is expected


def test_folded_batchnorm_gives_the_same_logits_gradients_and_attack():
    x, reference = smooth_images(4, 32), _bn_classifier()
    y = reference(x).argmax(1)
    folded = _bn_classifier()
    assert fast_paths.fold_batchnorm(folded, torch.rand(1, 3, 64, 64)) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.ReLU6) for m in folded.body[4].modules())  # BatchNormAct2d's activation stays
    assert (folded(x) - reference(x)).abs().max() < 1e-5
    grads = []
    for net in (reference, folded):
        xg = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(net(xg), y).backward()
        grads.append(xg.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert (mifgsm(eps=8, steps=3)(x, y, folded) - mifgsm(eps=8, steps=3)(x, y, reference)).abs().max() < 1e-6


class _ConvUsedTwice(nn.Module):
    """A conv whose output feeds its BatchNorm and a skip: folding would change the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.bn.running_mean.fill_(0.5)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_changes_the_output_is_undone(caplog):
    net = _ConvUsedTwice().eval().requires_grad_(False)
    x = torch.rand(1, 3, 16, 16)
    before = net(x)
    assert fast_paths.fold_batchnorm(net, x) == 0
    assert isinstance(net.bn, nn.BatchNorm2d) and torch.equal(net(x), before)
    assert "left unfolded" in caplog.text


def test_networks_that_train_are_never_folded():
    trainable = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    in_train_mode = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).requires_grad_(False)
    for net in (trainable, in_train_mode):
        assert fast_paths.fold_batchnorm(net, torch.rand(1, 3, 8, 8)) == 0
        assert isinstance(net[1], nn.BatchNorm2d)


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError, match="precision must be one of"):
        fast_paths.use_bf16("cpu", "fp16", AVX2)


def test_this_machines_flags_decide_auto():
    assert fast_paths.native_bf16("cpu") == bool({"amx_bf16", "avx512_bf16"} & fast_paths.cpu_flags())


def test_channels_last_purification_equals_nchw_to_float32_rounding():
    torch.manual_seed(0)
    purifier, x = RRDBPurifier(8, 2, 4).eval(), smooth_images(2, 48)
    with torch.no_grad():
        reference = purifier(x)
        fast = fast_paths.to_channels_last(purifier)(x)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert (fast - reference).abs().max() < 1e-5
    assert purifier.state_dict().keys() == RRDBPurifier(8, 2, 4).state_dict().keys()


def test_bf16_purification_stays_close_to_fp32():
    """bf16 rounding, not a different result: PSNR of bf16 against fp32 above 35 dB on a tiny net."""
    torch.manual_seed(0)
    purifier, x = RRDBPurifier(8, 1, 4).eval(), smooth_images(2, 32)
    with torch.no_grad():
        reference = purifier(x)
        with fast_paths.autocast("cpu", True)():
            low = purifier(x).float()
    mse = (low - reference).pow(2).mean()
    assert 10 * torch.log10(reference.abs().max() ** 2 / mse) > 35


def test_an_attack_under_bf16_stays_inside_its_budget():
    model, x = tiny_classifier(0), smooth_images(2, 32)
    y = model(x).argmax(1)
    with fast_paths.autocast("cpu", True)():
        x_adv = mifgsm(eps=8, steps=2)(x, y, model)
    assert x_adv.dtype == torch.float32 and (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_autocast_off_is_a_context_that_does_nothing():
    with fast_paths.autocast("cpu", False)():
        assert not torch.is_autocast_enabled("cpu")


def test_the_allocator_is_tuned_once_on_glibc_and_left_alone_when_asked():
    code = "from nrp_lightning.fast_paths import tune_allocator as t; print(t(), t())"
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert tuned == (["True", "True"] if platform.libc_ver()[0] == "glibc" else ["False", "False"])
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "NRP_TUNE_MALLOC": "0"}).stdout.split()
    assert off == ["False", "False"]
