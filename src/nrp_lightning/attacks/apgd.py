"""APGD (Croce & Hein, ICML 2020): the step-size-free PGD of AutoAttack, the white-box attack the
field reports today, here with the cross-entropy loss (APGD-CE) and, for randomised defences, EOT
(the gradient of each step averaged over ``eot_samples`` draws). torchattacks' implementation,
behind the interface of the grid's other attacks, so that ``AdaptiveAttack`` runs it through a
defence: through NRP the gradient is the purifier's own (it is differentiable, no BPDA needed),
through JPEG or the median filter it is BPDA's approximation.

Images ``(B,3,H,W)`` in [0,1]; ``eps`` in pixel units (/255).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass
class APGD:
    """APGD-CE, l_inf. ``steps`` iterations per restart (AutoAttack: 100), ``restarts`` random
    starts (the worst case per image is kept), ``eot_samples`` gradient draws per step, ``seed``
    the random starts' seed; ``rho`` torchattacks' step-size-halving threshold (AutoAttack's 0.75)."""

    eps: float = 16.0
    steps: int = 100
    restarts: int = 1
    eot_samples: int = 1
    rho: float = 0.75
    seed: int = 0
    name: str = "APGD-CE"

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 255 or self.steps < 1 or self.restarts < 1 or self.eot_samples < 1:
            raise ValueError(f"APGD needs 0 < eps <= 255, steps >= 1, restarts >= 1, eot_samples >= 1; got {self}")

    def with_eps(self, eps: float) -> "APGD":
        return replace(self, eps=eps)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Adversarial ``(B,3,H,W)`` within ``eps`` of ``x`` that ``model`` misclassifies where APGD
        finds one (``x`` itself where it finds none); ``y (B,)`` the labels to move away from."""
        import torchattacks  # a dependency of the evaluation only

        attack = torchattacks.APGD(model, norm="Linf", eps=self.eps / 255, steps=self.steps, n_restarts=self.restarts,
                                   seed=self.seed, loss="ce", eot_iter=self.eot_samples, rho=self.rho)
        return attack(x, y).detach()
