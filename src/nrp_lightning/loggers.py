"""Weights & Biases that never blocks a run: online when it can be, offline (sync later) otherwise."""
from __future__ import annotations

import logging
import netrc
import os
import socket
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str = WANDB_HOST, port: int = 443, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wandb_mode() -> str:
    """``$WANDB_MODE`` if set; else ``online`` with an API key and a reachable server, else ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if not _has_api_key():
        log.warning("W&B: no API key (WANDB_API_KEY or `wandb login`): logging offline; `wandb sync` the run later")
        return "offline"
    if not _reachable():
        log.warning("W&B: %s unreachable: logging offline; `wandb sync` the run later", WANDB_HOST)
        return "offline"
    return "online"


def sweep_group(run_name: str) -> str:
    """All jobs of one Hydra multirun share a W&B group (the sweep folder); a single run is its own."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return "-".join(Path(hc.sweep.dir).parts[-2:])  # e.g. demo-2026-11-24_14-07-24
    except (ImportError, ValueError):
        pass
    return run_name


def wandb_logger(project: str, name: str, save_dir: str, tags: list[str] | None = None, group: str | None = None,
                 log_model: bool = False, **kwargs):
    """A ``WandbLogger`` in the mode ``wandb_mode()`` picks, grouped by sweep, tagged, with the run id
    of ``save_dir`` (``run_id``), so a resumed or requeued run logs into the same W&B run."""
    from pytorch_lightning.loggers import WandbLogger

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("id", run_id(save_dir))
    kwargs.setdefault("resume", "allow")
    return WandbLogger(project=project, name=name, save_dir=save_dir, tags=[str(t) for t in tags or []],
                       group=group or sweep_group(name), mode=wandb_mode(), log_model=log_model, **kwargs)


def run_id(save_dir: str | os.PathLike) -> str:
    """The W&B run id of a run folder: drawn at its first start and kept in ``wandb_id.txt``."""
    path = Path(save_dir) / "wandb_id.txt"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new = uuid.uuid4().hex[:12]
    path.write_text(new + "\n")
    return new
