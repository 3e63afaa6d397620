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
``lab/ssp_strength.py``) 15 cosine steps from 16/255 reach 0.98 of the feature distortion
of the authors' 100 constant steps of 2.55/255, 10 constant steps of 2.55/255 only 0.55.
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
    Returns:
        ``x'`` of the same shape, detached, with ``|x' - x|_inf <= eps/255`` and values in [0, 1].
    """
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"SSP needs eps, step_size, steps >= 0, got {eps}, {step_size}, {steps}")
    check_start(start)

    kappas = [k / 255.0 for k in step_sizes(step_size, steps, schedule)]
    x = x.detach()
    eps_01 = eps / 255.0
    with torch.no_grad():
        feat_clean = features(x)
    x_adv = random_start(x, eps_01, start, generator)
    for kappa in kappas:
        x_adv.requires_grad_(True)
        loss = feature_distance(features(x_adv), feat_clean, distance)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = project_linf(x_adv + kappa * grad.sign(), x, eps_01)
    return x_adv.detach()


@dataclass
class SSP:
    """SSP with its settings bound, so it can be built from a config: ``SSP(eps=16)(x, features)``."""

    eps: float = 16.0
    step_size: float = 2.55
    steps: int = 10
    distance: str = "mse"
    start: str = "normal"
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.eps < 0 or self.step_size < 0 or self.steps < 0:
            raise ValueError(f"SSP needs eps, step_size, steps >= 0 (pixel units), got {self.eps}, {self.step_size}, {self.steps}")
        check_start(self.start)
        step_sizes(self.step_size, 0, self.schedule)  # validates the schedule early
        feature_distance(torch.zeros(1, 1), torch.zeros(1, 1), self.distance)  # validates the name early

    def __call__(self, x: torch.Tensor, features: nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
        return ssp(x, features, self.eps, self.step_size, self.steps, self.distance, self.start, generator,
                   self.schedule)
