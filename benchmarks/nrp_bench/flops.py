"""FLOPs of a call, the device's measured bf16 matmul peak and MFU."""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker, whose backward hooks make
    ``torch.autograd.grad`` on a leaf input fail (SSP's input gradient: "A leaf node was passed to
    _will_engine_execute_node"). We only read the total, which FlopCounterMode keeps under 'Global'."""

    parents = frozenset({"Global"})

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc) -> None:
        return None


class StepFlopCounter(FlopCounterMode):
    """``torch.utils.flop_counter.FlopCounterMode`` (its FLOP formulas and dispatch mode) counting
    totals only, so that it works around ``torch.autograd.grad``."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (forward and backward ops that FlopCounterMode has formulas for)."""
    with StepFlopCounter() as counter:
        fn()
    return int(counter.get_total_flops())


def measure_bf16_peak_tflops(device: torch.device) -> float | str:
    """The device's achievable dense bf16 matmul rate in TFLOP/s (8192^3 matmuls); 'na' on CPU."""
    if device.type != "cuda":
        return "na"
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    reps, best = 20, float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best / 1e12


def mfu(flops: int | str, seconds: float, peak_tflops: float | str) -> float | str:
    """Achieved FLOP/s over the measured bf16 peak, or 'na'."""
    if isinstance(flops, str) or isinstance(peak_tflops, str) or seconds <= 0:
        return "na"
    return flops / seconds / (peak_tflops * 1e12)
