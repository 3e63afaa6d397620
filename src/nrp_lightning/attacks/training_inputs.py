"""Inputs x' for the ablations of Fig. 5, with the same call signature as SSP:
``attack(x, features) -> x_adv`` on ``(B, 3, H, W)`` images in [0, 1], budgets in pixel units.

* ``GaussianNoise`` (GNP): x plus Gaussian noise; no feature extractor, no gradient.
* ``ClassifierAttack``: logit-space adversaries of a pretrained classifier (FGSM, I-FGSM, MI-FGSM
  or DIM from ``attacks.transfer``), labelled with the classifier's own clean prediction. Not in
  the paper, which trains on SSP to avoid exactly this label-space dependence; it exists to ask
  what a purifier trained on the evaluation's own attack family removes (lab/NOTEBOOK.md).
* ``FGSP``: the paper's Fig. 5 input, single-step FGSM of a classifier (``ClassifierAttack`` with
  ``method="fgsm"``; the paper names neither model nor labels, this is our documented choice).
  The feature extractor is not used by either.
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


class ClassifierAttack:
    """A logit-space attack (``attacks.transfer``'s ``fgsm``, ``ifgsm``, ``mifgsm`` or ``dim``) on a
    frozen classifier that takes [0, 1] images, each image labelled with the classifier's own clean
    prediction: ``attack(x, features) -> x_adv``, ``(B,3,H,W)`` in [0, 1], ``|x_adv - x|_inf <= eps/255``.

    Args:
        classifier: the source classifier (``models.classifiers.load_classifier``).
        method: which builder of ``attacks.transfer``; ``fgsm`` is single-step and ignores ``steps``.
        eps: l_inf budget in pixel units (/255).
        steps: gradient steps T of the iterative methods (step size eps/T).
    """

    METHODS = ("fgsm", "ifgsm", "mifgsm", "dim")

    def __init__(self, classifier: nn.Module, method: str = "mifgsm", eps: float = 16.0, steps: int = 5) -> None:
        from nrp_lightning.attacks import transfer

        if method not in self.METHODS:
            raise ValueError(f"method must be one of {', '.join(self.METHODS)}; got {method!r}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0 (pixel units), got {eps}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.classifier = classifier.requires_grad_(False).eval()
        self.method, self.eps, self.steps = method, eps, steps
        builder = getattr(transfer, method)
        self.attack = builder(eps) if method == "fgsm" else builder(eps, steps=steps)

    def __call__(self, x: torch.Tensor, features: nn.Module | None = None) -> torch.Tensor:
        from nrp_lightning.attacks.transfer import untargeted_labels

        classifier = self.classifier.to(x.device)
        return self.attack(x, untargeted_labels(classifier, x), classifier)

    def _classifier_name(self) -> str:
        return getattr(self.classifier, "name", type(self.classifier).__name__)

    def __repr__(self) -> str:
        return (f"ClassifierAttack(method={self.method}, eps={self.eps}, steps={self.steps}, "
                f"classifier={self._classifier_name()})")


class FGSP(ClassifierAttack):
    """Single-step FGSM (``attacks.transfer.fgsm``) on a frozen classifier that takes [0, 1] images,
    labelled with the classifier's own clean prediction."""

    def __init__(self, classifier: nn.Module, eps: float = 16.0) -> None:
        super().__init__(classifier, method="fgsm", eps=eps)

    def __repr__(self) -> str:
        return f"FGSP(eps={self.eps}, classifier={self._classifier_name()})"
