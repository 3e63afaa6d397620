"""Defences keep shape and range, do what they claim, and have a BPDA gradient path."""
import pytest
import torch
from _tiny import smooth_images

from nrp_lightning.defenses import (JPEG, TVM, BitDepth, DynamicNoise, GaussianBlur, MedianFilter, NoDefense, NRPDefense,
                                    RandomResizePad, load_nrp)
from nrp_lightning.models.purifier import RRDBPurifier

torch.set_num_threads(2)


def _defenses():
    torch.manual_seed(0)
    return {"none": NoDefense(), "jpeg": JPEG(75), "tvm": TVM(steps=10), "median": MedianFilter(3),
            "blur": GaussianBlur(1.0), "bits": BitDepth(4), "r&p": RandomResizePad(),
            "noise": DynamicNoise(), "nrp": NRPDefense(RRDBPurifier(nf=8, nb=1, gc=4), dynamic=True)}


@pytest.mark.parametrize("name", list(_defenses()))
def test_defence_keeps_shape_and_range_and_passes_a_bpda_gradient(name):
    defense = _defenses()[name]
    x = smooth_images(2, size=40)[..., :36]  # not square
    with torch.no_grad():
        y = defense(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    xr = x.clone().requires_grad_(True)
    (defense.bpda(xr) * torch.randn_like(x)).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0


def test_real_jpeg_and_its_differentiable_approximation_agree():
    x = smooth_images(2, size=64)
    jpeg = JPEG(75)
    real, approx = jpeg(x), jpeg.differentiable(x)
    assert (real - x).abs().mean() > 1e-3  # it compresses
    assert (real - approx).abs().mean() < 0.02


def test_bit_depth_keeps_2_to_the_bits_levels():
    y = BitDepth(3)(torch.rand(1, 3, 16, 16))
    assert torch.unique(y).numel() <= 8


def test_median_filter_removes_salt_noise_and_tvm_lowers_total_variation():
    from kornia.losses import total_variation

    x = smooth_images(1, size=32)
    noisy = x.clone()
    noisy[..., ::7, ::5] = 1.0
    assert (MedianFilter(3)(noisy) - x).abs().mean() < (noisy - x).abs().mean()
    assert total_variation(TVM(steps=20)(noisy)).sum() < total_variation(noisy).sum()


def test_randomised_defences_say_so_and_draw_fresh_randomness():
    x = smooth_images(1, size=32)
    for defense in (RandomResizePad(), TVM(steps=2), DynamicNoise(), NRPDefense(RRDBPurifier(8, 1, 4), dynamic=True)):
        assert defense.randomized
        assert not torch.equal(defense(x), defense(x))
    assert not JPEG().randomized and not NRPDefense(RRDBPurifier(8, 1, 4)).randomized


def test_dynamic_noise_is_the_input_nrp_dynamic_purifies():
    """Same seed, same draw: NRP_dynamic(x) = P(DynamicNoise(x)), and the noise stays within eps."""
    x = smooth_images(2, size=32)
    purifier = RRDBPurifier(8, 1, 4)
    torch.manual_seed(3)
    noisy = DynamicNoise()(x)
    torch.manual_seed(3)
    with torch.no_grad():
        torch.testing.assert_close(NRPDefense(purifier, dynamic=True)(x), purifier(noisy).clamp(0, 1))
    assert (noisy - x).abs().max() <= 16 / 255 + 1e-6 and (noisy - x).abs().mean() > 0.02


def test_load_nrp_sets_the_dynamic_noise_level_and_keys_it(tmp_path):
    """``noise_std``/``noise_eps`` reach the draw (same seed: the purifier of exactly that noise) and
    the repr, so a screen of noise levels never answers one level from another's cache."""
    purifier = RRDBPurifier(nf=8, nb=1, gc=4)
    torch.save(purifier.state_dict(), tmp_path / "p.pth")
    default = load_nrp(str(tmp_path / "p.pth"), dynamic=True)
    wide = load_nrp(str(tmp_path / "p.pth"), dynamic=True, noise_std=0.2, noise_eps=24)
    assert (default.noise_std, default.eps) == (0.05, 16.0) and repr(default) != repr(wide)
    x = smooth_images(2, size=32)
    torch.manual_seed(0)
    noisy = DynamicNoise(sigma=0.2, eps=24)(x)
    assert 16 / 255 < (noisy - x).abs().max() <= 24 / 255 + 1e-6
    torch.manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), purifier(noisy).clamp(0, 1))
    with pytest.raises(ValueError, match="noise_std and eps must be > 0"):
        load_nrp(str(tmp_path / "p.pth"), dynamic=True, noise_std=0)


def test_load_nrp_round_trips_a_state_dict_and_explains_a_wrong_file(tmp_path):
    purifier = RRDBPurifier(nf=8, nb=1, gc=4)
    torch.save(purifier.state_dict(), tmp_path / "p.pth")
    defense = load_nrp(str(tmp_path / "p.pth"))
    x = smooth_images(1, size=32)
    assert torch.equal(defense(x), purifier(x).clamp(0, 1))
    before = repr(defense)
    torch.save(RRDBPurifier(nf=8, nb=1, gc=4).state_dict(), tmp_path / "p.pth")  # retrained into the same file
    assert repr(load_nrp(str(tmp_path / "p.pth"))) != before  # so the evaluation's cache keys change with it
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "not_a_purifier.pth")
    with pytest.raises(ValueError, match="expected a purifier"):
        load_nrp(str(tmp_path / "not_a_purifier.pth"))


@pytest.mark.parametrize("bad", [lambda: JPEG(0), lambda: MedianFilter(2), lambda: BitDepth(9),
                                 lambda: GaussianBlur(0), lambda: TVM(keep_prob=0), lambda: DynamicNoise(eps=0)])
def test_bad_settings_fail_early(bad):
    with pytest.raises(ValueError):
        bad()
