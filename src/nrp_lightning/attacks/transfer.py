"""Gradient-based l_inf transfer attacks on classifiers: FGSM, R-FGSM, I-FGSM, MI-FGSM, DIM, and
translation-invariant (TI) gradient smoothing combined with each.

One loop covers the family; the named builders set the defaults of each paper:

* FGSM (Goodfellow et al. 2015): one step of size eps.
* R-FGSM (Tramer et al. 2018): ``x' = x + alpha*sign(N(0,1))``, alpha = eps/2, then one step of
  size eps - alpha.
* I-FGSM (Kurakin et al. 2017): T = 10 steps of eps/T (the setting of MI-FGSM, DIM and TI papers).
* MI-FGSM (Dong et al. 2018): momentum ``g <- mu*g + grad/||grad||_1``, mu = 1.0, T = 10.
* DIM (Xie et al. 2019, M-DI2-FGSM): MI-FGSM on a randomly resized-and-padded input with
  probability p = 0.5 (resize to [H, 330/299*H), pad to 330/299*H, as for 299 px Inception inputs).
* TI (Dong et al. 2019): the gradient is convolved with a 15x15 Gaussian kernel (nsig = 3) before
  the sign / momentum; ``ti=True`` on any builder gives FGSM-TI, MI-FGSM-TI, DIM-TI.

Untargeted (the default), an attack raises the cross-entropy of label ``y`` (the true label, or the
source model's own clean prediction when no label exists, see ``untargeted_labels``). With
``targeted=True`` (any builder), ``y`` holds the target classes and the attack lowers their
cross-entropy instead: the same loop on the negated loss.
Images are ``(B,3,H,W)`` in [0,1]; budgets and step sizes are in pixel units (/255).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from nrp_lightning.attacks.ssp import project_linf

DIM_RESIZE_RATIO = 330 / 299  # Xie et al.: 299 px inputs resized to [299, 330) and padded to 330
TI_KERNEL_SIZE = 15  # Dong et al. 2019, for normally trained source models
TI_NSIG = 3.0
IMAGENET_CLASSES = 1000  # the label space of every source and victim: a target class is an index below it


def untargeted_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """``y`` where known (entries ``>= 0``), else the model's clean top-1 prediction. ``(B,)`` long."""
    if y is not None and bool((y >= 0).all()):
        return y
    with torch.no_grad():
        pred = model(x).argmax(1)
    return pred if y is None else torch.where(y >= 0, y, pred)


