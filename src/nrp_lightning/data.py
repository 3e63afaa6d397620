"""Training data: image sources and the datamodule that streams random crops (Sec. 4.1).

A *source* is a sequence of images: ``len(source)``, ``source.load(i) -> (3, H, W)`` in [0, 1]
(or ``ImageLoadError``) and ``source.name(i)``. Two ship here:

* ``ImageFolder``: any folder of images, e.g. COCO ``train2017/``, optionally a random subset of
  N images (the paper's 25k);
* ``EmbeddedImages``: the real photos that installed packages ship (scikit-image, scikit-learn,
  matplotlib), so training runs offline;
* ``Concat``: several sources as one (``data=real``: COCO, ImageNet and the photo corpus).

``RandomCrops`` resizes (optionally) and crops.
Training crops draw from torch's RNG (seeded per worker and per rank by Lightning), so
they differ every epoch; validation crops are fixed by ``(seed, index)``.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from nrp_lightning.images import ImageLoadError, array_to_tensor, list_images, load_image

log = logging.getLogger(__name__)


def _skimage(name: str) -> Callable[[], list]:
    def load() -> list:
        import skimage.data

        out = getattr(skimage.data, name)()
        return list(out[:2]) if name == "stereo_motorcycle" else [out]  # left and right views
    return load


def _sklearn(index: int) -> Callable[[], list]:
    def load() -> list:
        from sklearn.datasets import load_sample_images

        return [load_sample_images().images[index]]
    return load


def _grace_hopper() -> list:
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        import numpy as np

        return [np.asarray(Image.open(f).convert("RGB"))]


EMBEDDED_PHOTOS: dict[str, Callable[[], list]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "china": _sklearn(0),
    "flower": _sklearn(1),
    "grace_hopper": _grace_hopper,
}


class EmbeddedImages:
    """Real photos shipped by installed packages (no download). ``names``: a subset of
    ``EMBEDDED_PHOTOS`` (default all: 9 images, 300-600 px)."""

    def __init__(self, names: list[str] | None = None) -> None:
        names = list(names) if names else list(EMBEDDED_PHOTOS)
        unknown = sorted(set(names) - set(EMBEDDED_PHOTOS))
        if unknown:
            raise ValueError(f"unknown embedded photos {unknown}; available: {sorted(EMBEDDED_PHOTOS)}")
        self.images: list[torch.Tensor] = []
        self.names: list[str] = []
        for name in names:
            arrays = EMBEDDED_PHOTOS[name]()
            for k, arr in enumerate(arrays):
                self.images.append(array_to_tensor(arr))
                self.names.append(name if len(arrays) == 1 else f"{name}_{k}")

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> torch.Tensor:
        return self.images[i]

    def name(self, i: int) -> str:
        return self.names[i]


class NoImagesError(FileNotFoundError):
    """A training source has no images: its folder is missing or holds no image file."""


class ImageFolder:
    """Images under ``root`` (recursive). ``subset``: keep a random N of them (seeded), as the
    paper's 25k random COCO images. ``cache=True`` keeps every decoded image in memory as uint8
    (3 bytes a pixel): for a few dozen large photos, whose decoding would otherwise dominate
    each step on a CPU."""

    def __init__(self, root: str, subset: int | None = None, seed: int = 0, cache: bool = False) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise NoImagesError(f"image folder {self.root} does not exist")
        paths = list_images(self.root)
        if not paths:
            raise NoImagesError(f"no images found under {self.root} (extensions: jpg, png, ...)")
        if subset is not None and subset < len(paths):
            paths = sorted(random.Random(seed).sample(paths, subset))
        self.paths = paths
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        if self._cache is None:
            return load_image(self.paths[i])
        if i not in self._cache:
            self._cache[i] = (load_image(self.paths[i]) * 255).round().to(torch.uint8)
        return self._cache[i].float() / 255

    def name(self, i: int) -> str:
        return str(self.paths[i].relative_to(self.root))


class Concat:
    """Several sources one after the other, itself a source; names are prefixed with the source's
    index (``0/000000000009.jpg``) so that two folders' files of one name stay apart."""

    def __init__(self, sources: list) -> None:
        if not sources:
            raise ValueError("Concat needs at least one source")
        self.sources = list(sources)
        self.starts = [0]
        for source in self.sources:
            self.starts.append(self.starts[-1] + len(source))

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        k = next(k for k in range(len(self.sources)) if i < self.starts[k + 1])
        return k, i - self.starts[k]

    def load(self, i: int) -> torch.Tensor:
        k, j = self._locate(i)
        return self.sources[k].load(j)

    def name(self, i: int) -> str:
        k, j = self._locate(i)
        return f"{k}/{self.sources[k].name(j)}"


