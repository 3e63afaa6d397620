"""Benchmark of NRP training and purification.

    python benchmarks/bench.py [--device auto|cpu|cuda] [--quick | --full] [--out DIR] [--threads N]

What it measures (issue 7), always on the project's own code:

* the parts of one training step, each in isolation, called exactly as ``NRPModule.training_step``
  calls them (``find_adversaries``, purifier + ``purifier_loss`` + backward + Adam step,
  ``critic_loss`` + backward + Adam step, ``purification_metrics``), and the whole step driven
  through a real ``pl.Trainer`` (``StepTimer`` callback: ``on_train_batch_start`` ->
  ``on_train_batch_end``); the ratio whole / sum of the summed parts is our overhead;
* FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``) and, on CUDA, MFU against the
  device's measured bf16 matmul peak;
* the fast paths, one Trainer run each (bf16 autocast, channels_last, torch.compile with its
  compile time apart, fused Adam, activation checkpointing), with the loader's share of the step;
* how the step grows with batch size, crop size and SSP steps;
* purification throughput of the full RRDB purifier at 224 px, and one 4000x3000 photo in tiles;
* peak memory of each: host (peak RSS, reset per measurement through /proc/self/clear_refs) and
  device (``torch.cuda.max_memory_allocated``).

Times are medians over ``reps`` runs after ``warmup`` runs, with ``torch.cuda.synchronize`` around
each run on CUDA; seeds are fixed. Writes ``bench.json`` and ``bench.md`` under ``--out`` and
prints the table; the last line is::

    bench: device=<cpu|cuda name> step_overhead_ratio=<x> step_s=<s> mfu=<f or na> purify_224_img_per_s=<y>
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from nrp_bench.flops import StepFlopCounter, count_flops, measure_bf16_peak_tflops, mfu  # noqa: E402
from nrp_bench.machine import CpuLoad, device_name, log, machine_info, sync  # noqa: E402
from nrp_bench.probes import MemoryProbe, summarize, time_fn, timed_call, warm_up  # noqa: E402
from nrp_lightning.config import compose  # noqa: E402
from nrp_lightning.lit_module import NRPModule  # noqa: E402
from nrp_lightning.models.purifier import RRDBPurifier, purify  # noqa: E402
from nrp_lightning.train import build_module  # noqa: E402

SCHEMA = "nrp-bench/1"
FULL_RRDB = (64, 23, 32)  # the paper's purifier: nf, nb, gc
SMALL_RRDB = (32, 2, 16)  # conf/model/rrdb_small.yaml

# Every benchmark config uses random feature-extractor weights: timing does not depend on them and
# VGG16 ImageNet weights cannot be had offline (DESIGN.md).
COMMON = ("backbone.pretrained=false",)
# experiment=demo: RRDB nf=32 nb=2 gc=16, VGG critic nf=16, MobileNetV2[:7], SSP T=5, batch 8, 64 px.
SMALL_STEP = ("experiment=demo",) + COMMON
# The paper's step (conf/experiment/nrp_full.yaml) on the embedded photos instead of COCO.
FULL_STEP = ("experiment=nrp_full", "data=embedded") + COMMON  # variants set module.channels_last
TINY_STEP = ("experiment=demo", "model.nf=8", "model.nb=1", "model.gc=4", "critic.nf=4", "critic.fc_dim=8",
             "attack.steps=2", "backbone.layer=4", "data.source.names=[astronaut,chelsea,coffee]",
             "data.val_images=1") + COMMON


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Variant:
    """One combination of the fast-path switches (each maps to a config key or Trainer flag)."""

    bf16: bool = False  # Trainer precision=bf16-mixed (autocast)
    channels_last: bool = False  # module.channels_last
    compile: bool = False  # module.compile (purifier, critic, features)
    fused_adam: bool = True  # module.fused_adam (fused kernels where torch has them for the device)
    act_ckpt: bool = False  # model.activation_checkpointing (RRDB trunk)

    def overrides(self) -> list[str]:
        return [f"module.channels_last={self.channels_last}", f"module.compile={self.compile}",
                f"module.fused_adam={self.fused_adam}", f"model.activation_checkpointing={self.act_ckpt}"]

    @property
    def precision(self) -> str:
        return "bf16-mixed" if self.bf16 else "32-true"


VARIANTS = {
    "fp32": Variant(),
    "bf16": Variant(bf16=True),
    "channels_last": Variant(channels_last=True),
    "compile": Variant(compile=True),
    "no_fused_adam": Variant(fused_adam=False),
    "act_ckpt": Variant(act_ckpt=True),
    "fast": Variant(bf16=True, channels_last=True, compile=True),
}


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run. Times in seconds, sizes in pixels."""

    name: str
    step: tuple[str, ...]  # Hydra overrides of the step that is broken into parts
    batch: int
    crop: int
    warmup: int
    reps: int
    variants: tuple[str, ...]  # fast paths timed as whole steps
    scaling: dict[str, tuple[int, ...]]  # axis -> values (batch, crop, ssp_steps)
    purify_model: tuple[int, int, int]  # nf, nb, gc of the purifier timed at 224 px
    purify_batch: int
    purify_reps: int
    photo: tuple[int, int]  # (height, width) of the large photo
    photo_model: tuple[int, int, int]
    tile: int
    full_step: tuple[str, ...] | None = None  # a full-size step at batch 1 (memory and act. ckpt)
    full_step_crop: int = 128


