"""What runs fastest on this machine: channels_last, bf16 autocast where the hardware has it, and
a malloc that stops mapping every large activation afresh. Chosen by measurement
(docs/performance.md has the numbers and the flags that turn each off).

* **channels_last** (NHWC) for every convolutional network, on the CPU as on CUDA: oneDNN's NHWC
  convolutions are 1.4-1.6x faster than NCHW on a 2-core AVX2 CPU, and the outputs agree with NCHW
  to float32 rounding (max |diff| about 1e-6 on the shipped purifier). Always on; nothing to choose.
* **bf16 autocast** only where the device computes bf16 natively: CUDA devices that support it and
  CPUs with AMX or AVX-512 BF16 (read from the CPU's flags, never assumed). Elsewhere oneDNN
  emulates bf16 and is 6-26x *slower* than fp32 (measured on AVX2). ``precision="auto"`` follows the
  hardware, ``"fp32"`` and ``"bf16"`` force it.
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

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 in hardware
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


def use_bf16(device: str | torch.device, precision: str = "auto", flags: frozenset[str] | None = None) -> bool:
    """bf16 autocast or not, for ``precision`` in ``PRECISIONS``: ``auto`` is bf16 where the device
    computes it natively (``native_bf16``), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and native_bf16(device, flags))


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