class Subset:
    """Indices ``indices`` of ``source``, itself a source."""

    def __init__(self, source, indices: list[int]) -> None:
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> torch.Tensor:
        return self.source.load(self.indices[i])

    def name(self, i: int) -> str:
        return self.source.name(self.indices[i])


def resize_for_crop(img: torch.Tensor, crop_size: int, resize: int | None) -> torch.Tensor:
    """Resize ``(3, H, W)`` to ``resize x resize`` (paper: 480) when given; then upscale, keeping
    the aspect ratio, so that the shorter side is at least ``crop_size``."""
    if resize:
        img = F.interpolate(img[None], size=(resize, resize), mode="bilinear", antialias=True, align_corners=False)[0]
    h, w = img.shape[-2:]
    if min(h, w) < crop_size:
        scale = crop_size / min(h, w)
        size = (max(crop_size, round(h * scale)), max(crop_size, round(w * scale)))
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
    return img.clamp(0.0, 1.0)


class RandomCrops(Dataset):
    """``length`` random ``crop_size`` crops from a source; item ``i`` is image ``i mod len(source)``.

    ``scales=(lo, hi)`` makes the crops multi-scale: each crop sees the image as if its shorter
    side had been resized to a side drawn log-uniformly from ``[lo, hi]`` pixels (the window is cut
    from the full image and resized, antialiased, to ``crop_size``). With ``lo`` near the
    evaluation size (224) a crop holds whole objects, as a 224 px centre crop of a photo does;
    with ``hi`` near the native size it holds fine texture. Large photos then give many distinct
    crops. ``scales=None``: the paper's crops (after the optional ``resize``).

    ``augment=True`` (not in the paper; BasicSR's ``augment(hflip=True, rotation=True)``, which the
    authors' training base applies to its crops) maps each training crop by one of the eight
    symmetries of the square (flips and 90 degree turns), drawn uniformly, so 13 photos give eight
    times as many distinct crops. Fixed (validation) crops are never augmented.

    Unreadable images are skipped with a warning (the next image is used) and counted in
    ``skipped``; the epoch never dies on one bad file. ``fixed=True`` gives the same crops every
    epoch (validation); otherwise positions come from torch's global RNG.
    """

    def __init__(self, source, crop_size: int = 128, length: int = 1000, resize: int | None = None,
                 seed: int = 0, fixed: bool = False, scales: tuple[int, int] | None = None,
                 augment: bool = False) -> None:
        if len(source) == 0:
            raise ValueError("RandomCrops got an empty image source")
        if scales is not None and not crop_size <= scales[0] <= scales[1]:
            raise ValueError(f"scales must be (lo, hi) with crop_size={crop_size} <= lo <= hi, got {scales}")
        self.source, self.crop_size, self.length, self.resize = source, crop_size, length, resize
        self.seed, self.fixed, self.scales, self.augment = seed, fixed, scales, augment and not fixed
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return self.length

    def _load(self, i: int) -> torch.Tensor:
        n = len(self.source)
        for k in range(n):
            j = (i + k) % n
            try:
                return self.source.load(j)
            except ImageLoadError as exc:
                name = self.source.name(j)
                if name not in self.skipped:
                    self.skipped.add(name)
                    log.warning("skipping unreadable image (%d so far): %s", len(self.skipped), exc)
        raise RuntimeError(f"none of the {n} images of the source could be read")

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i) if self.fixed else None
        if self.scales is None:
            img, window = resize_for_crop(self._load(i % len(self.source)), self.crop_size, self.resize), self.crop_size
        else:
            img = self._load(i % len(self.source))
            lo, hi = self.scales
            side = math.exp(math.log(lo) + float(torch.rand((), generator=g)) * math.log(hi / lo))
            window = min(img.shape[-2:] + (round(self.crop_size * min(img.shape[-2:]) / side),))
            window = max(window, 1)
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - window + 1, (1,), generator=g))
        left = int(torch.randint(0, w - window + 1, (1,), generator=g))
        crop = img[:, top:top + window, left:left + window]
        if window != self.crop_size:
            crop = F.interpolate(crop[None], size=(self.crop_size, self.crop_size), mode="bilinear",
                                 antialias=window > self.crop_size, align_corners=False)[0].clamp(0.0, 1.0)
        if self.augment:
            crop = dihedral(crop, int(torch.randint(0, 8, (1,), generator=g)))
        return crop.contiguous()


