"""NRP as a defence: purify (optionally after dynamic inference's random perturbation), clamp.

``NRPDefense`` wraps any purifier module. ``load_nrp`` builds one from any purifier file (the
authors' ``NRP.pth`` / ``NRP_resG.pth``, our ``purifier.pth`` or a ``.ckpt``) via ``load_purifier``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nrp_lightning.defenses.base import Defense
from nrp_lightning.models.purifier import purify
from nrp_lightning.purify import DYNAMIC_EPS, DYNAMIC_SIGMA, dynamic_perturb, load_purifier
from nrp_lightning.weights import sha256_of


class NRPDefense(Defense):
    """``P(x_m)`` clamped to [0,1], where ``x_m = x`` or, with ``dynamic=True``,
    ``x_m = clip(clip(x + noise_std*N(0,1), x +- eps/255), 0, 1)`` (fresh noise per call: use EOT).
    Fully differentiable: adaptive attacks backpropagate through the purifier itself."""

    has_gradient = exact_gradient = True

    def __init__(self, purifier: nn.Module, dynamic: bool = False, noise_std: float = DYNAMIC_SIGMA,
                 eps: float = DYNAMIC_EPS) -> None:
        super().__init__()
        self.purifier = purifier.eval().requires_grad_(False)
        self.dynamic, self.noise_std, self.eps = bool(dynamic), float(noise_std), float(eps)
        self.randomized = self.dynamic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            x = dynamic_perturb(x, sigma=self.noise_std, eps=self.eps)
        return purify(self.purifier, x)


def load_nrp(weights: str | None = None, dynamic: bool = False) -> NRPDefense:
    """``NRPDefense`` from any purifier file ``load_purifier`` reads: the authors' ``NRP.pth`` /
    ``NRP_resG.pth``, our exported ``purifier.pth`` or a training ``.ckpt`` (architecture and sizes
    are read from the keys and shapes); ``None``: the purifier shipped with the package.

    ``weights`` (part of the repr, hence of the evaluation's cache keys) names the file and its
    content (``PATH sha256:16 hex``): a purifier retrained into the same path is scored afresh,
    not answered from rows of the old one."""
    purifier = load_purifier(weights)
    defense = NRPDefense(purifier, dynamic=dynamic)
    defense.weights = f"{purifier.path} sha256:{sha256_of(Path(purifier.path))[:16]}"
    return defense
