"""Inputs x' for the ablations of Fig. 5, with the same call signature as SSP:
``attack(x, features) -> x_adv`` on ``(B, 3, H, W)`` images in [0, 1], budgets in pixel units.

* ``GaussianNoise`` (GNP): x plus Gaussian noise; no feature extractor, no gradient.
* ``FGSP``: single-step FGSM adversaries of a pretrained classifier, labelled with the
  classifier's own clean prediction (the paper names neither model nor labels; this is our
  documented choice). The feature extractor is not used.
"""
from __future__ import annotations

import torch
from torch import nn

from nrp_lightning.attacks.ssp import project_linf


class GaussianNoise:
    """``clip(x + sigma·N(0,1), 0, 1)``, optionally projected into the ``eps`` ball (``eps=None``: not)."""

    def __init__(self, sigma: float = 16.0, eps: float | None = None) -> None:
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0 (pixel units), got {sigma}")
        self.sigma, self.eps = sigma, eps

    def __call__(self, x: torch.Tensor, features: nn.Module | None = None, generator=None) -> torch.Tensor:
        noisy = x + torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * (self.sigma / 255.0)
        if self.eps is None:
            return noisy.clamp(0.0, 1.0)
        return project_linf(noisy, x, self.eps / 255.0)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma}, eps={self.eps})"


class FGSP:
    """Single-step FGSM (``attacks.transfer.fgsm``) on a frozen classifier that takes [0, 1] images,
    labelled with the classifier's own clean prediction."""

    def __init__(self, classifier: nn.Module, eps: float = 16.0) -> None:
        from nrp_lightning.attacks.transfer import fgsm

        if eps < 0:
            raise ValueError(f"eps must be >= 0 (pixel units), got {eps}")
        self.classifier = classifier.requires_grad_(False).eval()
        self.eps, self.fgsm = eps, fgsm(eps)

    def __call__(self, x: torch.Tensor, features: nn.Module | None = None) -> torch.Tensor:
        from nrp_lightning.attacks.transfer import untargeted_labels

        classifier = self.classifier.to(x.device)
        return self.fgsm(x, untargeted_labels(classifier, x), classifier)

    def __repr__(self) -> str:
        return f"FGSP(eps={self.eps}, classifier={getattr(self.classifier, 'name', type(self.classifier).__name__)})"
