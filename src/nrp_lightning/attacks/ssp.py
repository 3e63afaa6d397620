"""Self-Supervised Perturbation (SSP, Algorithm 1): label-free, maximizes feature distortion.

``x' = R(x)``, then ``T`` times: ``x' <- Proj(x' + kappa * sign(grad_x' d(F(x'), F(x))))`` where
``Proj`` clips to the l_inf ball of radius ``eps`` around ``x`` and to [0, 1].

Against the authors' released ``ssp.py``. The same: that update and projection (ball, then
[0, 1]), the defaults eps 16/255 and kappa 0.01 (2.55/255), the MSE distance on ImageNet-normalized
VGG16 features to relu3_3 (``features[:16]``, ``nrp-attack ssp``'s default backbone) and 8-bit PNG
output. Different: (1) the start. Theirs is ``torch.randn(x.shape)`` itself, not ``x`` plus noise:
the first gradient is taken at that noise, and the first projection puts nearly every pixel on the
edge of the ball, at ``x - eps`` more often than at ``x + eps``, the more so the brighter the pixel
(at x = 0.5 and eps 16/255: 67% against 29%). Ours is ``x + N(0, 1)`` projected into the ball
before the first gradient: nearly every pixel on the edge too, both edges equally likely. (2) The steps: their loop runs 100 steps whatever ``--iters``
says; ours runs ``steps``. (3) Their images are resized to 256 px and centre-cropped to 224 px
first; ``nrp-attack ssp`` attacks them at their own size (in tiles beyond the memory budget).

R must be random: at ``x' = x`` the feature distance is at its minimum and its gradient is zero
(exactly for ``mse`` and ``mae``; for ``cosine`` only float rounding noise of about 1e-9, which
``sign`` would turn into full steps in arbitrary directions), so SSP from ``x`` never moves.
A start at ``x`` (``start="none"``) is therefore refused.

Step schedule (not in the paper or the authors' code): ``constant`` uses kappa at every step (the
authors' update); ``cosine`` starts at kappa and decays along a half cosine, step ``t`` of ``T``
using ``kappa * (1 + cos(pi * t / T)) / 2``: large early steps cross the ball, small late ones
settle on a stronger point. On real photos (MobileNetV2 to stride 8, 128 px crops,
``experiments/ssp_strength.py``) 15 cosine steps from 16/255 reach 0.98 of the feature distortion
of the authors' 100 constant steps of 2.55/255, 10 constant steps of 2.55/255 only 0.55.

Input diversity (not in the paper; ``diversity > 0``): at each step, with that probability, ``x'``
and ``x`` go through the same random DIM transform (resize to a side in ``[H, 1.1 H)`` and zero-pad
to ``1.1 H``, ``attacks.transfer.input_diversity``) before F, so the perturbation must distort the
features at several scales and offsets, as DIM's must fool the classifier: training inputs that
resemble the resize-robust perturbations of transfer attacks.

Translation invariance (not in the paper; ``ti_kernel > 0``): each step's gradient is smoothed
with TI's Gaussian kernel (Dong et al. 2019, ``attacks.transfer.ti_smooth``) before its sign is
taken, so the perturbation is made of blobs a few pixels wide instead of the pixel-to-pixel
pattern that stride-8 features give (lag-1 autocorrelation 0.02 for 5 steps of 4/255; 0.30 with a
7-pixel kernel, 0.44 with 15, against 0.18 for MI-FGSM and 0.32 for DIM from MobileNetV2 on the
held-out photos, ``experiments/probe_residual.py``): training inputs with the spectrum of transfer
attacks. At the CPU recipe's full length it moves where the purifier removes (more of an attack's
mid band, less of its high band), not how much (docs/reproduction.md section 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nrp_lightning.losses import feature_distance

RANDOM_STARTS = ("normal", "uniform")
STEP_SCHEDULES = ("constant", "cosine")


def step_sizes(step_size: float, steps: int, schedule: str = "constant") -> list[float]:
    """kappa of each of the ``steps`` steps, in the units of ``step_size``: all ``step_size``
    (``constant``), or ``step_size * (1 + cos(pi * t / steps)) / 2`` for ``t = 0 .. steps - 1``
    (``cosine``). ``ValueError`` for another schedule."""
    if schedule not in STEP_SCHEDULES:
        raise ValueError(f"SSP schedule must be one of {STEP_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return [step_size] * steps
    return [step_size * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)]


def check_start(kind: str) -> None:
    """``ValueError`` unless ``kind`` is one of ``RANDOM_STARTS``, saying why there is no start at ``x``."""
    if kind not in RANDOM_STARTS:
        why = ("; SSP cannot start at x itself: there the feature distance is at its minimum and its gradient "
               "is zero, so x' would never move" if kind in ("none", None) else "")
        raise ValueError(f"SSP start must be one of {RANDOM_STARTS}, got {kind!r}{why}")


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x_adv`` into ``[x - eps, x + eps]`` and then into [0, 1]. ``eps`` in [0, 1] units."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, kind: str = "normal", generator: torch.Generator | None = None) -> torch.Tensor:
    """R(x), projected into the ball: ``normal`` is ``x + N(0, 1)`` (unit std in [0, 1] units, so
    nearly every pixel lands on the ball's edge; the authors start from the noise itself, see the
    module docstring), ``uniform`` is ``x + U(-eps, eps)``. ``eps`` in [0, 1] units."""
    check_start(kind)
    if kind == "normal":
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    else:
        noise = (torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) * 2 - 1) * eps
    return project_linf(x + noise, x, eps)


def ssp(
    x: torch.Tensor,
    features: nn.Module,
    eps: float = 16.0,
    step_size: float = 2.55,
    steps: int = 100,
    distance: str = "mse",
    start: str = "normal",
    generator: torch.Generator | None = None,
    schedule: str = "constant",
    diversity: float = 0.0,
    ti_kernel: int = 0,
) -> torch.Tensor:
    """SSP adversaries of a batch.

    Args:
        x: clean images ``(B, 3, H, W)`` in [0, 1], on any device.
        features: frozen feature extractor F (takes [0, 1] images).
        eps: l_inf budget in pixel units (/255); the paper uses 16.
        step_size: kappa in pixel units (/255); the authors' 0.01 is 2.55.
        steps: T, the number of sign-gradient steps.
        distance: ``mse`` (authors' attack), ``mae`` or ``cosine``.
        start: random start R: ``normal`` or ``uniform`` (``ValueError`` otherwise; no start at ``x``).
        schedule: ``constant`` (kappa at every step, the authors' update) or ``cosine`` (kappa
            decaying to nearly 0 over the ``steps``; see the module docstring).
        diversity: probability of a DIM transform of ``x'`` and ``x`` before F at each step
            (0: none, the paper's SSP; see the module docstring).
        ti_kernel: side of TI's Gaussian kernel that smooths each step's gradient (odd; 0: none,
            the paper's SSP; see the module docstring).
    Returns:
        ``x'`` of the same shape, detached, with ``|x' - x|_inf <= eps/255`` and values in [0, 1].
    """
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"SSP needs eps, step_size, steps >= 0, got {eps}, {step_size}, {steps}")
    check_start(start)
    check_diversity(diversity)
    check_ti_kernel(ti_kernel)
    if ti_kernel:
        from nrp_lightning.attacks.transfer import ti_smooth  # transfer imports this module

    kappas = [k / 255.0 for k in step_sizes(step_size, steps, schedule)]
    x = x.detach()
    eps_01 = eps / 255.0
    with torch.no_grad():
        feat_clean = features(x)
    x_adv = random_start(x, eps_01, start, generator)
    for kappa in kappas:
        x_adv.requires_grad_(True)
        loss = (_diverse_distance(x_adv, x, feat_clean, features, distance, diversity, generator) if diversity > 0
                else feature_distance(features(x_adv), feat_clean, distance))
        (grad,) = torch.autograd.grad(loss, x_adv)
        if ti_kernel:
            grad = ti_smooth(grad, ti_kernel)
        with torch.no_grad():
            x_adv = project_linf(x_adv + kappa * grad.sign(), x, eps_01)
    return x_adv.detach()


def check_diversity(diversity: float) -> None:
    """``ValueError`` unless the input-diversity probability is in [0, 1]."""
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"SSP diversity is a probability in [0, 1] (0: off, the paper's SSP), got {diversity}")


def check_ti_kernel(ti_kernel: int) -> None:
    """``ValueError`` unless the TI kernel side is 0 (off) or a positive odd integer."""
    if isinstance(ti_kernel, bool) or not isinstance(ti_kernel, int) or ti_kernel < 0 or (ti_kernel and ti_kernel % 2 == 0):
        raise ValueError(f"SSP ti_kernel is the odd side of TI's Gaussian kernel in pixels (0: off, the paper's SSP), got {ti_kernel!r}")


def _diverse_distance(x_adv: torch.Tensor, x: torch.Tensor, feat_clean: torch.Tensor, features: nn.Module,
                      distance: str, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """d(F(T(x')), F(T(x))) with one random DIM transform T shared by both halves; where the draw
    leaves the images as they are, d(F(x'), F(x)) with the clean features already computed."""
    from nrp_lightning.attacks.transfer import input_diversity  # transfer imports this module

    pair = torch.cat([x_adv, x])
    both = input_diversity(pair, prob, generator=generator)
    if both is pair:  # not transformed this step
        return feature_distance(features(x_adv), feat_clean, distance)
    feat_adv, feat_transformed = features(both).chunk(2)
    return feature_distance(feat_adv, feat_transformed.detach(), distance)


@dataclass
class SSP:
    """SSP with its settings bound, so it can be built from a config: ``SSP(eps=16)(x, features)``."""

    eps: float = 16.0
    step_size: float = 2.55
    steps: int = 10
    distance: str = "mse"
    start: str = "normal"
    schedule: str = "constant"
    diversity: float = 0.0
    ti_kernel: int = 0

    def __post_init__(self) -> None:
        if self.eps < 0 or self.step_size < 0 or self.steps < 0:
            raise ValueError(f"SSP needs eps, step_size, steps >= 0 (pixel units), got {self.eps}, {self.step_size}, {self.steps}")
        check_start(self.start)
        check_diversity(self.diversity)
        check_ti_kernel(self.ti_kernel)
        step_sizes(self.step_size, 0, self.schedule)  # validates the schedule early
        feature_distance(torch.zeros(1, 1), torch.zeros(1, 1), self.distance)  # validates the name early

    def __call__(self, x: torch.Tensor, features: nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
        return ssp(x, features, self.eps, self.step_size, self.steps, self.distance, self.start, generator,
                   self.schedule, self.diversity, self.ti_kernel)
