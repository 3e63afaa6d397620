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


# The normalised Caffe VGG19 of WCT style transfer (Li et al. 2017) up to relu3_1, in the layout of
# its PyTorch port (file ``vgg_normalised_conv3_1.pth``): module i of the Sequential is module i of
# the original Torch model, so the file's keys are 0, 2, 5, 9, 12 and 16 (the convolutions).
# Its weights: weights.TORCHVISION_WEIGHTS["vgg19_relu3_1"].


def vgg19_relu3_1_body() -> nn.Sequential:
    """The WCT encoder to relu3_1, randomly initialised: ``(B,3,H,W)`` RGB in [0,1] ->
    ``(B,256,H//4,W//4)``. Module 0 is a 1x1 conv that the weights file sets to Caffe's input
    transform (BGR x 255 minus the channel means); the 3x3 convs pad by reflection."""
    def conv3(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3), nn.ReLU()]

    return nn.Sequential(
        nn.Conv2d(3, 3, 1),                            # 0: RGB [0,1] -> Caffe input
        *conv3(3, 64), *conv3(64, 64),                 # 1-6: relu1_1, relu1_2
        nn.MaxPool2d(2, 2),                            # 7
        *conv3(64, 128), *conv3(128, 128),             # 8-13: relu2_1, relu2_2
        nn.MaxPool2d(2, 2),                            # 14
        *conv3(128, 256),                              # 15-17: relu3_1
    )


def vgg19_relu3_1(weights_path: str | None = None, pretrained: bool = True) -> FeatureExtractor:
    """ImageNet VGG19 (Caffe, normalised for style transfer) to relu3_1: 256 channels at stride 4,
    the VGG family of the paper's F (its VGG16 relu3_3 cannot be had offline).

    ``weights_path``: the file ``vgg_normalised_conv3_1.pth``; without it the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/vgg_normalised_conv3_1.pth``) is read. The file has no licence
    stated, so nrp-lightning never downloads it: fetch it yourself (its ``source`` in
    ``weights.TORCHVISION_WEIGHTS``).
    Raises ``WeightsNotFoundError`` when no file is found, ``ValueError`` for a file of another layout."""
    body = vgg19_relu3_1_body()
    if pretrained:
        state = resolve_torchvision_weights("vgg19_relu3_1", weights_path)
        try:
            body.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{weights_path or 'the cached file'} is not the WCT VGG19-to-relu3_1 encoder (expected the keys "
                             f"0/2/5/9/12/16 .weight/.bias): {str(exc).splitlines()[0]}") from None
    else:
        log.warning("vgg19_relu3_1 feature extractor is randomly initialised (pretrained=false): fine for tests, "
                    "meaningless for training a purifier")
    # Module 0 already maps RGB [0, 1] to the network's input, so no normalization before it.
    return FeatureExtractor(body, "vgg19_relu3_1", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


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
