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


def output_consistency_loss(logits_purified: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """L_out (not in the paper; ``loss.kappa``): ``KL(f(x) || f(P(x')))`` of a frozen classifier's
    softmax, summed over classes and averaged over the batch. Logits ``(B, K)``; ``logits_clean``
    carries no gradient. Where L_feat holds one layer's features, this holds the prediction itself."""
    return F.kl_div(F.log_softmax(logits_purified.float(), dim=1), F.log_softmax(logits_clean.float(), dim=1),
                    log_target=True, reduction="batchmean")


PIXEL_DISTANCES = ("mse", "l2")
DETAIL_PATCH = 8  # px: the patches whose detail L_detail compares
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    """Per-channel 3x3 Laplacian (the high-pass) of ``x`` ``(B, C, H, W)``: ``(B, C, H-2, W-2)``, fp32."""
    c = x.shape[1]
    kernel = _LAPLACIAN.to(device=x.device, dtype=torch.float32).expand(c, 1, 3, 3)
    return F.conv2d(x.float(), kernel, groups=c)


def local_detail(x: torch.Tensor, patch: int = DETAIL_PATCH) -> torch.Tensor:
    """Fine detail of ``x`` ``(B, C, H, W)`` in [0, 1] per ``patch`` x ``patch`` patch: the RMS of its
    per-channel Laplacian (the 3x3 high-pass), ``(B, C, (H-2)//patch, (W-2)//patch)`` in [0, 1] units.
    A smoothed image has less of it; a noisy one more."""
    return (F.avg_pool2d(_laplacian(x).pow(2), patch) + 1e-8).sqrt()


def detail_loss(purified: torch.Tensor, clean: torch.Tensor, patch: int = DETAIL_PATCH) -> torch.Tensor:
    """L_detail (not in the paper; ``loss.detail``): mean |detail(P(x')) - detail(x)| over
    ``patch`` px patches (``local_detail``). The pixel and feature losses are minimised by the mean of
    the images a perturbed input could have come from, which is smoother than any of them: the
    purifier removes fine texture with the perturbation (half of the clean images' Laplacian energy
    at CPU scale, docs/reproduction.md). This term asks for as much detail as x has in each patch,
    where it is, without asking for the exact (unrecoverable) texture; too much (the perturbation
    let through) costs as much as too little."""
    return (local_detail(purified, patch) - local_detail(clean, patch)).abs().mean()


def detail_ratio(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fine-detail energy of ``images`` over that of ``reference`` (mean squared Laplacian
    of each image, ``local_detail``'s high-pass): 1 keeps the detail, < 1 smooths, > 1 adds."""
    return _laplacian(images).pow(2).mean((1, 2, 3)) / _laplacian(reference).pow(2).mean((1, 2, 3))


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
