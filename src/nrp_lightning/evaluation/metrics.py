"""What a cell measures and how sure it is: accuracy of top-5 predictions against a reference, the
share of predictions a defence changes, PSNR of defended clean images, and the 95% Wilson interval
of a rate over n images (one image of 39 is 2.6 points: every rate in the report carries one), and
the exact McNemar test of two defences scored on the same images, and the fine detail a defence keeps."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for two defences scored on the same images: ``b`` images
    where only the first one's outcome holds (say, only it changes the clean prediction), ``c``
    where only the second one's does. Under "no difference" each discordant image goes either way
    with probability 1/2, so p = P(Binomial(b + c, 1/2) at least as far from (b + c)/2), capped at 1.
    Images where both agree carry no information; with b + c = 0 the p-value is 1. Pairing makes it
    far sharper than comparing two Wilson intervals: 0 against 6 discordant images gives p = 0.031."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def psnr_per_image(defended: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each image ``(N,3,H,W)`` in [0,1] of ``defended`` against ``clean``; ``inf`` where
    they are equal."""
    return torch.stack([psnr(d[None], c[None]) for d, c in zip(defended, clean)])


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    """Per-channel 3x3 Laplacian (the high-pass) of ``x`` ``(B, C, H, W)``: ``(B, C, H-2, W-2)``, fp32."""
    c = x.shape[1]
    kernel = _LAPLACIAN.to(device=x.device, dtype=torch.float32).expand(c, 1, 3, 3)
    return F.conv2d(x.float(), kernel, groups=c)


def detail_ratio(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fine-detail energy of ``images`` over that of ``reference`` (mean squared 3x3
    Laplacian of each image): 1 keeps the detail, < 1 smooths, > 1 adds."""
    return _laplacian(images).pow(2).mean((1, 2, 3)) / _laplacian(reference).pow(2).mean((1, 2, 3))
