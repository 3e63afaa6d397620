"""The NRP benchmark, one concern a module; ``benchmarks/bench.py`` is its command line.

    machine.py     what runs the benchmark: CPU/GPU description, device sync, other processes' CPU share, progress log
    flops.py       FLOPs of a call (``FlopCounterMode``), the device's measured bf16 peak, MFU
    probes.py      timing and memory probes: synchronised wall time (s), peak host/device memory (MiB)
"""
