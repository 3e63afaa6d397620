"""NRP as a defence: purify (optionally after dynamic inference's random perturbation), clamp.

``NRPDefense`` wraps any purifier module. ``load_nrp`` builds one from a plain state dict (the
authors' ``NRP.pth`` / ``NRP_resG.pth`` or our ``purifier.pth``).
"""
from __future__ import annotations

import torch
from torch import nn

from nrp_lightning.attacks.ssp import project_linf
from nrp_lightning.defenses.base import Defense
from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier, purify
from nrp_lightning.weights import load_state_dict

DYNAMIC_NOISE_STD = 0.05  # the authors' dynamic inference: x + 0.05 * N(0, 1) ...
DYNAMIC_EPS = 16.0  # ... kept inside the 16/255 ball around x


class NRPDefense(Defense):
    """``P(x_m)`` clamped to [0,1], where ``x_m = x`` or, with ``dynamic=True``,
    ``x_m = clip(clip(x + noise_std*N(0,1), x +- eps/255), 0, 1)`` (fresh noise per call: use EOT).
    Fully differentiable: adaptive attacks backpropagate through the purifier itself."""

    has_gradient = exact_gradient = True

    def __init__(self, purifier: nn.Module, dynamic: bool = False, noise_std: float = DYNAMIC_NOISE_STD,
                 eps: float = DYNAMIC_EPS) -> None:
        super().__init__()
        self.purifier = purifier.eval().requires_grad_(False)
        self.dynamic, self.noise_std, self.eps = bool(dynamic), float(noise_std), float(eps)
        self.randomized = self.dynamic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            x = project_linf(x + self.noise_std * torch.randn_like(x), x, self.eps / 255.0)
        return purify(self.purifier, x)


# --- ADAPTER (lead: point this at nrp_lightning.purify.load_purifier once it is merged) ---------
def load_nrp(weights: str, arch: str = "rrdb", nf: int = 64, nb: int = 23, gc: int = 32,
             dynamic: bool = False) -> NRPDefense:
    """``NRPDefense`` from a plain purifier state dict at ``weights`` (strict load).
    ``arch``: ``rrdb`` (NRP.pth, nf=64 nb=23 gc=32) or ``resnet`` (NRP_resG.pth, nf=64 nb=23)."""
    if arch == "rrdb":
        purifier = RRDBPurifier(nf, nb, gc)
    elif arch == "resnet":
        purifier = ResNetPurifier(nf, nb)
    else:
        raise ValueError(f"NRP arch must be 'rrdb' or 'resnet', got {arch!r}")
    try:
        purifier.load_state_dict(load_state_dict(weights))
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not fit a {arch} purifier with nf={nf} nb={nb} gc={gc}: set "
                         f"arch/nf/nb/gc to the checkpoint's ({str(exc).splitlines()[0]})") from exc
    defense = NRPDefense(purifier, dynamic=dynamic)
    defense.weights = str(weights)  # part of the repr, hence of cache keys
    return defense
# --- end ADAPTER ----------------------------------------------------------------------------------
