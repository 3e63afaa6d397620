"""Semantic segmentation: torchvision segmenters by name, image/mask folders (Pascal VOC layout,
CamVid-style ``images/`` + ``labels/`` pairs), and pixel accuracy / mIoU through torchmetrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

from nrp_lightning.images import list_images, load_image
from nrp_lightning.models.features import Normalize
from nrp_lightning.tasks.detection import torchvision_model

VOC_IGNORE_INDEX = 255  # object borders in VOC masks


class MaskFolder:
    """Pairs ``images_dir/<stem>.*`` with ``masks_dir/<stem>.png`` (class index per pixel, palette or
    grayscale). ``ids_file``: only the stems it lists (VOC's ``ImageSets/Segmentation/val.txt``)."""

    def __init__(self, images_dir: str, masks_dir: str, ids_file: str | None = None, subset: int | None = None) -> None:
        masks = {p.stem: p for p in list_images(masks_dir)}
        pairs = [(p, masks[p.stem]) for p in list_images(images_dir) if p.stem in masks]
        if ids_file:
            wanted = set(Path(ids_file).read_text().split())
            pairs = [pr for pr in pairs if pr[0].stem in wanted]
        if not pairs:
            raise FileNotFoundError(f"no image in {images_dir} has a mask of the same name in {masks_dir}")
        self.pairs = pairs[:subset] if subset else pairs

    @classmethod
    def voc(cls, root: str, split: str = "val", subset: int | None = None) -> "MaskFolder":
        root_path = Path(root).expanduser()
        return cls(str(root_path / "JPEGImages"), str(root_path / "SegmentationClass"),
                   str(root_path / "ImageSets" / "Segmentation" / f"{split}.txt"), subset)

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, i: int) -> str:
        return self.pairs[i][0].name

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (3, H, W) in [0, 1], mask (H, W) int64 class indices)``."""
        image_path, mask_path = self.pairs[i]
        with Image.open(mask_path) as m:
            mask = torch.from_numpy(np.asarray(m if m.mode in ("P", "L") else m.convert("L"), dtype=np.int64))
        image = load_image(image_path)
        if image.shape[-2:] != mask.shape:
            raise ValueError(f"{image_path} is {tuple(image.shape[-2:])} but its mask {mask_path} is {tuple(mask.shape)}")
        return image, mask


class Segmenter(nn.Module):
    """A torchvision segmentation model taking ``(B, 3, H, W)`` in [0, 1]; returns logits ``(B, C, H, W)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.normalize, self.model = Normalize(), model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))["out"]


def build_segmenter(name: str = "deeplabv3_resnet50", pretrained: bool = True, **kwargs) -> Segmenter:
    """``fcn_resnet50``, ``deeplabv3_resnet50``, ``deeplabv3_mobilenet_v3_large``, ... (21 VOC classes
    when pretrained: torchvision's weights were trained on the VOC categories of COCO)."""
    return Segmenter(torchvision_model(torchvision.models.segmentation, "segmenter", name, pretrained, **kwargs)).eval()


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                         ignore_index: int = VOC_IGNORE_INDEX) -> dict[str, float]:
    """Pixel accuracy and mean IoU over classes (torchmetrics), ``pred``/``target``: ``(N, H, W)`` class
    indices; pixels equal to ``ignore_index`` in ``target`` are left out."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)
    miou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index)
    return {"pixel_acc": float(acc(pred, target)), "miou": float(miou(pred, target))}
