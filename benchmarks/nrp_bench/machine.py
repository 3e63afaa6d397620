"""The machine under the benchmark: what it is, how busy the rest of it is, and the progress log
(stderr)."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch


def machine_info(device: torch.device) -> dict:
    """CPU model, threads, library versions and, on CUDA, the GPU."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "lightning": pl.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": device_name(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), sm_count=props.multi_processor_count)
    return info


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


class CpuLoad:
    """Share of the machine's CPU time that *other* processes used between ``start`` and ``stop``
    (Linux /proc; 'na' elsewhere). The benchmark shares the CPUs with whatever else runs: a high
    share means noisy times."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + fields[4]
        return sum(fields), sum(fields) - idle, float(own[11]) + float(own[12])  # total, busy, own utime+stime

    def stop(self) -> float | str:
        end = self._read()
        if self._start is None or end is None or end[0] == self._start[0]:
            return "na"
        total, busy, own = (e - s for e, s in zip(end, self._start))
        return max(0.0, (busy - own) / total)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
