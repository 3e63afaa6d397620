"""A callback for the DDP tests: every rank saves its purifier parameters at the end of training."""
from pathlib import Path

import pytorch_lightning as pl
import torch


class SaveRankParameters(pl.Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in pl_module.purifier.state_dict().items()}
        torch.save({"state": state, "world_size": trainer.world_size, "first_batch": pl_module.first_batch},
                   self.dirpath / f"rank{trainer.global_rank}.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            pl_module.first_batch = batch.detach().cpu()
