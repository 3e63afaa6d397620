"""COCO-format instance annotations (COCO val2017 or any set in that format), read without a
framework: images + ``instances_*.json``.

Item ``i`` is ``(image (3, H, W) in [0, 1], target)`` with ``target`` a dict of
``boxes (N, 4)`` xyxy in pixels, ``labels (N,)`` COCO category ids (what torchvision detectors
predict), ``iscrowd (N,)`` and, with ``with_masks=True``, ``masks (N, H, W)`` bool.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from nrp_lightning.images import load_image


def polygon_mask(segmentation, height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool mask of a COCO segmentation: polygons, or RLE (needs pycocotools)."""
    if isinstance(segmentation, list):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in segmentation:
            if len(poly) >= 6:
                draw.polygon([(poly[k], poly[k + 1]) for k in range(0, len(poly), 2)], fill=1)
        return np.asarray(canvas, dtype=bool)
    from pycocotools import mask as mask_utils

    rle = segmentation
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(bool)


class CocoInstances:
    """Images of a COCO instances JSON that exist in ``images_dir``; ``subset`` keeps a seeded random N."""

    def __init__(self, images_dir: str, annotations: str, subset: int | None = None, seed: int = 0,
                 with_masks: bool = False) -> None:
        self.images_dir, self.with_masks = Path(images_dir).expanduser(), with_masks
        path = Path(annotations).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotations {path} not found (e.g. annotations/instances_val2017.json)")
        data = json.loads(path.read_text())
        missing = {"images", "annotations", "categories"} - set(data)
        if missing:
            raise ValueError(f"{path} is not a COCO instances file: missing {sorted(missing)}")
        self.categories = {c["id"]: c["name"] for c in data["categories"]}
        by_image: dict[int, list] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        images = [im for im in data["images"] if (self.images_dir / im["file_name"]).is_file()]
        if not images:
            raise FileNotFoundError(f"none of the {len(data['images'])} images of {path} is in {self.images_dir}")
        if subset is not None and subset < len(images):
            images = random.Random(seed).sample(images, subset)
        self.images = sorted(images, key=lambda im: im["id"])
        self.annotations = by_image

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return self.images[i]["file_name"]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[i]
        image = load_image(self.images_dir / info["file_name"])
        h, w = image.shape[-2:]
        anns = [a for a in self.annotations.get(info["id"], []) if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64),
        }
        if self.with_masks:
            masks = [polygon_mask(a["segmentation"], h, w) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool)
        return image, target
