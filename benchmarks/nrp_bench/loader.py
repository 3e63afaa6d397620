"""The training data loader: its settings on a device, the real ``NRPDataModule`` of a config, and the
serial cost of one batch in seconds."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import hydra
import torch


def make_datamodule(cfg, source, steps: int, num_workers: int, pin_memory: bool):
    """The real NRPDataModule of the config, with enough crops for ``steps`` batches in one epoch."""
    return hydra.utils.instantiate(cfg.data, source=source, samples_per_epoch=cfg.data.batch_size * steps,
                                   num_workers=num_workers, pin_memory=pin_memory, _convert_="all")


def loader_settings(device: torch.device) -> tuple[int, bool]:
    """Workers and pinned memory: none on CPU (workers would take the cores the step uses)."""
    if device.type == "cuda":
        return min(4, max(1, (os.cpu_count() or 2) // 2)), True
    return 0, False


def loader_batch_s(cfg, source, device: torch.device, batches: int = 10) -> dict:
    """Serial cost of one batch of the real NRPDataModule loader (s), without any step."""
    workers, pin = loader_settings(device)
    dm = make_datamodule(cfg, source, batches + 1, workers, pin)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return {"batch_s": (time.perf_counter() - start) / batches, "num_workers": workers, "pin_memory": pin}


def jpeg_loader_batch_s(source, batch: int = 16, crop: int = 128, resize: int = 480, batches: int = 5) -> dict:
    """Serial cost (s) of one batch the way COCO training loads it: JPEG decode, resize to
    ``resize`` x ``resize``, random ``crop`` (conf/data/coco.yaml), through the real NRPDataModule
    and ImageFolder, on the embedded photos written as JPEG files. One process, no workers."""
    from PIL import Image

    from nrp_lightning.data import ImageFolder, NRPDataModule
    from nrp_lightning.images import to_uint8

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(len(source)):
            Image.fromarray(to_uint8(source.load(i))).save(Path(tmp) / f"{i}.jpg", quality=90)
        dm = NRPDataModule(ImageFolder(tmp), crop_size=crop, resize=resize, batch_size=batch, num_workers=0,
                           samples_per_epoch=batch * (batches + 1), val_images=1)
        it = iter(dm.train_dataloader())
        next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = (time.perf_counter() - start) / batches
    return {"batch_s": seconds, "batch": batch, "crop": crop, "resize": resize, "images": len(source)}
