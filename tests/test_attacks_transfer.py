"""Transfer attacks: budget, range, loss increase, targeted, TI smoothness, DIM(p=0) == MI-FGSM, torchattacks."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from _tiny import smooth_images, tiny_classifier
from kornia.losses import total_variation

from nrp_lightning.attacks.transfer import (dim, fgsm, ifgsm, input_diversity, mifgsm, rfgsm, ti_smooth,
                                            untargeted_labels)

torch.set_num_threads(2)
BUILDERS = {
    "FGSM": lambda: fgsm(eps=8), "FGSM-TI": lambda: fgsm(eps=8, ti=True), "R-FGSM": lambda: rfgsm(eps=8),
    "I-FGSM": lambda: ifgsm(eps=8), "MI-FGSM": lambda: mifgsm(eps=8), "MI-FGSM-TI": lambda: mifgsm(eps=8, ti=True),
    "DIM": lambda: dim(eps=8), "DIM-TI": lambda: dim(eps=8, ti=True),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_attack_stays_in_budget_and_raises_the_loss(name):
    model, x = tiny_classifier(), smooth_images(8)
    y = untargeted_labels(model, x)
    attack = BUILDERS[name]()
    assert attack.name == name
    x_adv = attack(x, y, model)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def _targets(model, x, classes=10):
    """A target class per image that the model does not predict on the clean image."""
    pred = model(x).argmax(1)
    return (pred + 1 + torch.arange(len(x)) % (classes - 1)) % classes


@pytest.mark.parametrize("name", BUILDERS)
def test_targeted_attack_stays_in_budget_and_lowers_the_target_loss(name):
    model, x = tiny_classifier(), smooth_images(8)
    target = _targets(model, x)
    attack = replace(BUILDERS[name](), targeted=True)
    x_adv = attack(x, target, model)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), target) < F.cross_entropy(model(x), target)


@pytest.mark.parametrize("eps", [2, 16])
def test_targeted_mifgsm_matches_torchattacks(eps):
    """Same tiny model, batch and targets; 10 steps of eps/10, momentum 1. torchattacks averages the
    loss over the batch where we sum it, which the per-image L1 normalization cancels, and projects
    as x + clip(x' - x) where we clip x' directly: the two agree to float rounding."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x = tiny_classifier(seed=3), smooth_images(16, seed=1)
    target = _targets(model, x)
    ours = mifgsm(eps=eps, targeted=True)(x, target, model)
    reference = torchattacks.MIFGSM(model, eps=eps / 255, alpha=eps / 10 / 255, steps=10, decay=1.0)
    reference.set_mode_targeted_by_label(quiet=True)
    theirs = reference(x, target)
    assert (ours - x).abs().max() > (eps - 1) / 255  # it moved, to the edge of the budget
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), model(theirs).argmax(1))


def test_labels_default_to_the_clean_prediction_and_keep_known_ones():
    model, x = tiny_classifier(), smooth_images(4)
    pred = model(x).argmax(1)
    assert torch.equal(untargeted_labels(model, x), pred)
    y = torch.tensor([3, -1, 5, -1])
    assert torch.equal(untargeted_labels(model, x, y), torch.where(y >= 0, y, pred))


def test_ti_gradient_is_smoother_than_the_raw_gradient():
    model, x = tiny_classifier(), smooth_images(4, size=48)
    attack = mifgsm(eps=8)
    raw = attack.gradient(model, x, untargeted_labels(model, x))
    smooth = ti_smooth(raw)
    tv = lambda g: (total_variation(g).sum(1) / g.abs().sum(dim=(1, 2, 3))).mean()  # noqa: E731  scale-free
    assert tv(smooth) < 0.5 * tv(raw)


def test_dim_with_probability_zero_is_exactly_mifgsm():
    model, x = tiny_classifier(), smooth_images(6)
    y = untargeted_labels(model, x)
    torch.manual_seed(1)
    a = dim(eps=8, prob=0.0)(x, y, model)
    torch.manual_seed(2)
    b = mifgsm(eps=8)(x, y, model)
    assert torch.equal(a, b)


def test_input_diversity_enlarges_and_pads_like_xie_et_al():
    x = torch.rand(2, 3, 299, 299)
    out = input_diversity(x, prob=1.0)
    assert out.shape[-2:] == (330, 330)
    assert input_diversity(x, prob=1.0, ratio=0.9).shape == x.shape  # torchattacks' variant
    assert torch.equal(input_diversity(x, prob=0.0), x)


def test_with_eps_scales_steps_and_random_start():
    a = rfgsm(eps=16).with_eps(8)
    assert (a.eps, a.step_size, a.random_init) == (8, 4.0, 4.0)
    assert mifgsm(eps=16).with_eps(4).step_size is None  # derived: eps / steps


SEEDS = 4


def _fooling_rate(model, x, x_adv):
    with torch.no_grad():
        return (model(x).argmax(1) != model(x_adv).argmax(1)).float().mean().item() * 100


@pytest.mark.parametrize("ours,theirs", [
    ("MIFGSM", "MIFGSM"), ("DIM", "DIFGSM"), ("DIM-TI", "TIFGSM")])
def test_fooling_rates_match_torchattacks(ours, theirs):
    """Same model and batch, eps 2/255, 10 steps of eps/10, momentum 1, p = 0.5, TI kernel 15/3.
    Our default DI transform follows Xie et al. (enlarge to [H, 330/299 H), pad); torchattacks
    shrinks to [0.9 H, H) and pads back to H, so here ours runs with ``diversity_ratio=0.9`` (the
    remaining difference: nearest, as Xie et al., vs bilinear resizing). Mean over 4 seeds, within
    10 points."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x = tiny_classifier(seed=3), smooth_images(64, seed=1)
    y = untargeted_labels(model, x)
    eps = 2
    mine = {"MIFGSM": mifgsm(eps=eps), "DIM": dim(eps=eps, diversity_ratio=0.9),
            "DIM-TI": dim(eps=eps, ti=True, diversity_ratio=0.9)}[ours]
    kw = dict(eps=eps / 255, alpha=eps / 2550, steps=10, decay=1.0)
    ref = {"MIFGSM": lambda: torchattacks.MIFGSM(model, **kw),
           "DIFGSM": lambda: torchattacks.DIFGSM(model, diversity_prob=0.5, **kw),
           "TIFGSM": lambda: torchattacks.TIFGSM(model, diversity_prob=0.5, kernel_name="gaussian", len_kernel=15,
                                                 nsig=3, **kw)}[theirs]()
    ours_rate = theirs_rate = 0.0
    for seed in range(SEEDS):  # DI draws one transform per batch and step: average a few runs
        torch.manual_seed(seed)
        ours_rate += _fooling_rate(model, x, mine(x, y, model)) / SEEDS
        torch.manual_seed(seed)
        theirs_rate += _fooling_rate(model, x, ref(x, y)) / SEEDS
    assert 5 < theirs_rate < 95, "the check needs a budget where the attack is neither hopeless nor certain"
    assert abs(ours_rate - theirs_rate) <= 10, (ours_rate, theirs_rate)
