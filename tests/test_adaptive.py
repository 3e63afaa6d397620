"""Adaptive attacks: BPDA gradients flow through every defence; EOT averages random draws."""
import torch
import torch.nn.functional as F
from _tiny import smooth_images, tiny_classifier

from nrp_lightning.attacks.adaptive import AdaptiveAttack, Defended
from nrp_lightning.attacks.transfer import ifgsm, mifgsm, untargeted_labels
from nrp_lightning.defenses import JPEG, BitDepth, MedianFilter, RandomResizePad

torch.set_num_threads(2)


def test_straight_through_gradient_is_the_classifier_gradient_at_the_defended_input():
    model, x = tiny_classifier(), smooth_images(2)
    defense = BitDepth(3)
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(Defended(model, defense, "identity")(xr), torch.tensor([0, 1])).backward()
    xd = defense(x).requires_grad_(True)
    F.cross_entropy(model(xd), torch.tensor([0, 1])).backward()
    assert torch.allclose(xr.grad, xd.grad)


def test_bpda_uses_the_differentiable_jpeg_not_the_identity():
    model, x = tiny_classifier(), smooth_images(2)
    grads = {}
    for backward in ("bpda", "identity"):
        xr = x.clone().requires_grad_(True)
        model(Defended(model, JPEG(50), backward).defense.bpda(xr) if backward == "bpda" else xr).sum().backward()
        grads[backward] = xr.grad
    assert grads["bpda"].abs().sum() > 0 and not torch.allclose(grads["bpda"], grads["identity"])


def test_adaptive_attack_beats_a_non_differentiable_defence_within_budget():
    model, x = tiny_classifier(), smooth_images(16)
    defense = BitDepth(4)
    y = untargeted_labels(model, defense(x))
    x_adv = AdaptiveAttack(ifgsm(eps=8))(x, y, model, defense)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert F.cross_entropy(model(defense(x_adv)), y) > F.cross_entropy(model(defense(x)), y)


class CountingRP(RandomResizePad):
    calls = 0

    def forward(self, x):
        CountingRP.calls += 1
        return super().forward(x)


def test_eot_draws_the_random_defence_eot_samples_times_per_step():
    model, x = tiny_classifier(), smooth_images(4)
    attack = AdaptiveAttack(mifgsm(eps=8, steps=3), eot_samples=5)
    CountingRP.calls = 0
    attack(x, untargeted_labels(model, x), model, CountingRP())
    assert CountingRP.calls == 15
    assert attack.label(CountingRP()) == "MI-FGSM+BPDA+EOT5" and attack.label(MedianFilter()) == "MI-FGSM+BPDA"