def input_diversity(x: torch.Tensor, prob: float, ratio: float = DIM_RESIZE_RATIO,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """DIM's transform T(x; p): with probability ``prob`` resize ``(B,3,H,W)`` (nearest) to a random
    side between ``H`` and ``ratio*H`` and zero-pad at a random place to ``max(H, ratio*H)``; else
    return ``x``. ``ratio > 1`` is Xie et al. (299 -> [299, 330) -> 330; the output is larger and
    the ``Classifier`` wrapper resizes it); ``ratio < 1`` shrinks into ``[ratio*H, H)`` and pads back
    to ``H`` (torchattacks' DIFGSM with ``resize_rate=ratio``)."""
    if prob <= 0 or float(torch.rand((), generator=generator)) >= prob:
        return x
    h, w = x.shape[-2:]
    low, high = sorted((h, int(h * ratio)))
    out_h = max(h, int(h * ratio))
    out_w = round(out_h * w / h)
    rnd = int(torch.randint(low, max(high, low + 1), (), generator=generator))
    rnd_w = min(out_w, round(rnd * w / h))
    resized = F.interpolate(x, size=(rnd, rnd_w), mode="nearest")
    pad_h, pad_w = out_h - rnd, out_w - rnd_w
    top = int(torch.randint(0, pad_h + 1, (), generator=generator))
    left = int(torch.randint(0, pad_w + 1, (), generator=generator))
    return F.pad(resized, (left, pad_w - left, top, pad_h - top), value=0.0)


def ti_smooth(grad: torch.Tensor, kernel_size: int = TI_KERNEL_SIZE, nsig: float = TI_NSIG) -> torch.Tensor:
    """TI's gradient smoothing: depthwise convolution of ``(B,3,H,W)`` with the Gaussian kernel
    ``pdf(linspace(-nsig, nsig, k))`` (zero padding), i.e. sigma = (k-1)/(2*nsig) pixels."""
    from kornia.filters import gaussian_blur2d

    sigma = (kernel_size - 1) / (2 * nsig)
    return gaussian_blur2d(grad, (kernel_size, kernel_size), (sigma, sigma), border_type="constant")


@dataclass
class GradientAttack:
    """The FGSM family as one loop; use the builders (``fgsm``, ``mifgsm``, ``dim``, ...).

    Args:
        name: label for tables (``MI-FGSM-TI``).
        eps: l_inf budget (/255).
        steps: number of gradient steps T.
        step_size: per-step size (/255); ``None`` means eps/steps.
        decay: momentum mu (0 = no momentum, MI-FGSM uses 1.0).
        diversity_prob: DIM probability p (0 = off).
        ti_kernel: TI kernel size (0 = off).
        random_init: R-FGSM's alpha (/255): start at ``x + alpha*sign(N(0,1))``; 0 = start at x.
        eot_samples: gradients averaged per step over this many forward passes (EOT), for models
            or defences with randomness.
        targeted: ``y`` are target classes: descend their cross-entropy instead of ascending it.
    """

    name: str = "I-FGSM"
    eps: float = 16.0
    steps: int = 10
    step_size: float | None = None
    decay: float = 0.0
    diversity_prob: float = 0.0
    diversity_ratio: float = DIM_RESIZE_RATIO
    ti_kernel: int = 0
    ti_nsig: float = TI_NSIG
    random_init: float = 0.0
    eot_samples: int = 1
    targeted: bool = False

    def __post_init__(self) -> None:
        if self.eps < 0 or self.steps < 1 or self.eot_samples < 1:
            raise ValueError(f"{self.name}: need eps >= 0, steps >= 1, eot_samples >= 1; "
                             f"got eps={self.eps}, steps={self.steps}, eot_samples={self.eot_samples}")
        if not 0 <= self.diversity_prob <= 1:
            raise ValueError(f"{self.name}: diversity_prob must be in [0, 1], got {self.diversity_prob}")
        if self.ti_kernel and self.ti_kernel % 2 == 0:
            raise ValueError(f"{self.name}: ti_kernel must be odd (or 0 = off), got {self.ti_kernel}")

    def with_eps(self, eps: float) -> "GradientAttack":
        """The same attack at budget ``eps`` (/255); step size and random start scale with it."""
        scale = eps / self.eps if self.eps else 0.0
        return replace(self, eps=eps, random_init=self.random_init * scale,
                       step_size=None if self.step_size is None else self.step_size * scale)

    def gradient(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """d CE(model(T(x_adv)), y) / d x_adv (of -CE when targeted), averaged over ``eot_samples``
        draws, TI-smoothed: the direction the attack steps in."""
        x_adv = x_adv.detach().requires_grad_(True)
        total = torch.zeros_like(x_adv)
        for _ in range(self.eot_samples):
            x_in = input_diversity(x_adv, self.diversity_prob, self.diversity_ratio, generator)
            loss = F.cross_entropy(model(x_in), y, reduction="sum")
            if self.targeted:
                loss = -loss
            (grad,) = torch.autograd.grad(loss, x_adv)
            total += grad
        grad = total / self.eot_samples
        return ti_smooth(grad, self.ti_kernel, self.ti_nsig) if self.ti_kernel else grad

    def __call__(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Adversarial ``(B,3,H,W)`` in [0,1] with ``|x_adv - x|_inf <= eps/255``, detached.

        ``x``: clean images ``(B,3,H,W)`` in [0,1]; ``y``: labels ``(B,)`` to move away from, or the
        target classes to move towards when ``targeted``; ``model``: source classifier taking [0,1]
        inputs (a ``Classifier`` or ``Ensemble``). ``generator`` (a CPU one) seeds R-FGSM's random
        start and DIM's transforms, the same on any device."""
        x = x.detach()
        eps = self.eps / 255.0
        step = (self.step_size if self.step_size is not None else self.eps / self.steps) / 255.0
        x_adv = x.clone()
        if self.random_init:
            noise = torch.randn(x.shape, dtype=x.dtype, generator=generator).to(x.device)
            x_adv = project_linf(x + self.random_init / 255.0 * noise.sign(), x, eps)
        momentum = torch.zeros_like(x)
        for _ in range(self.steps):
            grad = self.gradient(model, x_adv, y, generator)
            if self.decay:
                grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
                momentum = self.decay * momentum + grad
                grad = momentum
            x_adv = project_linf(x_adv + step * grad.sign(), x, eps)
        return x_adv.detach()


def _name(base: str, ti: bool) -> str:
    return f"{base}-TI" if ti else base


def fgsm(eps: float = 16.0, ti: bool = False, **kw) -> GradientAttack:
    """FGSM: ``x + eps*sign(grad)``; ``ti=True`` gives FGSM-TI."""
    return GradientAttack(_name("FGSM", ti), eps, steps=1, ti_kernel=TI_KERNEL_SIZE if ti else 0, **kw)


def rfgsm(eps: float = 16.0, alpha: float | None = None, ti: bool = False, **kw) -> GradientAttack:
    """R-FGSM: random sign step of ``alpha`` (default eps/2), then one step of ``eps - alpha``."""
    alpha = eps / 2 if alpha is None else alpha
    return GradientAttack(_name("R-FGSM", ti), eps, steps=1, step_size=eps - alpha, random_init=alpha,
                          ti_kernel=TI_KERNEL_SIZE if ti else 0, **kw)


def ifgsm(eps: float = 16.0, steps: int = 10, ti: bool = False, **kw) -> GradientAttack:
    """I-FGSM (BIM): ``steps`` sign steps of eps/steps."""
    return GradientAttack(_name("I-FGSM", ti), eps, steps=steps, ti_kernel=TI_KERNEL_SIZE if ti else 0, **kw)


def mifgsm(eps: float = 16.0, steps: int = 10, decay: float = 1.0, ti: bool = False, **kw) -> GradientAttack:
    """MI-FGSM: I-FGSM with momentum ``decay`` on L1-normalised gradients."""
    return GradientAttack(_name("MI-FGSM", ti), eps, steps=steps, decay=decay,
                          ti_kernel=TI_KERNEL_SIZE if ti else 0, **kw)


def dim(eps: float = 16.0, steps: int = 10, decay: float = 1.0, prob: float = 0.5, ti: bool = False, **kw) -> GradientAttack:
    """DIM (M-DI2-FGSM): MI-FGSM on inputs transformed with probability ``prob``."""
    return GradientAttack(_name("DIM", ti), eps, steps=steps, decay=decay, diversity_prob=prob,
                          ti_kernel=TI_KERNEL_SIZE if ti else 0, **kw)