def profile_for(device: torch.device, quick: bool, full: bool) -> Profile:
    """``quick``: tiny sizes for the smoke test; ``full``: the paper's step (GPU work); otherwise
    sizes that finish in about 10 minutes on 2 CPU cores (and the same sizes on a GPU)."""
    cuda = device.type == "cuda"
    gpu_variants = ("fp32", "bf16", "channels_last", "compile", "no_fused_adam", "act_ckpt", "fast")
    if quick:
        return Profile("quick", TINY_STEP, batch=2, crop=32, warmup=1, reps=2,
                       variants=("fp32", "act_ckpt"), scaling={"batch": (3,), "crop": (48,), "ssp_steps": (1,)},
                       purify_model=(8, 1, 4), purify_batch=1, purify_reps=2,
                       photo=(192, 256), photo_model=(8, 1, 4), tile=128)
    if full:
        return Profile("full", FULL_STEP, batch=16, crop=128, warmup=3 if cuda else 1, reps=10 if cuda else 2,
                       variants=gpu_variants if cuda else ("fp32", "act_ckpt"),
                       scaling={"batch": (4, 8, 16), "crop": (64, 128), "ssp_steps": (1, 10)},
                       purify_model=FULL_RRDB, purify_batch=32 if cuda else 1, purify_reps=10 if cuda else 3,
                       photo=(3000, 4000), photo_model=FULL_RRDB, tile=512)
    return Profile("default", SMALL_STEP, batch=8, crop=64, warmup=2 if not cuda else 5, reps=5 if not cuda else 20,
                   variants=gpu_variants if cuda else ("fp32", "bf16", "channels_last", "compile", "no_fused_adam", "act_ckpt"),
                   scaling={"batch": (2, 4, 16), "crop": (32, 96, 128), "ssp_steps": (1, 10)},
                   purify_model=FULL_RRDB, purify_batch=16 if cuda else 1, purify_reps=10 if cuda else 2,
                   photo=(3000, 4000), photo_model=FULL_RRDB if cuda else SMALL_RRDB, tile=512,
                   full_step=FULL_STEP)


# --------------------------------------------------------------------------- building the step
def step_config(profile_overrides: tuple[str, ...], variant: Variant, batch: int, crop: int,
                extra: tuple[str, ...] = (), run_dir: str = "/tmp/nrp-bench"):
    """The composed Hydra config of the benchmarked step (``python train.py <overrides>``)."""
    overrides = [*profile_overrides, *variant.overrides(), f"data.batch_size={batch}", f"data.crop_size={crop}", *extra]
    return compose(overrides, run_dir=run_dir)


