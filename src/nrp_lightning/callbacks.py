"""Callbacks: purified sample grids for the logger, and the exported purifier state dict."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid

from nrp_lightning.images import atomic_write, save_png

log = logging.getLogger(__name__)


def sample_grid(clean: torch.Tensor, adversarial: torch.Tensor, purified: torch.Tensor, max_images: int = 8) -> torch.Tensor:
    """``(3, H', W')`` grid: rows clean / adversarial / purified, ``max_images`` columns."""
    n = min(max_images, clean.shape[0])
    rows = [t[:n].detach().float().cpu().clamp(0, 1).contiguous() for t in (clean, adversarial, purified)]
    return make_grid(torch.cat(rows), nrow=n, padding=2, pad_value=1.0)


class SampleGrids(pl.Callback):
    """After each validation, saves ``samples/step_XXXXXX.png`` (clean / SSP / purified rows of
    the first validation batch) in the run folder and sends it to W&B or TensorBoard if in use."""

    def __init__(self, dirpath: str, max_images: int = 8) -> None:
        self.dirpath, self.max_images = Path(dirpath), max_images

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero or not outputs:
            return
        grid = sample_grid(outputs["clean"], outputs["adversarial"], outputs["purified"], self.max_images)
        path = save_png(grid, self.dirpath / f"step_{trainer.global_step // 2:06d}.png")
        caption = "rows: clean / adversarial / purified"
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                logger.log_image("val/samples", [str(path)], caption=[caption])
            elif isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.experiment.add_image("val/samples", grid, trainer.global_step)


def save_state_dict(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file and a rename (no half-written file after a kill)."""
    with atomic_write(path) as f:
        torch.save(state, f)
    return Path(path)


class ExportPurifier(pl.Callback):
    """Writes the purifier as a plain state dict (the official ``NRP.pth`` key layout) to
    ``path`` at the end of training, and at every checkpoint so a killed run still has one."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    @rank_zero_only
    def export(self, pl_module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.purifier.state_dict().items()}
        save_state_dict(state, self.path)
        log.info("exported purifier state dict to %s", self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.export(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.export(pl_module)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, pl.loggers.WandbLogger):
                    import wandb

                    artifact = wandb.Artifact(f"purifier-{logger.experiment.id}", type="model",
                                              metadata={"global_step": trainer.global_step})
                    artifact.add_file(str(self.path))
                    logger.experiment.log_artifact(artifact)
