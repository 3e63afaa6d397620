"""Evaluation images: ``EvalSet`` = images ``(N,3,S,S)`` in [0,1] (8-bit values) + labels ``(N,)``.

Labels are ImageNet class indices 0..999, or ``-1`` where unknown: then a victim is scored against
its own clean prediction (fooling rate). Three sources:

* ``neurips_dev(root)``: the NeurIPS 2017 adversarial-competition dev set (the paper's
  "ImageNet-NeurIPS"): ``root/images/*.png`` and ``root/images.csv`` with columns ``ImageId`` and
  ``TrueLabel`` (1..1000; 0 is background), or any folder with such a CSV; ``split="dev"`` or
  ``"test"`` keeps one side of the fixed split ``neurips_split`` (``scripts/build_datasets.py
  neurips`` builds the folder from a clone);
* ``image_folder(root)``: class folders (ImageNet synsets ``n01440764``... sorted = class index,
  or integer folder names), or a flat folder without labels;
* ``embedded()``: the photos installed packages ship (offline default), unlabelled, with a few
  crops per photo to have more than nine images (``image_folder`` takes the same ``crops``).

Images are resized (shorter side) and centre-cropped to ``size``, then rounded to 8-bit values so
that cached adversarial examples (stored as uint8) keep the exact budget.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from nrp_lightning.data import EmbeddedImages
from nrp_lightning.images import IMAGE_EXTENSIONS, ImageLoadError, list_images, load_image

UNKNOWN = -1
NEURIPS_CSV = "images.csv"  # ImageId, TrueLabel (1-based) [, split], beside images/
NEURIPS_SPLITS = ("dev", "test", "all")
DEV_SHARE = 3  # one ImageId in DEV_SHARE is dev


def neurips_split(image_id: str) -> str:
    """``dev`` or ``test`` for a NeurIPS-2017 ImageId (16 hex digits), by a fixed rule on the id
    alone, so every copy of the set (911 images here, the competition's 1000) splits the same:
    dev when the sha256 of the id, read as a number, is divisible by 3 (about a third)."""
    return "dev" if int(hashlib.sha256(image_id.encode()).hexdigest(), 16) % DEV_SHARE == 0 else "test"


@dataclass
class EvalSet:
    """``images (N,3,S,S)`` in [0,1], ``labels (N,)`` long (``-1`` = unknown), ``names``."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    description: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3 or len(self.images) != len(self.labels) != len(self.names):
            raise ValueError(f"EvalSet needs images (N,3,S,S), labels (N,), names (N); got {tuple(self.images.shape)}, "
                             f"{tuple(self.labels.shape)}, {len(self.names)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).all())

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the 8-bit images and labels: the data part of every cache key."""
        h = hashlib.sha256(to_uint8(self.images).numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def center_square(img: torch.Tensor, size: int, scale: float = 1.0, offset: tuple[float, float] = (0.5, 0.5)) -> torch.Tensor:
    """A square crop of side ``scale * min(H, W)`` at relative ``offset`` of ``(3,H,W)``, resized to
    ``size`` (bilinear, antialiased), rounded to 8-bit values."""
    h, w = img.shape[-2:]
    side = max(1, int(round(min(h, w) * scale)))
    top, left = int(round((h - side) * offset[0])), int(round((w - side) * offset[1]))
    crop = img[:, top:top + side, left:left + side]
    out = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)[0]
    return from_uint8(to_uint8(out))


CROPS = ((1.0, (0.5, 0.5)), (0.7, (0.0, 0.0)), (0.7, (0.0, 1.0)), (0.7, (1.0, 0.0)), (0.7, (1.0, 1.0)))


def crops_of(img: torch.Tensor, size: int, crops: int) -> list[torch.Tensor]:
    """The first ``crops`` (1..5) of: the centre square, then four 70% corner squares of
    ``(3,H,W)``, each resized to ``size``; image ``k`` of a file is named ``<name>#k``."""
    if not 1 <= crops <= len(CROPS):
        raise ValueError(f"crops must be in 1..{len(CROPS)}, got {crops}")
    return [center_square(img, size, scale, offset) for scale, offset in CROPS[:crops]]


def embedded(size: int = 224, crops: int = 5, names: list[str] | None = None) -> EvalSet:
    """The shipped photos (``nrp_lightning.data.EMBEDDED_PHOTOS``), unlabelled: per photo the centre
    square and up to four 70% corner crops (``crops`` in 1..5), each resized to ``size``."""
    source = EmbeddedImages(names)
    images, out_names = [], []
    for i in range(len(source)):
        images += crops_of(source.load(i), size, crops)
        out_names += [f"{source.name(i)}#{k}" for k in range(crops)]
    return EvalSet(torch.stack(images), torch.full((len(images),), UNKNOWN), out_names,
                   f"embedded photos, {len(source)} x {crops} crops at {size} px, unlabelled")


def _load_all(paths: list[Path], size: int, limit: int | None, crops: int = 1) -> tuple[list[torch.Tensor], list[Path]]:
    """``crops`` images per file (``crops_of``) of the first ``limit`` files, and the files kept."""
    images, kept = [], []
    for p in paths[:limit] if limit else paths:
        try:
            images += crops_of(load_image(p), size, crops)
            kept.append(p)
        except ImageLoadError as exc:
            raise ImageLoadError(f"{exc} (remove the file or fix it; evaluation needs every listed image)") from None
    return images, kept


def neurips_dev(root: str, size: int = 299, labels_csv: str | None = None, limit: int | None = None,
                split: str = "all", crop: float = 1.0) -> EvalSet:
    """NeurIPS-2017 dev layout: ``root/images/`` (or ``root``) and a CSV with ``ImageId``,
    ``TrueLabel`` (1-based, as in the competition; stored 0-based here).

    ``split``: ``dev``, ``test`` (``neurips_split``) or ``all``; ``crop``: the central share of each
    image kept before it is resized to ``size`` (0.875 is ImageNet's 256 px resize and 224 px centre
    crop); ``limit``: the first images of the split only."""
    if split not in NEURIPS_SPLITS:
        raise ValueError(f"split must be one of {NEURIPS_SPLITS}, got {split!r}")
    root = Path(root).expanduser()
    image_dir = root / "images" if (root / "images").is_dir() else root
    csv_path = Path(labels_csv) if labels_csv else next((p for p in (root / NEURIPS_CSV, root / "dev_dataset.csv")
                                                          if p.is_file()), None)
    if csv_path is None or not csv_path.is_file():
        raise FileNotFoundError(f"no label CSV for {root}: expected {root}/{NEURIPS_CSV} (columns ImageId, TrueLabel); "
                                f"build it with scripts/build_datasets.py neurips CLONE --out {root}, or pass labels_csv=")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"ImageId", "TrueLabel"} <= set(rows[0]):
        raise ValueError(f"{csv_path} must have columns ImageId and TrueLabel, has {list(rows[0]) if rows else 'no rows'}")
    rows = [r for r in rows if split == "all" or neurips_split(r["ImageId"]) == split]
    by_stem = {p.stem: p for p in list_images(image_dir)}
    missing = [r["ImageId"] for r in rows if r["ImageId"] not in by_stem]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {csv_path} are not in {image_dir} (first: {missing[0]})")
    rows = rows[:limit] if limit else rows
    images = []
    for r in rows:
        try:
            images.append(center_square(load_image(by_stem[r["ImageId"]]), size, crop))
        except ImageLoadError as exc:
            raise ImageLoadError(f"{exc} (remove the file or fix it; evaluation needs every listed image)") from None
    labels = torch.tensor([int(r["TrueLabel"]) - 1 for r in rows])
    return EvalSet(torch.stack(images), labels, [r["ImageId"] for r in rows],
                   f"NeurIPS-2017 dev set {root}, {split} split ({len(rows)} images, centre {crop:g} at {size} px)")


def image_folder(root: str, size: int = 224, limit: int | None = None, crops: int = 1) -> EvalSet:
    """Class folders (sorted synset names or integer names = ImageNet indices), or a flat folder
    of unlabelled images (fooling rate against clean predictions). Per file, ``crops`` images as in
    ``embedded()`` (the centre square, then up to four 70% corner crops), named ``<file>#k``;
    ``limit`` counts files."""
    root = Path(root).expanduser()
    paths = list_images(root)
    if not paths:
        raise FileNotFoundError(f"no images under {root}")
    classes = sorted({p.parent.name for p in paths if p.parent != root})
    if classes and all(p.parent != root for p in paths):
        index = {c: int(c) for c in classes} if all(c.isdigit() for c in classes) else {c: i for i, c in enumerate(classes)}
        if not all(c.isdigit() for c in classes) and len(classes) != 1000:
            raise ValueError(f"{root} has {len(classes)} class folders; ImageNet indices need all 1000 synset folders "
                             "(sorted) or integer folder names 0..999")
        labels = [index[p.parent.name] for p in paths]
    else:
        labels = [UNKNOWN] * len(paths)
    images, kept = _load_all(paths, size, limit, crops)
    return EvalSet(torch.stack(images), torch.tensor(labels[:len(kept)]).repeat_interleave(crops),
                   [f"{p.relative_to(root)}#{k}" for p in kept for k in range(crops)],
                   f"image folder {root} ({len(kept)} files x {crops} crops at {size} px"
                   f"{', labelled' if labels[0] >= 0 else ', unlabelled'})")


def photo_views(root: Path, size: int = 224) -> torch.Tensor:
    """The photo screens' views ``(5·files, 3, size, size)`` of the photos under ``root`` (centre
    square and four 70% corners each, ``CROPS``); a folder without images, or with an unreadable
    one, is a ``ValueError`` that names it (``FileNotFoundError`` for a missing folder)."""
    paths = list_images(root)
    if not paths:
        raise ValueError(f"no images under {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}; the corpus's "
                         "photos: python scripts/build_photo_corpus.py --out data/photos)")
    return torch.stack([center_square(load_image(p), size, s, o) for p in paths for s, o in CROPS])


def photo_views_or_exit(parser: argparse.ArgumentParser, root: Path, size: int = 224) -> torch.Tensor:
    """``photo_views(root, size)``, or the command's one-line usage error naming the folder or file."""
    try:
        return photo_views(root, size)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
