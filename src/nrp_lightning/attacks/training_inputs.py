"""Inputs x' for the ablations of Fig. 5, with the same call signature as SSP:
``attack(x, features) -> x_adv`` on ``(B, 3, H, W)`` images in [0, 1], budgets in pixel units.

* ``GaussianNoise`` (GNP): x plus Gaussian noise; no feature extractor, no gradient.
* ``FGSP``: single-step FGSM adversaries of a pretrained classifier, labelled with the
  classifier's own clean prediction (the paper names neither model nor labels; this is our
  documented choice). The feature extractor is not used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
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
    """FGSM ``x + eps·sign(∇x CE(f(x), argmax f(x)))`` on a frozen classifier ``f`` that takes
    [0, 1] images (normalization inside)."""

    def __init__(self, classifier: nn.Module, eps: float = 16.0) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0 (pixel units), got {eps}")
        self.classifier = classifier.requires_grad_(False).eval()
        self.eps = eps

    def __call__(self, x: torch.Tensor, features: nn.Module | None = None) -> torch.Tensor:
        classifier = self.classifier.to(x.device)
        x = x.detach()
        with torch.no_grad():
            label = classifier(x).argmax(1)
        x_req = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(classifier(x_req), label), x_req)
        return project_linf(x + (self.eps / 255.0) * grad.sign(), x, self.eps / 255.0)

    def __repr__(self) -> str:
        return f"FGSP(eps={self.eps}, classifier={type(self.classifier).__name__})"


def imagenet_classifier(arch: str = "mobilenet_v2", weights_path: str | None = None) -> nn.Module:
    """A torchvision ImageNet classifier taking [0, 1] images (normalization inside), weights
    found by ``nrp_lightning.weights`` (offline for mobilenet_v2)."""
    import torchvision

    from nrp_lightning.models.features import Normalize
    from nrp_lightning.weights import resolve_torchvision_weights

    model = getattr(torchvision.models, arch)(weights=None)
    model.load_state_dict(resolve_torchvision_weights(arch, weights_path))
    return nn.Sequential(Normalize(), model).eval()