def dihedral(img: torch.Tensor, k: int) -> torch.Tensor:
    """One of the eight symmetries of the square: ``k`` in 0..7, bit 0 flips left-right, bit 1
    flips top-bottom, bit 2 transposes. ``img``: (C, S, S), any square size; ``k = 0`` is identity."""
    if k & 1:
        img = img.flip(-1)
    if k & 2:
        img = img.flip(-2)
    if k & 4:
        img = img.transpose(-2, -1)
    return img


class NRPDataModule(pl.LightningDataModule):
    """Random crops for NRP training and fixed crops of held-out images for validation.

    Args:
        source: an image source (``ImageFolder``, ``EmbeddedImages``, ...).
        crop_size: crop side in pixels (paper: 128).
        resize: resize every image to ``resize x resize`` first (paper: 480), or ``None``.
        batch_size: global batch, split evenly over the processes (paper: 16 over 4 GPUs).
        samples_per_epoch: crops per epoch (default: one per training image).
        val_images: images held out from training for validation (taken after a seeded shuffle); a
            source too small for it keeps a quarter of its images for validation instead (with a warning).
        val_crops: fixed validation crops, spread over the held-out images.
        scales: multi-scale crops ``(lo, hi)``, see ``RandomCrops`` (training and validation).
        augment: flips and 90 degree turns of the training crops, see ``RandomCrops`` (not in the paper).
    """

    def __init__(self, source, crop_size: int = 128, resize: int | None = None, batch_size: int = 16,
                 num_workers: int = 0, samples_per_epoch: int | None = None, val_images: int = 1,
                 val_crops: int = 8, seed: int = 0, pin_memory: bool = False,
                 scales: tuple[int, int] | None = None, augment: bool = False) -> None:
        super().__init__()
        if crop_size < 32:
            raise ValueError(f"crop_size must be >= 32 (the critic's five stride-2 blocks), got {crop_size}")
        if val_images < 0:
            raise ValueError(f"data.val_images must be >= 0, got {val_images}")
        if val_images >= len(source):
            fitted = len(source) // 4
            log.warning("data.val_images=%d would leave no training image of the %d in the source; holding out %d "
                        "(set data.val_images to choose)", val_images, len(source), fitted)
            val_images = fitted
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source, self.crop_size, self.resize, self.batch_size = source, crop_size, resize, batch_size
        self.per_process_batch_size = batch_size
        self.num_workers, self.seed, self.pin_memory = num_workers, seed, pin_memory
        order = list(range(len(source)))
        random.Random(seed).shuffle(order)
        val_idx, train_idx = sorted(order[:val_images]), sorted(order[val_images:])
        scales = tuple(scales) if scales is not None else None
        self.train_set = RandomCrops(Subset(source, train_idx), crop_size, samples_per_epoch or len(train_idx), resize, seed,
                                     scales=scales, augment=augment)
        self.val_set = (RandomCrops(Subset(source, val_idx), crop_size, val_crops, resize, seed + 1, fixed=True, scales=scales)
                        if val_images else None)

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} (global) is not divisible by {world} processes")
        self.per_process_batch_size = self.batch_size // world

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.per_process_batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                          drop_last=shuffle and len(dataset) >= self.per_process_batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []
