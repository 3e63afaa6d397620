"""What a cell measures and how sure it is: accuracy of top-5 predictions against a reference, the
share of predictions a defence changes, PSNR of defended clean images, and the 95% Wilson interval
of a rate over n images (one image of 39 is 2.6 points: every rate in the report carries one)."""
from __future__ import annotations

import math

import torch

from nrp_lightning.lit_module import psnr


def score(top5: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """top-1 / top-5 accuracy (%) of predictions ``(N,5)`` against ``reference (N,)``, and the
    attack success rate (%) = 100 - top-1."""
    top1 = percent(top5[:, 0] == reference)
    top5_acc = percent((top5 == reference[:, None]).any(1))
    return {"top1": top1, "top5": top5_acc, "success_rate": round(100.0 - top1, 2)}


def percent(hits: torch.Tensor) -> float | None:
    """Share (%) of ``True`` in a bool tensor, rounded to 0.01 (exact counts come back through
    ``successes`` for n < 10,000); ``None`` for an empty one."""
    return round(100.0 * hits.float().mean().item(), 2) if len(hits) else None


def successes(rate: float, n: int) -> int:
    """The count k behind a rate (%) of n images, as ``percent`` rounded it."""
    return round(rate * n / 100.0)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion, ``k`` successes of ``n`` trials, as fractions in [0, 1]
    (``z = 1.96``: 95%). Unlike the normal approximation it stays inside [0, 1] and is not empty at
    k = 0 or k = n (0 of 9: [0, 0.299])."""
    if n <= 0:
        raise ValueError(f"a rate needs n >= 1 images, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def psnr_per_image(defended: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each image ``(N,3,H,W)`` in [0,1] of ``defended`` against ``clean``; ``inf`` where
    they are equal."""
    return torch.stack([psnr(d[None], c[None]) for d, c in zip(defended, clean)])
