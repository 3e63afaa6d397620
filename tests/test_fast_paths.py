"""The CPU fast paths: which precision each machine gets, and that channels_last and bf16 agree
with NCHW fp32 on small inputs (speed is measured by ``make bench``, never in a test)."""
import os
import platform
import subprocess
import sys

import pytest
import torch
from _tiny import smooth_images, tiny_classifier

from nrp_lightning import fast_paths
from nrp_lightning.attacks.transfer import mifgsm
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
