"""Detectors from torchvision by name, and COCO mAP through torchmetrics.

Detectors take images in [0, 1] (torchvision's detection transform normalizes inside) and
predict COCO category ids.
"""
from __future__ import annotations

import logging

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)


def torchvision_model(module, kind: str, name: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """Model ``name`` of torchvision's ``module`` (detection, segmentation) in eval mode; ``pretrained``
    loads its default weights (downloaded by torchvision, cached in ``$TORCH_HOME``)."""
    builders = torchvision.models.list_models(module=module)
    if name not in builders:
        raise ValueError(f"unknown {kind} {name!r}; torchvision has {sorted(builders)}")
    if pretrained:
        return torchvision.models.get_model(name, weights="DEFAULT", **kwargs).eval()
    log.warning("%s %s is randomly initialised (pretrained=false): only for testing the pipeline", kind, name)
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs).eval()


def build_detector(name: str = "maskrcnn_resnet50_fpn", pretrained: bool = True, **kwargs) -> nn.Module:
    """A torchvision detection model by name (``maskrcnn_resnet50_fpn``, ``retinanet_resnet50_fpn``,
    ``fasterrcnn_mobilenet_v3_large_fpn``, ...) with its COCO weights when ``pretrained``."""
    return torchvision_model(torchvision.models.detection, "detector", name, pretrained, **kwargs)


@torch.no_grad()
def detect(model: nn.Module, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Predictions (``boxes`` xyxy, ``scores``, ``labels`` and for Mask R-CNN ``masks``) for a list
    of ``(3, H, W)`` images in [0, 1]; masks are thresholded at 0.5 to ``(N, H, W)`` bool."""
    device = next(model.parameters()).device
    preds = model([im.to(device) for im in images])
    out = []
    for p in preds:
        p = {k: v.detach().cpu() for k, v in p.items()}
        if "masks" in p:
            p["masks"] = p["masks"][:, 0] > 0.5
        out.append(p)
    return out


def detection_map(preds: list[dict], targets: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """``map_50`` (mAP@0.5, the paper's metric) and ``map`` (mAP@[.5:.95]) in [0, 1] with
    torchmetrics' ``MeanAveragePrecision`` on its COCO backend. ``iou_type``: ``bbox`` or ``segm``."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type=iou_type, box_format="xyxy", backend="pycocotools")
    keys = ("boxes", "scores", "labels") + (("masks",) if iou_type == "segm" else ())
    metric.update([{k: p[k] for k in keys} for p in preds],
                  [{k: t[k] for k in ("boxes", "labels", "iscrowd", *(("masks",) if iou_type == "segm" else ()))}
                   for t in targets])
    result = metric.compute()
    return {"map_50": float(result["map_50"]), "map": float(result["map"])}
