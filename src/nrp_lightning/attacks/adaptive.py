"""Adaptive attacks on a defended classifier ``classifier(defense(x))``.

* BPDA (Athalye et al. 2018): the forward pass is the deployed defence; the backward pass goes
  through its differentiable approximation, or through the identity (``backward="identity"``,
  straight-through). See ``Defense.bpda``.
* Surrogate (Table 3): the attacker lacks the real purifier and attacks ``source(surrogate(x))``
  with a purifier of their own; the adversaries are then transferred to the defended victims.
  That is a transfer attack whose source is ``Defended(source, surrogate)``.
* EOT (Athalye et al. 2018): for randomised defences (R&P, TVM's pixel mask, NRP's dynamic
  inference) each step averages the gradient over ``eot_samples`` random draws.

Images ``(B,3,H,W)`` in [0,1]; budgets in pixel units (/255).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from nrp_lightning.attacks.transfer import GradientAttack
from nrp_lightning.defenses.base import Defense, straight_through

BACKWARDS = ("bpda", "identity")


class Defended(nn.Module):
    """``classifier(defense(x))`` whose backward pass is BPDA: ``backward="bpda"`` uses the
    defence's own approximation (identity where it has none), ``"identity"`` always the identity."""

    def __init__(self, classifier: nn.Module, defense: Defense, backward: str = "bpda") -> None:
        super().__init__()
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
        self.classifier, self.defense, self.backward = classifier, defense, backward
        self.name = f"{getattr(defense, 'label', type(defense).__name__)}+{getattr(classifier, 'name', 'model')}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backward == "identity":
            with torch.no_grad():
                purified = self.defense(x)
            return self.classifier(straight_through(x, purified))
        return self.classifier(self.defense.bpda(x))


@dataclass
class AdaptiveAttack:
    """A gradient attack run through a defence with BPDA, plus EOT when the defence is random.

    ``__call__(x, y, classifier, defense)`` returns adversarial ``(B,3,H,W)`` in [0,1] within the
    attack's eps. ``eot_samples`` applies only to randomised defences (one draw otherwise)."""

    attack: GradientAttack
    backward: str = "bpda"
    eot_samples: int = 10
    name: str | None = None

    def __post_init__(self) -> None:
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {self.backward!r}")
        if self.eot_samples < 1:
            raise ValueError(f"eot_samples must be >= 1, got {self.eot_samples}")
        if self.name is None:
            self.name = f"{self.attack.name}+BPDA" + ("(identity)" if self.backward == "identity" else "")

    def label(self, defense: Defense) -> str:
        """Table label, with ``+EOT<n>`` when EOT is used against ``defense``."""
        return self.name + (f"+EOT{self.eot_samples}" if defense.randomized and self.eot_samples > 1 else "")

    def with_eps(self, eps: float) -> "AdaptiveAttack":
        return replace(self, attack=self.attack.with_eps(eps))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, classifier: nn.Module, defense: Defense,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        attack = replace(self.attack, eot_samples=self.eot_samples) if defense.randomized else self.attack
        return attack(x, y, Defended(classifier, defense, self.backward), generator)


def defended(classifier: nn.Module, defense: Defense, backward: str = "bpda") -> Defended:
    """A defended model as an attack *source* (Table 3: a surrogate purifier in front of Res-v2-152)."""
    return Defended(classifier, defense, backward)
