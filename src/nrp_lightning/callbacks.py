"""Callbacks: a progress bar in iterations of Algorithm 2, purified sample grids for the logger,
the exported purifier state dict, and a checkpoint on SIGTERM / SIGUSR1 (``CheckpointOnSignal``)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import _update_n
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid

from nrp_lightning.images import atomic_write, save_png

log = logging.getLogger(__name__)


class IterationProgressBar(TQDMProgressBar):
    """One bar over the whole run, counting iterations of Algorithm 2 (``steps``), where Lightning's
    own counts the batches of each epoch (an artefact of how many crops a source gives) and restarts
    every epoch. A resumed run starts the bar at its iteration. Validation shows its own bar, named
    for what it does (attack and purify the fixed crops)."""

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.total = trainer.max_steps // 2 if trainer.max_steps > 0 else None
        bar.initial = bar.n = trainer.global_step // 2
        bar.set_description("iterations")

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the run: nothing restarts at an epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = trainer.global_step // 2
        if self._should_update(n, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, n)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    @property
    def validation_description(self) -> str:
        return "validation"

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self.val_progress_bar.set_description(f"validation: attack and purify {len(batch)} crops")


class ResumeNotice(pl.Callback):
    """Says what a resumed run reproduces. From a checkpoint at the end of an epoch of the training
    loader the run continues bit for bit as an uninterrupted one would (the RNG states are in the
    checkpoint; tests/test_long_runs.py checks it). From one in the middle of an epoch the loader
    starts that epoch's crops afresh: the same distribution, but other crops than an uninterrupted
    run, so from there on the two differ. Lightning warns about the second case too, but counts its
    optimizer steps as batches (two a batch here), so its warning fires at the wrong checkpoints: it
    is silenced in train.py, and this line replaces it."""

    def on_train_start(self, trainer, pl_module) -> None:
        iteration, per_epoch = trainer.global_step // 2, trainer.num_training_batches
        if iteration and per_epoch not in (0, float("inf")) and iteration % per_epoch:
            log.warning("resumed at iteration %d, %d batches into an epoch of %d: the rest of this epoch's crops are "
                        "drawn afresh (same distribution, other crops than an uninterrupted run), so the run is not "
                        "bit-identical to one from here; checkpoints at epoch ends (every %d iterations) resume exactly",
                        iteration, iteration % per_epoch, per_epoch, per_epoch)


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
        self.exported_at: int | None = None  # the global step of the last export

    @rank_zero_only
    def export(self, trainer, pl_module) -> None:
        if self.exported_at == trainer.global_step:  # the last iteration's checkpoint already wrote it
            return
        state = {k: v.detach().cpu().clone() for k, v in pl_module.purifier.state_dict().items()}
        save_state_dict(state, self.path)
        self.exported_at = trainer.global_step
        log.info("exported purifier state dict to %s", self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.export(trainer, pl_module)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, pl.loggers.WandbLogger):
                    import wandb

                    artifact = wandb.Artifact(f"purifier-{logger.experiment.id}", type="model",
                                              metadata={"global_step": trainer.global_step})
                    artifact.add_file(str(self.path))
                    logger.experiment.log_artifact(artifact)


SIGNAL_CHECKPOINT = "signal.ckpt"  # in the run's checkpoints/ folder; its presence means "resume"
TIME_LIMIT_SIGNALS = ("SIGUSR1", "SIGUSR2")  # SLURM --signal=USR1@90; submitit's signal_delay_s sends USR2


class CheckpointOnSignal(pl.Callback):
    """Preemption (SIGTERM) and SLURM's warning before the time limit (SIGUSR1 from
    ``--signal=USR1@90``, or SIGUSR2 from submitit's ``signal_delay_s``): finish the current
    iteration, save ``dirpath/signal.ckpt``, and stop cleanly; after a time-limit signal under
    SLURM (``SLURM_JOB_ID`` set, ``requeue``) also ``scontrol requeue`` the job. The next
    start of the same command resumes from the newest intact checkpoint by itself
    (``train.find_resume_checkpoint``), in the same folder and W&B run; a run that finishes deletes
    ``signal.ckpt``.

    One process: checked at the end of every iteration. DDP: Lightning broadcasts rank 0's flag at
    the start of every iteration and all ranks raise ``SIGTERMException`` together; the checkpoint
    is saved then (``on_exception``)."""

    def __init__(self, dirpath: str, requeue: bool = True) -> None:
        self.path = Path(dirpath) / SIGNAL_CHECKPOINT
        self.requeue = requeue
        self._signal: str | None = None
        self._saved = False

    def on_train_start(self, trainer, pl_module) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            def on_time_limit(signum, frame) -> None:
                self._signal = signal.Signals(signum).name
                trainer._signal_connector.received_sigterm = True
            for signum in TIME_LIMIT_SIGNALS:  # replaces Lightning's and submitit's (they save mid-iteration or not at all)
                signal.signal(getattr(signal, signum), on_time_limit)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm and trainer.world_size == 1:
            from pytorch_lightning.utilities.exceptions import SIGTERMException

            self._stop(trainer)
            raise SIGTERMException()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self._stop(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.path.is_file():
            self.path.unlink()

    def _stop(self, trainer) -> None:
        if self._saved:
            return
        self._saved = True
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state (optimizers, loops): it resumes
        what = self._signal or "SIGTERM"
        if trainer.is_global_zero:
            msg = (f"{what}: saved {self.path} after iteration {trainer.global_step // 2}; run the same command "
                   f"again to continue")
            log.warning(msg)
            print(f"stopped: {msg}", file=sys.stderr, flush=True)
            job = os.environ.get("SLURM_JOB_ID")
            if os.environ.get("SLURM_ARRAY_JOB_ID"):
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
            if self._signal in TIME_LIMIT_SIGNALS and self.requeue and job:
                import subprocess

                try:
                    code = subprocess.call(["scontrol", "requeue", job])
                except FileNotFoundError:
                    code = "scontrol not found"
                log.warning("scontrol requeue %s: %s", job, "requeued" if code == 0 else f"failed ({code})")
