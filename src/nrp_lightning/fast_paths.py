"""What runs fastest on this machine: channels_last, bf16 autocast where the hardware has it, and
a malloc that stops mapping every large activation afresh. Chosen by measurement
(docs/performance.md has the numbers and the flags that turn each off).

* **channels_last** (NHWC) for every convolutional network, on the CPU as on CUDA: oneDNN's NHWC
  convolutions are 1.4-1.6x faster than NCHW on a 2-core AVX2 CPU, and the outputs agree with NCHW
  to float32 rounding (max |diff| about 1e-6 on the shipped purifier). Always on; nothing to choose.
* **BatchNorm folded** into the convolution before it, for frozen networks in eval mode (the
  classifiers that are attack sources and victims, the SSP feature extractors): one pass over each
  activation fewer, forward and backward. An MI-FGSM step of MobileNetV2 is 1.15-1.4x faster; logits
  agree with the unfolded network to float32 rounding, and every fold is checked on an input
  before it is kept (``fold_batchnorm``). Networks that train are never touched.
* **bf16 autocast** only where the device computes bf16 natively: CUDA devices that support it and
  CPUs with AMX or AVX-512 BF16 (read from the CPU's flags, never assumed). Elsewhere oneDNN
  emulates bf16 and is 6-26x *slower* than fp32 (measured on AVX2). On a CPU with AVX-512 BF16 but
  no AMX, depthwise convolutions (MobileNet, EfficientNet) gain nothing from bf16 and lose a little
  (an MI-FGSM step of MobileNetV2: 0.33 s bf16, 0.30 s fp32), while dense ones (VGG, the purifier)
  run 2x faster: ``"auto"`` there picks fp32 for networks with depthwise convolutions. ``"fp32"``
  and ``"bf16"`` force it.
* **the allocator**: glibc's malloc serves every block above its mmap threshold (at most 32 MB)
  with a fresh ``mmap`` and unmaps it on ``free``, so each large activation of a purifier on a photo
  is mapped and zeroed page by page again on every layer: millions of page faults and as much
  system time as compute. ``tune_allocator()`` makes malloc keep that memory (``M_MMAP_MAX=0``: the
  heap serves every size; ``M_TRIM_THRESHOLD``: freed memory stays for the next layer). The command
  line tools call it at start; a library user can call it once, first thing.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 in hardware
AMX_FLAG = "amx_bf16"  # tile matrix units: bf16 pays off for depthwise convolutions too
FOLD_TOLERANCE = 1e-4  # largest |folded - unfolded| output kept, relative to the output's largest |value|
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30  # freed memory at the heap's top is returned to the system beyond 1 GiB
ALLOCATOR_ENV = "NRP_TUNE_MALLOC"  # "0": leave malloc as it is


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: str | torch.device, flags: frozenset[str] | None = None) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA device with bf16, or a CPU with AMX or
    AVX-512 BF16 (``flags``: the CPU's, by default read from the machine)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def has_depthwise(net: nn.Module) -> bool:
    """Whether ``net`` has a depthwise convolution (one group per input channel, more than one)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in net.modules())


def use_bf16(device: str | torch.device, precision: str = "auto", flags: frozenset[str] | None = None,
             net: nn.Module | None = None) -> bool:
    """bf16 autocast or not, for ``precision`` in ``PRECISIONS``: ``auto`` is bf16 where the device
    computes it natively (``native_bf16``), fp32 elsewhere; and, given the ``net`` it will run, fp32
    on a CPU without AMX if ``net`` has depthwise convolutions (slower in bf16 there)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if not native_bf16(device, flags):
        return False
    flags = cpu_flags() if flags is None else flags
    cpu_without_amx = torch.device(device).type == "cpu" and AMX_FLAG not in flags
    return not (cpu_without_amx and net is not None and has_depthwise(net))


def fold_batchnorm(net: nn.Module, example: torch.Tensor) -> int:
    """Fold every BatchNorm that directly follows a convolution of ``net`` into it, in place, where
    both are frozen (no parameter requires grad) and in eval mode; returns how many were folded.

    "Follows" is read from the order of a module's children (``Sequential`` and the torchvision /
    timm blocks define them in forward order); since a module may define them otherwise, ``net``'s
    output on ``example`` (e.g. ``(1,3,64,64)`` in [0,1]) is compared before and after, in fp32, and
    every fold is undone unless they agree to ``FOLD_TOLERANCE``. timm's ``BatchNormAct2d`` keeps its
    activation (and dropout). Folded networks give the same outputs and input gradients to float32
    rounding; their ``state_dict`` has no BatchNorm entries."""
    folds = []  # (parent, conv name, conv, bn name, bn)
    for parent in net.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not conv.training
                    and not bn.training and bn.track_running_stats and bn.running_mean is not None
                    and not any(p.requires_grad for p in (*conv.parameters(), *bn.parameters()))):
                folds.append((parent, conv_name, conv, bn_name, bn))
    if not folds:
        return 0
    with torch.no_grad(), torch.autocast(example.device.type, enabled=False):
        before = net(example)
        for parent, conv_name, conv, bn_name, bn in folds:
            folded = fuse_conv_bn_eval(conv, bn).requires_grad_(False)
            keep = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(parent, conv_name, folded)
            setattr(parent, bn_name, nn.Sequential(*keep) if keep else nn.Identity())
        after = net(example)
    scale = before.abs().max().clamp_min(1.0)
    if (after - before).abs().max() <= FOLD_TOLERANCE * scale:
        return len(folds)
    for parent, conv_name, conv, bn_name, bn in folds:
        setattr(parent, conv_name, conv)
        setattr(parent, bn_name, bn)
    log.warning("%s: folding its BatchNorms changed its output; left unfolded", type(net).__name__)
    return 0


def prepare_frozen(net: nn.Module, device: str | torch.device) -> nn.Module:
    """A frozen network's fast paths, in place: BatchNorm folded (``fold_batchnorm``, checked on a
    64 px input) and channels_last."""
    device = torch.device(device)
    fold_batchnorm(net, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device))
    return to_channels_last(net)


def to_channels_last(net: nn.Module) -> nn.Module:
    """``net`` with its 4-D weights in channels_last (in place; its convolutions then run NHWC and
    give NHWC outputs whatever the input's layout); state-dict keys and values are unchanged."""
    return net.to(memory_format=torch.channels_last)


def autocast(device: str | torch.device, bf16: bool) -> Callable[[], ContextManager]:
    """A factory of bf16 autocast contexts on ``device`` (``bf16=False``: contexts that do nothing)."""
    device = torch.device(device)
    if not bf16:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)


@functools.lru_cache(maxsize=None)
def tune_allocator() -> bool:
    """Keep freed memory in the process instead of unmapping it (glibc only; once per process).
    Returns whether malloc was tuned: not on other C libraries, nor with ``NRP_TUNE_MALLOC=0``."""
    if os.environ.get(ALLOCATOR_ENV, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    tuned = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc tuned (M_MMAP_MAX=0, M_TRIM_THRESHOLD=%d): %s", TRIM_THRESHOLD, tuned)
    return tuned


def describe(device: str | torch.device, bf16: bool) -> str:
    """One phrase for the start line of a command, e.g. ``cpu, channels_last fp32``."""
    device = torch.device(device)
    return f"{device}, channels_last {'bf16 autocast' if bf16 else 'fp32'}"
