"""The whole training step, the real ``training_step`` driven by ``pl.Trainer.fit``, timed batch by
batch by a callback. Times in seconds, memory in MiB."""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
import warnings
from typing import Callable

import pytorch_lightning as pl
import torch

from nrp_bench.flops import StepFlopCounter
from nrp_bench.loader import loader_settings, make_datamodule
from nrp_bench.probes import MemoryProbe, summarize, sync
from nrp_bench.profiles import Variant, step_config
from nrp_lightning.train import build_module


class StepTimer(pl.Callback):
    """Times each training batch (``on_train_batch_start`` -> ``on_train_batch_end``, synchronised),
    its peak memory, and the gap between batches (data loading and loop bookkeeping).

    Batch 0 runs under the FLOP counter when ``count_flops`` (not timed as a warm-up); on CUDA one
    batch (``check_syncs_at``) runs with ``torch.cuda.set_sync_debug_mode('warn')`` and counts the
    host-device synchronisations it reports. ``between(batch_idx)`` runs after each batch, outside
    both the step and the gap (the parts of the step are timed there, interleaved with the steps)."""

    def __init__(self, device: torch.device, count_flops: bool, check_syncs_at: int | None,
                 between: Callable[[int], None] | None = None) -> None:
        self.device, self.count_flops, self.check_syncs_at, self.between = device, count_flops, check_syncs_at, between
        self.steps: list[tuple[float, dict]] = []
        self.gaps: list[float] = []
        self.flops: int | str = "na"
        self.syncs: int | str = "na"
        self._start = self._last_end = 0.0
        self._stack = contextlib.ExitStack()
        self._counter: StepFlopCounter | None = None
        self._caught: list | None = None
        self._mem: MemoryProbe | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self._mem = MemoryProbe(self.device).__enter__()
        self._start = time.perf_counter()
        if self._last_end:
            self.gaps.append(self._start - self._last_end)
        self._stack = contextlib.ExitStack()
        if batch_idx == 0 and self.count_flops:
            self._counter = self._stack.enter_context(StepFlopCounter())
        if batch_idx == self.check_syncs_at:
            self._caught = self._stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            self._stack.callback(torch.cuda.set_sync_debug_mode, "default")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stack.close()
        sync(self.device)
        seconds = time.perf_counter() - self._start
        self._mem.__exit__(None, None, None)
        self.steps.append((seconds, self._mem.result))
        if self._counter is not None:
            self.flops, self._counter = int(self._counter.get_total_flops()), None
        if self._caught is not None:
            self.syncs = sum("synchroniz" in str(w.message).lower() for w in self._caught)
            self._caught = None
        if self.between is not None:
            self.between(batch_idx)
        self._last_end = time.perf_counter()


def trainer_step(cfg, variant: Variant, device: torch.device, source, warmup: int, reps: int,
                 flops: bool = True, between: Callable[[int], None] | None = None) -> dict:
    """The real ``training_step`` through ``pl.Trainer.fit``: one FLOP-counted batch (when
    ``flops`` and not compiled), ``warmup`` batches, then ``reps`` timed batches.

    Returns the median step time (s), the median gap between steps (s) and its share of
    gap + step, the first batch's time (s; with compile it holds the compilation), FLOPs of one
    step, host-device syncs of one step (CUDA) and the largest per-step peak memory (MiB).
    ``between(batch_idx)`` is called after every batch (see ``StepTimer``)."""
    count = flops and not variant.compile
    skip = warmup + int(count)
    steps = skip + reps
    torch.manual_seed(0)
    module = build_module(cfg)
    workers, pin = loader_settings(device)
    datamodule = make_datamodule(cfg, source, steps, workers, pin)
    timer = StepTimer(device, count_flops=count, check_syncs_at=skip - 1 if device.type == "cuda" and warmup else None,
                      between=between)
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu",
                         devices=[device.index or 0] if device.type == "cuda" else 1, precision=variant.precision,
                         max_steps=2 * steps, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, callbacks=[timer],
                         benchmark=device.type == "cuda", default_root_dir=cfg.paths.run_dir)
    trainer.fit(module, datamodule=datamodule)
    if len(timer.steps) != steps:
        raise RuntimeError(f"expected {steps} training steps, the Trainer ran {len(timer.steps)}")
    timed = summarize(timer.steps[skip:])
    gap_s = statistics.median(timer.gaps[skip - 1:]) if timer.gaps[skip - 1:] else 0.0
    return {"step_s": timed["median_s"], "min_step_s": timed["min_s"], "reps": reps, "first_step_s": timer.steps[0][0],
            "between_steps_s": gap_s, "loader_share": gap_s / (gap_s + timed["median_s"]), "flops": timer.flops,
            "host_syncs_in_step": timer.syncs,
            **{k: timed[k] for k in ("host_peak_mib", "host_delta_mib", "device_peak_mib")}}


def eager_step_flops(cfg_overrides: tuple[str, ...], variant: Variant, batch: int, crop: int, device: torch.device,
                     source) -> int | str:
    """FLOPs of one real training step of ``variant`` without torch.compile (the same math: the
    FLOP counter cannot run inside compiled code), from one FLOP-counted Trainer step."""
    eager = dataclasses.replace(variant, compile=False)
    cfg = step_config(cfg_overrides, eager, batch, crop)
    return trainer_step(cfg, eager, device, source, warmup=0, reps=1, flops=True)["flops"]
