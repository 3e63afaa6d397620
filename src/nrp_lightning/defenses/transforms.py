"""Baseline input-transformation defences (Table 1's JPEG, TVM, R&P; median filter, bit-depth
reduction, Gaussian blur; dynamic inference's noise alone). All map ``(B,3,H,W)`` in [0,1] to the same shape in [0,1].

kornia does the filtering and the differentiable JPEG; real JPEG goes through PIL so that the
deployed defence is the codec itself, not its approximation.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nrp_lightning.defenses.base import Defense
from nrp_lightning.images import load_pil, to_uint8
from nrp_lightning.purify import DYNAMIC_EPS, DYNAMIC_SIGMA, dynamic_perturb


class JPEG(Defense):
    """JPEG compression at ``quality`` (Guo et al. 2018 use 75). Forward: PIL's real codec per
    image (4:2:0 chroma subsampling); BPDA gradient: kornia's differentiable JPEG (Shin & Song)."""

    has_gradient = True

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        self.quality = int(quality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for img in x.detach():
            buf = io.BytesIO()
            Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            out.append(load_pil(Image.open(buf)))
        return torch.stack(out).to(x.device, x.dtype)

    def differentiable(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.enhance import jpeg_codec_differentiable

        quality = torch.tensor([float(self.quality)], device=x.device, dtype=x.dtype)
        return jpeg_codec_differentiable(x, quality).clamp(0.0, 1.0)


class TVM(Defense):
    """Total-variance minimisation (Guo et al. 2018): keep each pixel with probability
    ``keep_prob``, then find ``z`` minimising ``sum(mask*(z-x)^2) + weight*TV(z)`` (anisotropic TV,
    kornia) by ``steps`` Adam steps of ``lr``. Random (the pixel mask); BPDA: identity (the
    solver's unrolled gradient is what Athalye et al. replaced by the identity)."""

    randomized = True

    def __init__(self, weight: float = 0.03, keep_prob: float = 0.5, steps: int = 60, lr: float = 0.01) -> None:
        super().__init__()
        if not 0 < keep_prob <= 1 or weight < 0 or steps < 1:
            raise ValueError(f"TVM needs 0 < keep_prob <= 1, weight >= 0, steps >= 1; got {keep_prob}, {weight}, {steps}")
        self.weight, self.keep_prob, self.steps, self.lr = weight, keep_prob, steps, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.losses import total_variation

        x = x.detach()
        mask = (torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) < self.keep_prob).to(x.dtype)
        z = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                opt.zero_grad()
                loss = (mask * (z - x) ** 2).sum() + self.weight * total_variation(z, reduction="sum").sum()
                loss.backward()
                opt.step()
        return z.detach().clamp(0.0, 1.0)


class MedianFilter(Defense):
    """Median filter over a ``window`` x ``window`` neighbourhood (kornia, reflect padding).
    Differentiable almost everywhere (the gradient goes to the median pixel)."""

    has_gradient = exact_gradient = True

    def __init__(self, window: int = 3) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"median window must be odd and >= 1, got {window}")
        self.window = int(window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.filters import median_blur

        return median_blur(x, self.window)


class GaussianBlur(Defense):
    """Gaussian blur with ``sigma`` pixels (kornia, kernel 2*ceil(2*sigma)+1). Differentiable."""

    has_gradient = exact_gradient = True

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"Gaussian blur sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.filters import gaussian_blur2d

        k = 2 * int(np.ceil(2 * self.sigma)) + 1
        return gaussian_blur2d(x, (k, k), (self.sigma, self.sigma), border_type="reflect").clamp(0.0, 1.0)


class BitDepth(Defense):
    """Bit-depth reduction to ``bits`` per channel (Xu et al. 2018, feature squeezing).
    Piecewise constant: BPDA uses the identity (straight-through)."""

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        self.bits = int(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels


class RandomResizePad(Defense):
    """R&P (Xie et al. 2018): resize to a random side in ``[H, ratio*H)`` (nearest), zero-pad at a
    random place to ``ratio*H`` (299 -> 331 in the paper), then resize back to ``H x W`` (bilinear)
    so that the shape is kept; the classifier wrapper would resize to its input size anyway.
    Random: attack it with EOT. Differentiable."""

    randomized = True
    has_gradient = exact_gradient = True

    def __init__(self, ratio: float = 331 / 299) -> None:
        super().__init__()
        if ratio < 1:
            raise ValueError(f"R&P ratio must be >= 1, got {ratio}")
        self.ratio = float(ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out_h, out_w = int(h * self.ratio), int(w * self.ratio)
        rnd_h = int(torch.randint(h, max(out_h, h + 1), ()))
        rnd_w = min(out_w, round(rnd_h * w / h))
        resized = F.interpolate(x, size=(rnd_h, rnd_w), mode="nearest")
        pad_h, pad_w = out_h - rnd_h, out_w - rnd_w
        top, left = int(torch.randint(0, pad_h + 1, ())), int(torch.randint(0, pad_w + 1, ()))
        padded = F.pad(resized, (left, pad_w - left, top, pad_h - top), value=0.0)
        return F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)


class DynamicNoise(Defense):
    """Dynamic inference's random input without the purifier: ``clip(clip(x + sigma*N(0,1),
    x +- eps/255), 0, 1)`` (``sigma`` in [0, 1] units, ``eps`` in /255; defaults those of
    ``NRPDefense(dynamic=True)``). The control for dynamic inference: what the noise alone
    undoes, so that the purifier's share of ``NRP_dynamic``'s reading shows. Random: attack it
    with EOT. Differentiable."""

    randomized = True
    has_gradient = exact_gradient = True

    def __init__(self, sigma: float = DYNAMIC_SIGMA, eps: float = DYNAMIC_EPS) -> None:
        super().__init__()
        if sigma <= 0 or eps <= 0:
            raise ValueError(f"noise sigma and eps must be > 0, got sigma={sigma}, eps={eps}")
        self.sigma, self.eps = float(sigma), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dynamic_perturb(x, sigma=self.sigma, eps=self.eps)
