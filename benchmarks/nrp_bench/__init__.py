"""The NRP benchmark, one concern a module; ``benchmarks/bench.py`` runs it and is its command line.

    profiles.py      what is benchmarked: fast-path variants, quick/default/full sizes, the config they compose to
    machine.py       what runs it: CPU/GPU description, other processes' CPU share, progress log
    flops.py         FLOPs of a call (``FlopCounterMode``), the device's measured bf16 peak, MFU
    probes.py        timing and memory probes: device sync, wall time (s), peak host/device memory (MiB)
    step_parts.py    the parts of ``training_step`` as re-runnable callables
    trainer_step.py  the whole ``training_step`` under ``pl.Trainer.fit``, timed per batch
    loader.py        the training data loader and its cost per batch
    training.py      the training-step measurements: breakdown, fast paths, scaling, full-size step
    purification.py  purification throughput at 224 px and one large photo in tiles
    report.py        the markdown tables and the one-line summary

Imports go one way: flops <- probes <- the measurements <- bench.py; machine and profiles import
nothing from the package. Nothing is re-exported here: import from the module that holds the name.
"""
