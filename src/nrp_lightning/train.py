"""Train a purifier: ``python train.py experiment=NAME [overrides]`` (or ``nrp-train``).

Builds every object from the Hydra config (``conf/``), runs Algorithm 2 with Lightning, writes
``config, logs, checkpoints/, samples/, purifier.pth`` into the run folder and, with
``report=true``, prints the held-out purification table.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import NoReturn

import hydra
import pytorch_lightning as pl
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nrp_lightning import fast_paths
from nrp_lightning.callbacks import SIGNAL_CHECKPOINT
from nrp_lightning.config import BadConfigError, conf_dir, is_number, register_resolvers
from nrp_lightning.lit_module import DivergenceError, NRPModule

log = logging.getLogger(__name__)

# Expected here, not problems: F is frozen in eval mode; checkpoints hold the state after the step.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
# Lightning's mid-epoch resume warning counts optimizer steps as batches (two a batch here), so it fires at
# the wrong checkpoints; callbacks.ResumeNotice says the same thing where it is true.
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


class RunExistsError(RuntimeError):
    """The run folder already holds checkpoints and neither resume nor a new run name was asked."""


class MissingResourceError(RuntimeError):
    """Data, weights or devices the run needs are not on this machine; the message names the fix."""


HYDRA_OWN_FILES = {".hydra", "train.log"}  # what a run folder holds before training writes anything


def check_devices(cfg: DictConfig) -> None:
    """``MissingResourceError`` when the trainer asks for more CUDA devices than there are."""
    import torch

    accelerator, devices = str(cfg.trainer.get("accelerator", "auto")), cfg.trainer.get("devices", 1)
    have = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > have:
        raise MissingResourceError(
            f"trainer.devices={devices} asks for {devices} CUDA device(s) and this machine has {have}: add "
            "trainer=cpu trainer.devices=1 to run on the CPU (experiment=nrp_cpu is the recipe sized for one)")


def instantiate_data(cfg: DictConfig):
    """The datamodule of ``cfg.data``; a source without images is a ``MissingResourceError`` that names the key."""
    from hydra.errors import InstantiationException

    from nrp_lightning.data import NoImagesError

    try:
        return hydra.utils.instantiate(cfg.data, _convert_="all")
    except InstantiationException as exc:
        if not isinstance(exc.__cause__, NoImagesError):
            raise
        raise MissingResourceError(
            f"{exc.__cause__}: point data.source.root at a folder of images (data=coco reads it from $COCO_DIR: "
            "COCO_DIR=/path/to/coco/train2017 python train.py experiment=nrp_full)") from None


def remove_unused_run_dir(run_dir: str | os.PathLike) -> None:
    """Remove the run folder of a run that stopped before training wrote anything into it (it holds
    only Hydra's config and log), so a failed start leaves no new folder in ``outputs/``."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_OWN_FILES:
        logging.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)


def build_module(cfg: DictConfig) -> NRPModule:
    """NRPModule from the ``model`` (purifier), ``critic``, ``backbone``, ``attack``, ``loss`` and
    ``module`` groups and the ``val_attack`` node."""
    inst = lambda node: hydra.utils.instantiate(node, _convert_="all")  # noqa: E731  (plain Python values)
    purifier = inst(cfg.model)
    if cfg.get("init_purifier"):
        start_from(purifier, cfg.init_purifier)
    return NRPModule(
        purifier=purifier, critic=inst(cfg.critic), features=inst(cfg.backbone), attack=inst(cfg.attack),
        val_attack=inst(cfg.val_attack),
        **OmegaConf.to_container(cfg.loss, resolve=True), **OmegaConf.to_container(cfg.module, resolve=True), seed=cfg.seed,
    )


def start_from(purifier, path: str) -> None:
    """Fine-tune: copy the weights of the purifier file ``path`` (``"default"``: the one shipped
    with the package) into ``purifier``, whose architecture and size must match."""
    from nrp_lightning.purify import load_purifier

    source = load_purifier(None if path == "default" else path)
    try:
        purifier.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError:
        raise ValueError(f"init_purifier={path} holds a {source.spec}, which does not match the model config "
                         f"{type(purifier).__name__}; pick the model group that matches it, or another file") from None
    log.info("purifier starts from %s (%s)", source.path, source.spec)


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def is_complete_checkpoint(path: Path) -> bool:
    """A torch zip checkpoint whose archive is intact (a kill mid-write leaves a torn one)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def checkpoints_in(run_dir: str | os.PathLike) -> list[Path]:
    """The ``*.ckpt`` files of ``run_dir/checkpoints``, newest first (``[]`` when there are none)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    return sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if ckpt_dir.is_dir() else []


def stopped_by_signal(run_dir: str | os.PathLike) -> bool:
    """The run in ``run_dir`` was stopped by SIGTERM or SIGUSR1 (``CheckpointOnSignal`` left an intact
    ``checkpoints/signal.ckpt``): its next start resumes without ``resume=true``."""
    path = Path(run_dir) / "checkpoints" / SIGNAL_CHECKPOINT
    return path.is_file() and is_complete_checkpoint(path)