def autocast(variant: Variant, device: torch.device):
    """The autocast Lightning's bf16-mixed precision plugin enters around training_step."""
    if variant.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepared_module(cfg, device: torch.device) -> NRPModule:
    """The module as the Trainer would set it up: on the device, ``configure_model`` applied."""
    torch.manual_seed(0)
    module = build_module(cfg).to(device)
    module.configure_model()
    module.train()
    return module


@contextlib.contextmanager
def frozen(net: torch.nn.Module) -> Iterator[None]:
    """What ``toggle_optimizer`` does to the other optimizer's parameters during a network's step."""
    flags = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(net.parameters(), flags):
            p.requires_grad_(flag)


def step_parts(module: NRPModule, x: torch.Tensor, variant: Variant, device: torch.device) -> dict[str, tuple[Callable, bool]]:
    """The parts of ``training_step``, each a re-runnable callable, and whether it is summed.

    Summed parts cover the step's work once, in its order: F(x) (no grad), SSP with T steps,
    the generator update (purifier forward, Eq. 8 with its critic and feature terms, backward,
    Adam step), the critic update and the logged metrics. Breakdown parts (not summed) time pieces
    of those: one SSP iteration, the purifier network alone and the feature loss alone."""
    opt_purifier, opt_critic = module.configure_optimizers()
    x = module._prepare(x)
    with torch.no_grad(), autocast(variant, device):
        feat_clean = module.features(x)
    with autocast(variant, device):
        x_adv = module.find_adversaries(x)
        with torch.no_grad():
            purified_fixed = module.purifier(x_adv)

    def features_clean():
        with torch.no_grad(), autocast(variant, device):
            return module.features(x)

    def ssp():
        with autocast(variant, device):
            return module.find_adversaries(x)

    attack_one = dataclasses.replace(module.attack, steps=1) if dataclasses.is_dataclass(module.attack) else None

    def ssp_one_iteration():
        attack, module.attack = module.attack, attack_one
        try:
            return ssp()
        finally:
            module.attack = attack

    def generator_step():
        with frozen(module.critic):
            with autocast(variant, device):
                purified = module.purifier(x_adv)
                terms = module.purifier_loss(x, purified, feat_clean)
            opt_purifier.zero_grad(set_to_none=True)
            terms["loss_purifier"].backward()
            opt_purifier.step()

    def critic_step():
        with frozen(module.purifier):
            with autocast(variant, device):
                loss = module.critic_loss(x, purified_fixed)
            opt_critic.zero_grad(set_to_none=True)
            loss.backward()
            opt_critic.step()

    def metrics():
        with torch.no_grad(), autocast(variant, device):
            return module.purification_metrics(x, x_adv, purified_fixed, feat_clean)

    def purifier_fwd_bwd():
        with frozen(module.critic):
            with autocast(variant, device):
                out = module.purifier(x_adv)
            out.float().mean().backward()

    def feature_loss_fwd_bwd():
        from nrp_lightning.losses import feature_loss

        purified = purified_fixed.detach().requires_grad_(True)
        with autocast(variant, device):
            loss = feature_loss(module.features(purified), feat_clean)
        loss.backward()

    parts = {
        "features_clean": (features_clean, True),
        "ssp": (ssp, True),
        "generator_step": (generator_step, True),
        "critic_step": (critic_step, True),
        "metrics": (metrics, True),
        "purifier_fwd_bwd": (purifier_fwd_bwd, False),
        "feature_loss_fwd_bwd": (feature_loss_fwd_bwd, False),
    }
    if attack_one is not None:
        parts["ssp_1_iteration"] = (ssp_one_iteration, False)
    return parts


# --------------------------------------------------------------------------- whole step in a Trainer
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


def make_datamodule(cfg, source, steps: int, num_workers: int, pin_memory: bool):
    """The real NRPDataModule of the config, with enough crops for ``steps`` batches in one epoch."""
    return hydra.utils.instantiate(cfg.data, source=source, samples_per_epoch=cfg.data.batch_size * steps,
                                   num_workers=num_workers, pin_memory=pin_memory, _convert_="all")


