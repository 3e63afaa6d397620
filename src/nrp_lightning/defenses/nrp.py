"""NRP as a defence: purify (optionally after dynamic inference's random perturbation), clamp,
and optionally keep the inputs the purification gate (``nrp_lightning.gate``) does not flag.

``NRPDefense`` wraps any purifier module. ``load_nrp`` builds one from any purifier file (the
authors' ``NRP.pth`` / ``NRP_resG.pth``, our ``purifier.pth`` or a ``.ckpt``) via ``load_purifier``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nrp_lightning.defenses.base import Defense
from nrp_lightning.gate import GateSpec, PurificationGate
from nrp_lightning.models.purifier import purify
from nrp_lightning.purify import DYNAMIC_EPS, DYNAMIC_SIGMA, dynamic_perturb, load_purifier
from nrp_lightning.weights import sha256_of


class NRPDefense(Defense):
    """``P(x_m)`` clamped to [0,1], where ``x_m = x`` or, with ``dynamic=True``,
    ``x_m = clip(clip(x + noise_std*N(0,1), x +- eps/255), 0, 1)`` (fresh noise per call: use EOT).
    With a ``gate`` (``PurificationGate``), each image is ``P(x_m)`` only where the gate flags it
    (its feature move ``s(x) = MAE(F(P(x_m)), F(x))`` exceeds τ) and ``x`` itself elsewhere.
    Fully differentiable: adaptive attacks backpropagate through the purifier itself (and through
    whichever branch the gate takes)."""

    has_gradient = exact_gradient = True

    def __init__(self, purifier: nn.Module, dynamic: bool = False, noise_std: float = DYNAMIC_SIGMA,
                 eps: float = DYNAMIC_EPS, gate: PurificationGate | None = None) -> None:
        super().__init__()
        if noise_std <= 0 or eps <= 0:
            raise ValueError(f"dynamic inference's noise_std and eps must be > 0, got noise_std={noise_std}, eps={eps}")
        self.purifier = purifier.eval().requires_grad_(False)
        self.dynamic, self.noise_std, self.eps = bool(dynamic), float(noise_std), float(eps)
        self.randomized = self.dynamic
        self.gate = gate
        if gate is not None:
            self.gate_threshold = gate.threshold  # in the repr, hence in the evaluation's cache keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_m = dynamic_perturb(x, sigma=self.noise_std, eps=self.eps) if self.dynamic else x
        purified = purify(self.purifier, x_m)
        return purified if self.gate is None else self.gate(x, purified)


def load_nrp(weights: str | None = None, dynamic: bool = False, gate: bool = False,
             gate_threshold: float | None = None, noise_std: float = DYNAMIC_SIGMA,
             noise_eps: float = DYNAMIC_EPS) -> NRPDefense:
    """``NRPDefense`` from any purifier file ``load_purifier`` reads: the authors' ``NRP.pth`` /
    ``NRP_resG.pth``, our exported ``purifier.pth`` or a training ``.ckpt`` (architecture and sizes
    are read from the keys and shapes); ``None``: the purifier shipped with the package.

    ``weights`` (part of the repr, hence of the evaluation's cache keys) names the file and its
    content (``PATH sha256:16 hex``): a purifier retrained into the same path is scored afresh,
    not answered from rows of the old one.

    ``gate=True``: purify only the inputs the purification gate flags, with the gate calibrated for
    this purifier (the ``"gate"`` entry of its card; ``gate_threshold`` overrides τ).
    ``GateConfigError`` when the purifier has no calibrated gate.

    ``noise_std`` ([0, 1] units) and ``noise_eps`` (/255) set dynamic inference's noise (defaults:
    the authors' 0.05 and 16), e.g. ``"+defenses.NRP_dyn8={..., dynamic: true, noise_std: 0.08}"``
    to screen another level; both are in the repr, so each level is cached apart."""
    purifier = load_purifier(weights)
    gate_module = load_gate(purifier, gate_threshold) if gate else None
    defense = NRPDefense(purifier, dynamic=dynamic, noise_std=noise_std, eps=noise_eps, gate=gate_module)
    defense.weights = f"{purifier.path} sha256:{sha256_of(Path(purifier.path))[:16]}"
    return defense


def load_gate(purifier: nn.Module, threshold: float | None = None) -> PurificationGate:
    """The gate calibrated for ``purifier`` (from ``load_purifier``): the ``"gate"`` entry of its card
    (``purifier.card``: the JSON beside a ``.pth``, ``nrp_cpu.pth`` -> ``nrp_cpu.json``, or the
    metadata of a ``.safetensors`` file or Hub folder), τ replaced by ``threshold`` if given."""
    spec = GateSpec.from_card(getattr(purifier, "card", None), f"purifier {purifier.path}")
    if threshold is not None:
        spec = GateSpec(spec.backbone, spec.layer, threshold)
    return PurificationGate.from_spec(spec).to(next(purifier.parameters()).device)