def refuse_fresh_run_over_checkpoints(cfg: DictConfig, run_dir: str | os.PathLike) -> None:
    """A fresh run (neither ``resume`` nor ``ckpt_path``) in a folder that already holds checkpoints
    is refused with ``RunExistsError``, so nothing is overwritten by accident; a folder whose run
    was stopped by a signal is resumed instead."""
    if not cfg.resume and not cfg.ckpt_path and checkpoints_in(run_dir) and not stopped_by_signal(run_dir):
        raise RunExistsError(
            f"{Path(run_dir) / 'checkpoints'} already holds checkpoints of an earlier run. Add resume=true to "
            f"continue it, or run_name=<new name> to start another run beside it.")


class RefuseFreshRunOverCheckpoints(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): the same refusal, before Hydra writes this run's
    ``.hydra/`` config into the folder (it would replace the earlier run's), as one line on stderr
    and exit status 2 rather than a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            refuse_fresh_run_over_checkpoints(config, config.hydra.run.dir)
        except RunExistsError as exc:
            exit_usage_error("refused", exc)


def exit_usage_error(label: str, exc: Exception) -> NoReturn:
    """``label: exc`` as one line on stderr, then exit status 2 (a usage error, as in the other
    commands): a refused run (``refused``) or a bad config value (``bad config``)."""
    print(f"{label}: {exc}", file=sys.stderr)
    sys.exit(2)


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to continue from: ``ckpt_path`` if given; with ``resume=true``, or after a
    stop by signal (a requeued or restarted job), the newest intact checkpoint of the run folder; ``None`` for a fresh run (refused where checkpoints exist)."""
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={path} does not exist")
        return str(path)
    refuse_fresh_run_over_checkpoints(cfg, cfg.paths.run_dir)
    if not cfg.resume and not stopped_by_signal(cfg.paths.run_dir):
        return None
    for path in checkpoints_in(cfg.paths.run_dir):
        if is_complete_checkpoint(path):
            log.info("resuming from %s", path)
            return str(path)
        log.warning("ignoring torn checkpoint %s", path)
    log.warning("resume=true but no checkpoint in %s: starting a fresh run", Path(cfg.paths.run_dir) / "checkpoints")
    return None


def run_config(cfg: DictConfig) -> dict:
    """The resolved config of this run as plain Python (without Hydra's own node), for loggers."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def pin_ddp_children_to_this_job() -> None:
    """Lightning's DDP launcher starts the other ranks by re-running ``sys.argv`` with
    ``hydra.run.dir=<HydraConfig run.dir>``. Under ``-m`` that would re-run the whole sweep in
    every rank and write outside this job's folder, so point both at this job only."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    hc = HydraConfig.get()
    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir


def leave_distributed(environ: dict) -> None:
    """After a DDP fit: leave the process group and drop the variables Lightning's launcher set
    (LOCAL_RANK, MASTER_PORT, ...), so the next job of a multirun launches its own ranks."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)


def train(cfg: DictConfig) -> dict:
    """Runs one training job; returns the run folder, the exported purifier and the report."""
    register_resolvers()
    steps = cfg.steps
    if not (is_number(steps) and isinstance(steps, int) and steps >= 1):
        raise BadConfigError(f"steps must be a whole number >= 1 (iterations of Algorithm 2), got {steps!r}")
    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = find_resume_checkpoint(cfg)
    check_devices(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate_data(cfg)
    module = build_module(cfg)
    pin_ddp_children_to_this_job()
    trainer = build_trainer(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(run_config(cfg))
    environ = dict(os.environ)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        leave_distributed(environ)
    result = {"run_dir": str(run_dir), "purifier": str(run_dir / "purifier.pth"), "global_step": trainer.global_step}
    if cfg.report and trainer.is_global_zero and datamodule.val_set is not None:
        from nrp_lightning.report import purification_report

        result["report"] = purification_report(module, datamodule, run_dir)
    return result


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    """nrp-train: train an NRP purifier (Algorithm 2). Hydra overrides, e.g. experiment=demo steps=50."""
    from hydra.errors import InstantiationException

    from nrp_lightning.weights import WeightsNotFoundError

    fast_paths.tune_allocator()
    try:
        try:
            train(cfg)
        except InstantiationException as exc:  # a weights file that cannot be had, raised inside a _target_
            raise exc.__cause__ if isinstance(exc.__cause__, WeightsNotFoundError) else exc from None
    except RunExistsError as exc:  # a multirun job (single runs are refused earlier, by the callback)
        exit_usage_error("refused", exc)
    except BadConfigError as exc:
        remove_unused_run_dir(cfg.paths.run_dir)
        exit_usage_error("bad config", exc)
    except (MissingResourceError, WeightsNotFoundError) as exc:
        remove_unused_run_dir(cfg.paths.run_dir)
        exit_usage_error("missing", exc)
    except DivergenceError as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(3)


register_resolvers()

if __name__ == "__main__":
    main()
