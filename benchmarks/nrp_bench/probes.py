"""Timing and memory probes: synchronised wall time in seconds, peak host RSS and peak device memory
in MiB, medians over repeated calls."""
from __future__ import annotations

import contextlib
import ctypes
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from nrp_bench.flops import count_flops

MIB = 2**20


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock reads the work's real end (CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc; 'na'-free fallback: peak)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_free_host_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that the RSS at the start
    of a measurement is the live set and its peak is the measurement's own. No-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class MemoryProbe:
    """Peak host RSS and peak device memory over a block, in MiB.

    Linux lets a process reset its peak RSS (``echo 5 > /proc/self/clear_refs``), so the host peak
    is the block's own; where that fails the host peak is the process's peak so far (``host_reset``
    says which). ``host_delta_mib`` is the peak minus the RSS at the start of the block."""

    device: torch.device
    host_reset: bool = False
    start_rss: float = 0.0
    result: dict = field(default_factory=dict)

    def __enter__(self) -> "MemoryProbe":
        release_free_host_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.host_reset = True
        except OSError:
            self.host_reset = False
        self.start_rss = host_rss_mib()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        peak = host_peak_mib()
        self.result = {"host_peak_mib": round(peak, 1), "host_delta_mib": round(peak - self.start_rss, 1),
                       "host_peak_is_block_only": self.host_reset,
                       "device_peak_mib": (round(torch.cuda.max_memory_allocated(self.device) / MIB, 1)
                                           if self.device.type == "cuda" else "na")}


def host_peak_mib() -> float:
    """Peak resident set size of this process in MiB since start or since the last reset through
    ``/proc/self/clear_refs`` (Linux VmHWM; elsewhere the process's peak, ``ru_maxrss``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_call(fn: Callable[[], object], device: torch.device) -> tuple[float, dict]:
    """One synchronised call of ``fn``: wall seconds and its peak memory (``MemoryProbe``)."""
    sync(device)
    with MemoryProbe(device) as mem:
        start = time.perf_counter()
        fn()
        sync(device)
        seconds = time.perf_counter() - start
    return seconds, mem.result


def summarize(samples: list[tuple[float, dict]]) -> dict:
    """Median and min seconds of ``(seconds, memory)`` samples; memory is the largest peak."""
    times = [t for t, _ in samples]
    mems = [m for _, m in samples]
    worst = lambda key: mems[0][key] if isinstance(mems[0][key], str) else max(m[key] for m in mems)  # noqa: E731
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": len(times),
            **{k: worst(k) for k in ("host_peak_mib", "host_delta_mib", "device_peak_mib")}}


def warm_up(fn: Callable[[], object], warmup: int, flops: bool) -> int | str:
    """``warmup`` plain calls, then one call under the FLOP counter (it runs through a dispatch mode,
    so it neither warms up nor is timed). Returns its FLOPs, or 'na'."""
    for _ in range(warmup):
        fn()
    return count_flops(fn) if flops else "na"


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, reps: int, flops: bool = True) -> dict:
    """Median wall time (s) of ``fn`` over ``reps`` synchronised calls after ``warmup`` calls,
    its FLOPs per call and its peak memory (MiB)."""
    flop_count = warm_up(fn, warmup, flops)
    return {**summarize([timed_call(fn, device) for _ in range(reps)]), "flops": flop_count}
