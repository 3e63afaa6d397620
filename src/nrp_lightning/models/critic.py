"""Critic C_phi (Sec. 3.3): ESRGAN's VGG-style discriminator.

Five conv blocks (conv + BatchNorm + LeakyReLU 0.2, each block ending in a stride-2 conv), then
two fully connected layers to one logit. At the training crop of 128 px the trunk ends at
``(B, 8·nf, 4, 4)`` exactly as ESRGAN's ``Discriminator_VGG_128``. At other sizes an adaptive
average pool brings the trunk's output to 4x4, so any input of at least 32 px is accepted
(smaller inputs raise ``ValueError``); the critic is only meaningful at the size it was trained on.
"""
from __future__ import annotations

import torch
from torch import nn

MIN_INPUT_SIZE = 32  # five stride-2 convs leave 1x1 at 32 px


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 conv (stride 1) and 4x4 conv (stride 2), each followed by BatchNorm and LeakyReLU."""
    return [
        nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 4, 2, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    ]


class VGGCritic(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> ``(B,)`` real/fake logits. ``nf`` is the first block's width."""

    def __init__(self, nf: int = 64, fc_dim: int = 100) -> None:
        super().__init__()
        widths = [nf, nf * 2, nf * 4, nf * 8, nf * 8]
        layers: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(nf, nf, 4, 2, 1, bias=False), nn.BatchNorm2d(nf), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += _block(c_in, c_out)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(widths[-1] * 4 * 4, fc_dim), nn.LeakyReLU(0.2, inplace=True), nn.Linear(fc_dim, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < MIN_INPUT_SIZE or x.shape[-2] < MIN_INPUT_SIZE:
            raise ValueError(f"VGGCritic needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {tuple(x.shape)}")
        return self.classifier(self.pool(self.features(x)).flatten(1)).squeeze(1)
