"""Purify only what looks attacked: the purification gate (an option the paper does not have).

The purifier is trained so that the features of ``P(x′)`` match those of the clean ``x`` (L_feat,
Eq. 7). On a clean photo, purification barely moves its features; on a perturbed one it undoes
the feature distortion the perturbation made. The gate measures that move,

    s(x) = mean | F(P(x)) − F(x) |     (MAE over the feature map of F, the purifier's own backbone)

and keeps the input where it is small:  D(x) = P(x) if s(x) > τ, else x.  A clean photo the gate
passes keeps every pixel (and every classifier's prediction); an input it flags is purified as
without the gate. ``calibrate_threshold`` sets τ from clean photos and weakly attacked ones
(lab/NOTEBOOK.md, "Purify only what looks attacked").

The gate is a detector. A photo it flags by mistake is purified as plain NRP would purify it, no
worse; but an attacker who knows it keeps the perturbation's score below τ and nothing is
purified: on the held-out views such a transfer attack gets through as with no defence
(``lab/probe_gate.py --evade``). Plain NRP fares no better against an attacker who knows
it: a transfer attack crafted through the purifier gets through it as well (``--through-purifier``).
It helps only against attackers who do not know of the defence.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

GATE_KEY = "gate"  # the entry of a purifier's metadata JSON that holds its calibrated gate
GATE_BACKBONES = ("mobilenet_v2", "vgg16", "vgg19")  # feature extractors of models.features a gate can use


class GateConfigError(ValueError):
    """A gate asked for that cannot be built (no calibration for this purifier, bad threshold)."""


@dataclass(frozen=True)
class GateSpec:
    """What a gate needs: the feature extractor F (``backbone`` at ``layer``, as in ``models.features``)
    and the threshold τ on the feature MAE (units of F's activations)."""

    backbone: str
    layer: int
    threshold: float

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
                and self.threshold > 0 and self.threshold < float("inf")):
            raise GateConfigError(f"gate threshold must be a positive number, got {self.threshold!r}")

    @classmethod
    def from_metadata(cls, metadata_path: str | Path) -> GateSpec:
        """The gate calibrated for a purifier, from the ``"gate"`` entry of its metadata JSON
        (``pretrained/nrp_cpu.json`` for the shipped one; written by ``scripts/calibrate_gate.py``)."""
        path = Path(metadata_path)
        try:
            card = json.loads(path.read_text())
        except FileNotFoundError:
            raise GateConfigError(f"no metadata file {path} beside the purifier: calibrate a gate for it with "
                                  "python scripts/calibrate_gate.py PURIFIER --write") from None
        except ValueError as exc:
            raise GateConfigError(f"{path} is not JSON ({exc}): calibrate a gate with "
                                  "python scripts/calibrate_gate.py PURIFIER --write") from None
        return cls.from_card(card, str(path))

    @classmethod
    def from_card(cls, card: dict | None, where: str) -> GateSpec:
        """The ``"gate"`` entry of a purifier's card (``purify.purifier_card``: the JSON beside a
        ``.pth``, or a ``.safetensors`` file's metadata); ``where`` names it in errors."""
        if card is None:
            raise GateConfigError(f"{where} has no card with a gate: calibrate a gate for it with "
                                  "python scripts/calibrate_gate.py PURIFIER --write")
        try:
            entry = card[GATE_KEY]
            return cls(entry["backbone"], int(entry["layer"]), float(entry["threshold"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise GateConfigError(f"{where} holds no usable {GATE_KEY!r} entry ({exc!r}): calibrate a gate with "
                                  "python scripts/calibrate_gate.py PURIFIER --write") from None


class PurificationGate(nn.Module):
    """``forward(x, purified)``: ``purified`` where ``score(x, purified) > threshold``, else ``x``.

    Args:
        features: a frozen feature extractor F taking ``(B,3,H,W)`` in [0, 1] (``models.features``).
        threshold: τ on the per-image feature MAE.
    """

    def __init__(self, features: nn.Module, threshold: float) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.threshold = float(threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:g}, features={getattr(self.features, 'name', type(self.features).__name__)}"

    @classmethod
    def from_spec(cls, spec: GateSpec) -> PurificationGate:
        from nrp_lightning.models import features

        if spec.backbone not in GATE_BACKBONES:
            raise GateConfigError(f"gate backbone {spec.backbone!r} is not one of {', '.join(GATE_BACKBONES)}")
        return cls(getattr(features, spec.backbone)(layer=spec.layer), spec.threshold)

    def distance(self, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """``(B,)`` feature MAE between ``purified`` and ``x`` (both ``(B,3,H,W)`` in [0, 1]), with
        gradients (an attacker who knows the gate differentiates it)."""
        return (self.features(purified.clamp(0, 1)) - self.features(x)).abs().flatten(1).mean(1)

    @torch.no_grad()
    def score(self, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """``distance`` without gradients: the score the gate thresholds."""
        return self.distance(x, purified)

    @torch.no_grad()
    def flags(self, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: which inputs the gate sends through the purifier."""
        return self.score(x, purified) > self.threshold

    def forward(self, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """``(B,3,H,W)``: each image's ``purified`` if flagged, else ``x``. The choice is piecewise
        constant, so gradients flow exactly through the branch taken (BPDA needs no approximation)."""
        keep = self.flags(x, purified).to(x.device).view(-1, 1, 1, 1)
        return torch.where(keep, purified, x)


def calibrate_threshold(clean_scores: torch.Tensor, attacked_scores: torch.Tensor) -> float:
    """τ halfway between the highest clean score and the lowest attacked one (the widest margin
    between the two sets). Where the sets overlap, τ is the highest clean score (no clean image of
    the calibration set flagged) and some attacked ones fall below it: ``ValueError`` if none is above."""
    clean_max, attacked_min = float(clean_scores.max()), float(attacked_scores.min())
    if attacked_min > clean_max:
        return (clean_max + attacked_min) / 2
    if float(attacked_scores.max()) <= clean_max:
        raise ValueError(f"no attacked image scores above the clean ones (clean max {clean_max:.4f}, attacked max "
                         f"{float(attacked_scores.max()):.4f}): this gate cannot tell them apart")
    return clean_max
