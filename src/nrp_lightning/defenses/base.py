"""What every defence is: an input transformation ``(B,3,H,W)`` in [0,1] -> same shape in [0,1].

``forward`` is the defence as deployed (may be non-differentiable, e.g. real JPEG). Adaptive
attacks call ``bpda``: the deployed forward pass, with the backward pass of ``differentiable``
(a smooth approximation, Athalye et al. 2018) or, when a defence has none, of the identity
(straight-through). ``randomized`` defences draw fresh randomness per call: attack them with EOT.
"""
from __future__ import annotations

import torch
from torch import nn


def straight_through(x: torch.Tensor, y: torch.Tensor, surrogate: torch.Tensor | None = None) -> torch.Tensor:
    """Value of ``y``, gradient of ``surrogate`` (or of ``x`` when ``None``): BPDA in one line."""
    through = x if surrogate is None else surrogate
    return through + (y - through).detach()


class Defense(nn.Module):
    """Base class: subclasses implement ``forward`` and, where one exists, ``differentiable``."""

    randomized: bool = False
    has_gradient: bool = False  # True: ``differentiable`` is a real (approximate) gradient path
    exact_gradient: bool = False  # True: ``forward`` itself is differentiable; BPDA is plain backprop

    def differentiable(self, x: torch.Tensor) -> torch.Tensor | None:
        """A differentiable approximation of ``forward`` for BPDA, or ``None`` (use the identity)."""
        return None

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` with the backward pass of ``differentiable(x)`` or the identity."""
        if self.exact_gradient:
            return self.forward(x)
        with torch.no_grad():
            y = self.forward(x)
        return straight_through(x, y, self.differentiable(x))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_") and k != "training"
                         and isinstance(v, (int, float, str, bool)))


class NoDefense(Defense):
    """The undefended model (the "no defence" row)."""

    has_gradient = exact_gradient = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
