"""Frozen feature extractors F_psi: the space where SSP distorts and NRP restores (Eq. 1, 5).

Each takes ``(B, 3, H, W)`` RGB in [0, 1] (ImageNet normalization is applied inside) and returns
one feature map ``(B, C, h, w)``. Parameters are frozen and the module stays in eval mode even
when a parent calls ``.train()``.
"""
from __future__ import annotations

import logging

import torch
import torchvision
from torch import nn

from nrp_lightning.weights import resolve_torchvision_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the single normalization helper of the project."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureExtractor(nn.Module):
    """A frozen ``body`` after ``Normalize``: ``(B,3,H,W)`` in [0,1] -> ``(B,C,h,w)``."""

    def __init__(self, body: nn.Module, name: str, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.name = name
        self.normalize = Normalize(mean, std)
        self.body = body
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)  # F_psi is fixed: BatchNorm statistics never move

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.normalize(x))
        return out[-1] if isinstance(out, (list, tuple)) else out


def _torchvision_trunk(arch: str, layer: int, pretrained: bool, weights_path: str | None) -> nn.Module:
    model = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        model.load_state_dict(resolve_torchvision_weights(arch, weights_path))
    else:
        log.warning("%s feature extractor is randomly initialised (pretrained=false): fine for tests, "
                    "meaningless for training a purifier", arch)
    features = model.features
    if not 1 <= layer <= len(features):
        raise ValueError(f"{arch} layer must be in 1..{len(features)} (modules of .features kept), got {layer}")
    return features[:layer]


def vgg16(layer: int = 16, pretrained: bool = True, weights_path: str | None = None) -> FeatureExtractor:
    """VGG16 ``features[:layer]``; the paper's default ``layer=16`` ends at relu3_3."""
    return FeatureExtractor(_torchvision_trunk("vgg16", layer, pretrained, weights_path), f"vgg16[:{layer}]")


def vgg19(layer: int = 18, pretrained: bool = True, weights_path: str | None = None) -> FeatureExtractor:
    """VGG19 ``features[:layer]``; ``layer=18`` ends at relu3_4."""
    return FeatureExtractor(_torchvision_trunk("vgg19", layer, pretrained, weights_path), f"vgg19[:{layer}]")


def mobilenet_v2(layer: int = 7, pretrained: bool = True, weights_path: str | None = None) -> FeatureExtractor:
    """MobileNetV2 ``features[:layer]``; ``layer=7`` ends at stride 8 with 32 channels, the
    resolution of VGG16's relu3_3 (weights ship offline)."""
    return FeatureExtractor(_torchvision_trunk("mobilenet_v2", layer, pretrained, weights_path), f"mobilenet_v2[:{layer}]")


def timm_features(model_name: str, out_index: int = 2, pretrained: bool = True) -> FeatureExtractor:
    """Any timm CNN by name, stage ``out_index`` of ``features_only=True``, with the model's own
    normalization. Pretrained weights come from the Hugging Face hub (or its offline cache)."""
    import timm

    body = timm.create_model(model_name, pretrained=pretrained, features_only=True, out_indices=(out_index,))
    cfg = body.pretrained_cfg
    return FeatureExtractor(body, f"{model_name}@{out_index}", cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