def loader_settings(device: torch.device) -> tuple[int, bool]:
    """Workers and pinned memory: none on CPU (workers would take the cores the step uses)."""
    if device.type == "cuda":
        return min(4, max(1, (os.cpu_count() or 2) // 2)), True
    return 0, False


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


# --------------------------------------------------------------------------- purification
def purifier_of(nf_nb_gc: tuple[int, int, int], device: torch.device, channels_last: bool) -> RRDBPurifier:
    torch.manual_seed(0)
    net = RRDBPurifier(*nf_nb_gc).to(device).eval()
    return net.to(memory_format=torch.channels_last) if channels_last else net


def purify_flops(model: tuple[int, int, int], batch: int, size: int) -> int:
    """FLOPs of one purifier forward, counted on the meta device (shapes only, no compute)."""
    with torch.device("meta"):
        net = RRDBPurifier(*model)
        x = torch.empty(batch, 3, size, size)
    with torch.inference_mode():
        return count_flops(lambda: net(x))


def purify_throughput(model: tuple[int, int, int], batch: int, size: int, device: torch.device, reps: int,
                      bf16: bool, channels_last: bool, peak_tflops) -> dict:
    """Images per second of ``purify`` (inference mode) on ``batch`` random ``size`` px images."""
    net = purifier_of(model, device, channels_last)
    x = torch.rand(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return purify(net, x)

    r = time_fn(run, device, warmup=1, reps=reps, flops=False)
    r["flops"] = purify_flops(model, batch, size)
    r.update(img_per_s=batch / r["median_s"], batch=batch, size=size, model=dict(zip(("nf", "nb", "gc"), model)),
             bf16=bf16, channels_last=channels_last, flops_per_img=r["flops"] // batch,
             mfu=mfu(r["flops"], r["median_s"], peak_tflops))
    return r


def purify_photo(model: tuple[int, int, int], hw: tuple[int, int], tile: int, device: torch.device, bf16: bool) -> dict:
    """Time (s) and peak memory (MiB) to purify one ``hw`` photo with ``nrp_lightning.tiling`` (overlapping
    tiles with exact halos, blended), its memory budget set to what a ``tile`` px tile needs, after one
    warm-up tile. A single run: at full size it is minutes on a CPU."""
    from nrp_lightning.tiling import bytes_per_pixel, purify_tiled

    net = purifier_of(model, device, channels_last=device.type == "cuda")
    max_memory = tile * tile * bytes_per_pixel(net, next(net.parameters()).dtype)
    image = torch.rand(1, 3, *hw, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        purify(net, image[..., :tile, :tile])
        sync(device)
        with MemoryProbe(device) as mem:
            start = time.perf_counter()
            purify_tiled(net, image, max_memory=max_memory)
            sync(device)
            seconds = time.perf_counter() - start
    return {"seconds": seconds, "height": hw[0], "width": hw[1], "tile": tile, "bf16": bf16,
            "model": dict(zip(("nf", "nb", "gc"), model)), "megapixels_per_s": hw[0] * hw[1] / 1e6 / seconds,
            "tiling": f"nrp_lightning.tiling.purify_tiled, max_memory={max_memory / 2**20:.0f} MiB", **mem.result}


# --------------------------------------------------------------------------- the benchmark
def headline_variant(device: torch.device) -> tuple[str, Variant]:
    """The setting we train with on this device: all fast paths on CUDA; fp32 eager on CPU, where
    bf16 and compile are measured as variants (see RESULTS.md for why they are not the default)."""
    return ("fast", VARIANTS["fast"]) if device.type == "cuda" else ("fp32", VARIANTS["fp32"])


def bench_step_breakdown(profile: Profile, device: torch.device, source, peak) -> dict:
    """Parts in isolation and the whole step (Trainer) for the headline variant.

    The parts run on their own copy of the module and their own batch. After warm-up, one call of
    every part follows each timed Trainer step, so that parts and whole steps see the same machine
    load (this CPU is shared); the ratio is the median whole step over the sum of part medians."""
    name, variant = headline_variant(device)
    cfg = step_config(profile.step, variant, profile.batch, profile.crop)
    module = prepared_module(cfg, device)
    torch.manual_seed(0)
    x = torch.rand(profile.batch, 3, profile.crop, profile.crop, device=device)
    parts = step_parts(module, x, variant, device)
    flops = {}
    for part, (fn, _) in parts.items():
        log(f"warm up part {part}")
        flops[part] = warm_up(fn, profile.warmup, flops=not variant.compile)
    if variant.compile:  # count on an eager copy: the same math
        eager = dataclasses.replace(variant, compile=False)
        eager_parts = step_parts(prepared_module(step_config(profile.step, eager, profile.batch, profile.crop), device),
                                 x, eager, device)
        flops = {part: count_flops(fn) for part, (fn, _) in eager_parts.items()}
        del eager_parts
    samples: dict[str, list] = {part: [] for part in parts}
    skip = profile.warmup + int(not variant.compile)

    def time_parts(batch_idx: int) -> None:
        if batch_idx >= skip:
            for part, (fn, _) in parts.items():
                samples[part].append(timed_call(fn, device))

    log("whole step (Trainer), interleaved with the parts")
    whole = trainer_step(cfg, variant, device, source, profile.warmup, profile.reps, between=time_parts)
    if variant.compile:
        whole["flops"] = eager_step_flops(profile.step, variant, profile.batch, profile.crop, device, source)
    results = {part: {**summarize(samples[part]), "flops": flops[part], "summed": summed}
               for part, (_, summed) in parts.items()}
    del module, parts
    summed = sum(p["median_s"] for p in results.values() if p["summed"])
    whole["mfu"] = mfu(whole["flops"], whole["step_s"], peak)
    whole["achieved_tflops"] = whole["flops"] / whole["step_s"] / 1e12 if isinstance(whole["flops"], int) else "na"
    return {"variant": name, **dataclasses.asdict(variant), "batch": profile.batch, "crop": profile.crop,
            "ssp_steps": cfg.attack.steps, "purifier": OmegaConf.to_container(cfg.model),
            "critic": OmegaConf.to_container(cfg.critic), "backbone": OmegaConf.to_container(cfg.backbone),
            "parts": results, "sum_of_parts_s": summed, "whole": whole,
            "step_overhead_ratio": whole["step_s"] / summed,
            "step_overhead_ratio_min": whole["min_step_s"] / sum(p["min_s"] for p in results.values() if p["summed"])}


def bench_variants(profile: Profile, device: torch.device, source, peak) -> dict:
    """Each fast path as a whole Trainer step; ``compile_s`` = first step minus the fastest step."""
    out = {}
    for name in profile.variants:
        variant = VARIANTS[name]
        log(f"variant {name}")
        cfg = step_config(profile.step, variant, profile.batch, profile.crop)
        r = trainer_step(cfg, variant, device, source, profile.warmup, profile.reps)
        if variant.compile:
            r["compile_s"] = r["first_step_s"] - r["min_step_s"]  # min: least disturbed by other load
            r["flops"] = eager_step_flops(profile.step, variant, profile.batch, profile.crop, device, source)
        else:
            r["compile_s"] = 0.0
        r["mfu"] = mfu(r["flops"], r["step_s"], peak)
        out[name] = {**dataclasses.asdict(variant), **r}
    return out


def bench_scaling(profile: Profile, device: torch.device, source) -> list[dict]:
    """Whole-step time and peak memory against batch size, crop size and SSP steps (one axis at a
    time, the others at the profile's values)."""
    _, variant = headline_variant(device)
    rows = []
    for axis, values in profile.scaling.items():
        for value in values:
            batch = value if axis == "batch" else profile.batch
            crop = value if axis == "crop" else profile.crop
            extra = (f"attack.steps={value}",) if axis == "ssp_steps" else ()
            log(f"scaling {axis}={value}")
            cfg = step_config(profile.step, variant, batch, crop, extra)
            r = trainer_step(cfg, variant, device, source, warmup=1, reps=max(2, profile.reps // 2), flops=False)
            rows.append({"axis": axis, "value": value, "batch": batch, "crop": crop, "ssp_steps": cfg.attack.steps,
                         "step_s": r["step_s"], "img_per_s": batch / r["step_s"], "host_peak_mib": r["host_peak_mib"],
                         "host_delta_mib": r["host_delta_mib"],
                         "device_peak_mib": r["device_peak_mib"]})
    return rows


def bench_full_step(profile: Profile, device: torch.device, source, peak) -> dict:
    """One full-size step (RRDB nf=64 nb=23, VGG critic, VGG16 relu3_3, T=10) at batch 1, 128 px,
    with and without activation checkpointing."""
    if profile.full_step is None:
        return {"skipped": f"profile {profile.name} has no separate full-size step"}
    out = {}
    for name in ("fp32", "act_ckpt"):
        variant = VARIANTS[name]
        log(f"full-size step batch 1 ({name})")
        cfg = step_config(profile.full_step, variant, 1, profile.full_step_crop)
        r = trainer_step(cfg, variant, device, source, warmup=1, reps=2, flops=name == "fp32")
        r["mfu"] = mfu(r["flops"], r["step_s"], peak)
        out[name] = {"batch": 1, "crop": profile.full_step_crop, "ssp_steps": cfg.attack.steps, **r}
    return out


def run(device: torch.device, profile: Profile) -> dict:
    """Every measurement of the profile; returns the JSON-ready result."""
    torch.manual_seed(0)
    logging.getLogger("nrp_lightning.models.features").setLevel(logging.ERROR)  # random-weights warning
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # The parts run on a second copy of the compiled networks and in more grad modes than a
    # training step: allow the recompilations instead of silently falling back to eager.
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    result: dict = {"schema": SCHEMA, "profile": profile.name, "machine": machine_info(device),
                    "settings": {**{k: v for k, v in dataclasses.asdict(profile).items()}, "seed": 0}}
    log(f"profile {profile.name} on {device_name(device)}")
    load = CpuLoad()
    peak = measure_bf16_peak_tflops(device)
    result["peak_bf16_matmul_tflops"] = peak
    source = hydra.utils.instantiate(step_config(profile.step, Variant(), profile.batch, profile.crop).data.source,
                                     _convert_="all")
    result["step"] = bench_step_breakdown(profile, device, source, peak)
    result["loader"] = loader_batch_s(step_config(profile.step, Variant(), profile.batch, profile.crop), source, device)
    log("JPEG loader (COCO-style batch of 16)")
    result["loader_jpeg"] = jpeg_loader_batch_s(source, batches=2 if profile.name == "quick" else 5)
    result["variants"] = bench_variants(profile, device, source, peak)
    result["scaling"] = bench_scaling(profile, device, source)
    result["full_step"] = bench_full_step(profile, device, source, peak)
    log("purification at 224 px")
    cuda = device.type == "cuda"
    result["purify_224"] = purify_throughput(profile.purify_model, profile.purify_batch, 224, device,
                                             profile.purify_reps, bf16=cuda, channels_last=cuda, peak_tflops=peak)
    log(f"photo {profile.photo[1]}x{profile.photo[0]} in {profile.tile} px tiles")
    result["photo"] = purify_photo(profile.photo_model, profile.photo, profile.tile, device, bf16=cuda)
    result["machine"]["other_processes_cpu_share"] = load.stop()
    result["headline"] = {"device": "cpu" if device.type == "cpu" else device_name(device),
                          "step_overhead_ratio": result["step"]["step_overhead_ratio"],
                          "step_s": result["step"]["whole"]["step_s"], "mfu": result["step"]["whole"]["mfu"],
                          "purify_224_img_per_s": result["purify_224"]["img_per_s"]}
    return result


# --------------------------------------------------------------------------- reporting
def _f(v, digits: int = 3) -> str:
    """A number for the table: ``digits`` significant digits, or the string as is ('na')."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) and abs(v) < 10**6:
        return str(v)
    return f"{v:.{digits}g}"


def _pct(v) -> str:
    return v if isinstance(v, str) else f"{v:.0%}"


def _flops(v) -> str:
    return v if isinstance(v, str) else f"{v / 1e9:.3g}"


def markdown(result: dict) -> str:
    """The human-readable tables of ``result``."""
    m, s, h, j = result["machine"], result["step"], result["headline"], result["loader_jpeg"]
    lines = [f"# NRP benchmark ({result['profile']} profile)", "",
             f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} "
             f"({m['torch_threads']} threads), Lightning {m['lightning']}, device {m['device']}. "
             f"Other processes used {_pct(m['other_processes_cpu_share'])} of the CPUs during the run. "
             f"Measured bf16 matmul peak: {_f(result['peak_bf16_matmul_tflops'])} TFLOP/s.", "",
             f"## Training step: {s['variant']} (bf16={_f(s['bf16'])}, channels_last={_f(s['channels_last'])}, "
             f"compile={_f(s['compile'])}), batch {s['batch']}, {s['crop']} px, SSP T={s['ssp_steps']}, "
             f"purifier nf={s['purifier']['nf']} nb={s['purifier']['nb']} gc={s['purifier']['gc']}, "
             f"features {s['backbone']['_target_'].rsplit('.', 1)[-1]}[:{s['backbone'].get('layer', '?')}]", "",
             "| part | summed | median s | share of step | GFLOP | host peak MiB | host +MiB | device peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, p in s["parts"].items():
        lines.append(f"| {name} | {'yes' if p['summed'] else 'no'} | {_f(p['median_s'])} | "
                     f"{p['median_s'] / s['whole']['step_s']:.1%} | {_flops(p['flops'])} | {_f(p['host_peak_mib'], 5)} | "
                     f"{_f(p['host_delta_mib'], 4)} | {_f(p['device_peak_mib'], 5)} |")
    w = s["whole"]
    lines += [f"| **sum of summed parts** | | {_f(s['sum_of_parts_s'])} | | | | | |",
              f"| **whole training_step (Trainer)** | | {_f(w['step_s'])} | 100% | {_flops(w['flops'])} | "
              f"{_f(w['host_peak_mib'], 5)} | {_f(w['host_delta_mib'], 4)} | {_f(w['device_peak_mib'], 5)} |", "",
              f"Step overhead ratio (whole / sum of parts): **{s['step_overhead_ratio']:.3f}**. "
              f"Achieved {_f(w['achieved_tflops'])} TFLOP/s, MFU {_f(w['mfu'])}. "
              f"Gap between steps (loader + loop): {_f(w['between_steps_s'])} s = {w['loader_share']:.1%} of a step; "
              f"the loader alone: {_f(result['loader']['batch_s'])} s/batch with {result['loader']['num_workers']} workers. "
              f"Host-device syncs in one step: {_f(w['host_syncs_in_step'])}. "
              f"COCO-style loading (JPEG decode, resize to {j['resize']}, crop {j['crop']}): {_f(j['batch_s'])} s per batch "
              f"of {j['batch']} on one core" + (f", so {math.ceil(j['batch_s'] / w['step_s'])} loader worker(s) keep up "
                                                 f"with this step" if s['batch'] == j['batch'] else "") + ".", "",
              "## Fast paths (whole step through the Trainer)", "",
              "| variant | step s | min s | speed-up vs fp32 (median / min) | compile s | loader share | GFLOP | MFU "
              "| host peak MiB | host +MiB | device peak MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = result["variants"].get("fp32")
    for name, v in result["variants"].items():
        speed = f"{base['step_s'] / v['step_s']:.2f}x / {base['min_step_s'] / v['min_step_s']:.2f}x" if base else "na"
        lines.append(f"| {name} | {_f(v['step_s'])} | {_f(v['min_step_s'])} | {speed} | {_f(v['compile_s'])} | "
                     f"{v['loader_share']:.1%} | "
                     f"{_flops(v['flops'])} | {_f(v['mfu'])} | {_f(v['host_peak_mib'], 5)} | {_f(v['host_delta_mib'], 4)} | "
                     f"{_f(v['device_peak_mib'], 5)} |")
    lines += ["", "## How the step grows (one axis at a time)", "",
              "| axis | batch | crop px | SSP T | step s | img/s | host peak MiB | host +MiB | device peak MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["scaling"]:
        lines.append(f"| {r['axis']} | {r['batch']} | {r['crop']} | {r['ssp_steps']} | {_f(r['step_s'])} | "
                     f"{_f(r['img_per_s'])} | {_f(r['host_peak_mib'], 5)} | {_f(r['host_delta_mib'], 4)} | "
                     f"{_f(r['device_peak_mib'], 5)} |")
    fs = result["full_step"]
    lines += ["", "## Full-size step (RRDB nf=64 nb=23 gc=32, VGG critic nf=64, VGG16 relu3_3)", ""]
    if "skipped" in fs:
        lines.append(f"Skipped: {fs['skipped']}.")
    else:
        lines += ["| setting | batch | crop px | SSP T | step s | min s | GFLOP | host peak MiB | host +MiB | device peak MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in fs.items():
            lines.append(f"| {name} | {r['batch']} | {r['crop']} | {r['ssp_steps']} | {_f(r['step_s'])} | "
                         f"{_f(r['min_step_s'])} | {_flops(r['flops'])} | {_f(r['host_peak_mib'], 5)} | "
                         f"{_f(r['host_delta_mib'], 4)} | {_f(r['device_peak_mib'], 5)} |")
    p, ph = result["purify_224"], result["photo"]
    lines += ["", "## Purification", "",
              "| what | model nf/nb/gc | batch | bf16 | time s | throughput | GFLOP/img | MFU | host peak MiB | device peak MiB |",
              "|---|---|---|---|---|---|---|---|---|---|",
              f"| 224 px | {p['model']['nf']}/{p['model']['nb']}/{p['model']['gc']} | {p['batch']} | {_f(p['bf16'])} | "
              f"{_f(p['median_s'])} | {_f(p['img_per_s'])} img/s | {_flops(p['flops_per_img'])} | {_f(p['mfu'])} | "
              f"{_f(p['host_peak_mib'], 5)} | {_f(p['device_peak_mib'], 5)} |",
              f"| {ph['width']}x{ph['height']} photo, tiles within {ph['tiling'].split('=')[-1]} | "
              f"{ph['model']['nf']}/{ph['model']['nb']}/{ph['model']['gc']} | 1 | {_f(ph['bf16'])} | {_f(ph['seconds'])} | "
              f"{_f(ph['megapixels_per_s'])} MP/s | | | {_f(ph['host_peak_mib'], 5)} | {_f(ph['device_peak_mib'], 5)} |", "",
              f"Headline: {last_line(h)}"]
    return "\n".join(lines) + "\n"


def last_line(h: dict) -> str:
    """The machine-readable summary line."""
    mfu_s = h["mfu"] if isinstance(h["mfu"], str) else f"{h['mfu']:.3f}"
    return (f"bench: device={h['device']} step_overhead_ratio={h['step_overhead_ratio']:.3f} "
            f"step_s={h['step_s']:.4g} mfu={mfu_s} purify_224_img_per_s={h['purify_224_img_per_s']:.4g}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, seconds)")
    parser.add_argument("--full", action="store_true", help="the paper's nrp_full step: batch 16, 128 px, VGG16, T=10 (GPU work)")
    parser.add_argument("--out", default="outputs/bench", help="folder for bench.json and bench.md")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.quick and args.full:
        raise SystemExit("--quick and --full exclude each other")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    profile = profile_for(device, args.quick, args.full)
    start = time.perf_counter()
    try:
        result = run(device, profile)
    finally:
        torch.set_num_threads(threads)
    result["bench_wall_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str))
    table = markdown(result)
    (out / "bench.md").write_text(table)
    print(table)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} in {result['bench_wall_s']:.0f} s")
    print(last_line(result["headline"]))
    return result


if __name__ == "__main__":
    main()
