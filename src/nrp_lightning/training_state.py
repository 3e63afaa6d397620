"""What a training run carries besides its weights: every rank's random state, and the guard that
skips non-finite steps.

Both live in the checkpoint under their own keys (``nrp_rng_states``, ``nrp_rng_states_per_rank``,
``nrp_nonfinite``), so that a resumed run continues bit for bit and a diverging one stops with
the last finite weights. ``NRPModule`` holds one of each and calls them from its hooks; neither
knows anything of NRP.
"""
from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients for more steps in a row than allowed."""


class RNGStates:
    """Seeds a run and carries every rank's random state through its checkpoints.

    Each rank draws its own SSP random starts and crops (``seed + global_rank``); a checkpoint holds
    all ranks' states (rank 0 writes what the ranks gathered), and each takes its own back on resume."""

    def __init__(self) -> None:
        self._to_restore: dict | None = None

    def start(self, seed: int) -> None:
        """At fit start: seed python, numpy and torch, or restore the state a checkpoint brought."""
        if self._to_restore is None:
            pl.seed_everything(seed, workers=True, verbose=False)
        else:
            set_rng_states(self._to_restore)
            self._to_restore = None

    def save(self, checkpoint: dict) -> None:
        states = get_rng_states()
        checkpoint["nrp_rng_states"] = states
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, states)
            checkpoint["nrp_rng_states_per_rank"] = per_rank

    def load(self, checkpoint: dict, rank: int) -> None:
        per_rank = checkpoint.get("nrp_rng_states_per_rank") or []
        self._to_restore = per_rank[rank] if rank < len(per_rank) else checkpoint.get("nrp_rng_states")


class DivergenceGuard:
    """Skips an optimizer step whose loss or gradient norm is not finite and stops a run that keeps
    producing them.

    A skipped step leaves weights and Adam state untouched. With fused Adam the skip happens on the
    device (the ``found_inf`` input GradScaler uses): no host-device sync; other optimizers read the
    flag on the host. The counters (skipped iterations in all, and in a row) stay on the device and
    are read only every ``log_every_n_steps`` iterations, when more than ``max_streak`` in a row
    raise ``DivergenceError``. ``enabled=False`` steps every time and never stops the run."""

    def __init__(self, enabled: bool = True, max_streak: int = 30) -> None:
        self.enabled, self.max_streak = enabled, max_streak
        self.counts: dict = {"total": 0, "streak": 0}  # int or 0-dim device tensors

    def step(self, optimizer, net: nn.Module, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``optimizer`` unless ``loss`` or the gradient norm of ``net`` is not finite.
        Returns the gradient norm and the non-finite flag, both 0-dim device tensors."""
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norm = total_norm(grads) if grads else loss.new_zeros(())
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        inner = getattr(optimizer, "optimizer", optimizer)  # under the LightningOptimizer wrapper
        if not self.enabled:
            optimizer.step()
        elif inner.defaults.get("fused"):
            inner.found_inf = bad.float()  # the fused kernel skips params, moments and step count
            try:
                optimizer.step()
            finally:
                del inner.found_inf
        else:  # non-fused optimizers cannot skip on the device: one host sync
            if bad.item():
                optimizer.zero_grad(set_to_none=True)  # Adam leaves parameters without gradient alone
            optimizer.step()  # still called, so Lightning's step count (and max_steps) stays right
        return norm.detach(), bad

    def count(self, bad: torch.Tensor, trainer: pl.Trainer | None) -> None:
        """Add this iteration's flag (on the device) and, every ``log_every_n_steps`` iterations,
        stop the run if the streak is longer than allowed."""
        total, streak = (torch.as_tensor(self.counts[k], device=bad.device) for k in ("total", "streak"))
        self.counts = {"total": total + bad.long(), "streak": (streak + 1) * bad.long()}
        iteration = trainer.global_step // 2 if trainer is not None else 0
        every = max(trainer.log_every_n_steps, 1) if trainer is not None else 1
        if self.enabled and iteration % every == 0:
            streak = int(self.counts["streak"])
            if streak > self.max_streak:
                callback = trainer.checkpoint_callback if trainer is not None else None
                last = getattr(callback, "last_model_path", "") or "none written yet"
                raise DivergenceError(
                    f"training diverged: {streak} iterations in a row up to iteration {iteration} had a non-finite loss "
                    f"or gradient (more than module.max_nonfinite_steps={self.max_streak}); those "
                    f"steps were skipped, so the last checkpoint holds the last finite weights: {last}")

    def save(self, checkpoint: dict) -> None:
        checkpoint["nrp_nonfinite"] = {k: int(v) for k, v in self.counts.items()}

    def load(self, checkpoint: dict) -> None:
        self.counts = dict(checkpoint.get("nrp_nonfinite", {"total": 0, "streak": 0}))


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, on their device (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


def get_rng_states() -> dict:
    """python, numpy, torch (and CUDA, once initialised) random states as checkpoint-safe tensors and lists."""
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _python_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    meta = states["numpy_meta"]
    np.random.set_state(("MT19937", states["numpy_key"].numpy().astype(np.uint32), meta[0], meta[1], meta[2]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
