"""NRP losses (Sec. 3.2, Eq. 5-8) and the feature distances SSP maximizes (Eq. 1).

All image tensors are ``(B, 3, H, W)`` in [0, 1]; feature tensors are ``(B, C, h, w)``.
Every loss returns a scalar (mean over the batch).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# Paper defaults (Sec. 4.1).
ALPHA = 5e-3  # adversarial (RaGAN) loss weight
GAMMA = 1e-2  # pixel loss weight
LAMBDA = 1.0  # feature loss weight


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)).mean()


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "cosine": _cosine_distance,
}


def feature_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "mae") -> torch.Tensor:
    """``d(a, b)`` of Eq. 1 for two feature maps: ``mse``, ``mae`` or ``cosine`` (1 - cos)."""
    try:
        fn = DISTANCES[distance]
    except KeyError:
        raise ValueError(f"unknown distance {distance!r}; choose one of {sorted(DISTANCES)}") from None
    return fn(a.float(), b.float())


def feature_loss(feat_purified: torch.Tensor, feat_clean: torch.Tensor) -> torch.Tensor:
    """L_feat (Eq. 5): MAE between F(P(x')) and F(x)."""
    return feature_distance(feat_purified, feat_clean, "mae")


PIXEL_DISTANCES = ("mse", "l2")
def pixel_loss(purified: torch.Tensor, clean: torch.Tensor, distance: str = "mse") -> torch.Tensor:
    """L_img (Eq. 6) between P(x') and x. ``mse``: the mean squared error (BasicSR's ``l2``, the
    usual reading). ``l2``: Eq. 6 as written, the Euclidean norm ``||P(x') - x||_2`` of each image,
    averaged over the batch; it is ``sqrt(3*H*W)`` times the RMSE, so with the same weight gamma it
    holds colours and low frequencies far more firmly than the mean does."""
    diff = purified.float() - clean.float()
    if distance == "mse":
        return diff.pow(2).mean()
    if distance == "l2":
        return diff.flatten(1).norm(dim=1).mean()
    raise ValueError(f"pixel distance must be one of {PIXEL_DISTANCES}, got {distance!r}")


def ragan_critic_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Relativistic average GAN loss for the critic (symmetric form of ESRGAN): real logits above
    the average fake one, fake logits below the average real one. Both ``(B,)``."""
    real_rel = logits_real - logits_fake.mean()
    fake_rel = logits_fake - logits_real.mean()
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real_rel, torch.ones_like(real_rel))
        + F.binary_cross_entropy_with_logits(fake_rel, torch.zeros_like(fake_rel))
    )


def ragan_generator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """L_adv (Eq. 7) for the purifier: the critic's loss with the roles of real and fake swapped.

    ``logits_fake = C(P(x'))``, ``logits_real = C(x)`` (detached by the caller), both ``(B,)``.
    """
    return ragan_critic_loss(logits_fake, logits_real)


def vanilla_generator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """Non-saturating standard GAN loss for the purifier (ablation); ``logits_real`` is unused."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def vanilla_critic_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Standard GAN critic loss (ablation)."""
    return 0.5 * (
        F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
        + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    )


GAN_LOSSES = {
    "ragan": (ragan_generator_loss, ragan_critic_loss),
    "vanilla": (vanilla_generator_loss, vanilla_critic_loss),
}
