"""Tiny random classifiers and images for fast, offline tests (imported by the test modules)."""
from __future__ import annotations

import torch
from torch import nn

from nrp_lightning.models.classifiers import Classifier


def tiny_classifier(seed: int = 0, classes: int = 10, size: int = 32, name: str = "tiny") -> Classifier:
    """A 3-layer CNN ``(B,3,H,W)`` in [0,1] -> ``(B, classes)`` logits, resized to ``size``."""
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))
    return Classifier(body, name, size)


def smooth_images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``(n,3,size,size)`` in [0,1], smooth random images on the 8-bit grid (like photos)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round() / 255
