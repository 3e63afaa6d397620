"""The CPU fast paths (``nrp_lightning.fast_paths``) against plain NCHW fp32, each setting timed in a
fresh process, since malloc's settings hold for a whole process.

Cases (the workloads a user waits for on a CPU):

* ``purify_224``: the shipped purifier on one 224 px image (the evaluation's size);
* ``purify_1mp``: the shipped purifier on one 1152x864 photo (1.0 MP, untiled);
* ``mifgsm_step``: one MI-FGSM step of MobileNetV2 on a batch of 16 at 224 px (gradient, momentum,
  update): the source of every transfer attack and of the recipe's training inputs;
* ``recipe_step``: one training step of the CPU recipe (``experiment=nrp_cpu attack=classifier``
  on the embedded photos, 96 px crops, batch 8) through the real Trainer.

Settings: ``nchw_fp32`` (what every CPU path ran before: NCHW, glibc's malloc as it comes),
``cl_fp32`` (channels_last), ``cl_fp32_malloc`` (channels_last and ``tune_allocator``: the default
of the purifier and of training) and ``cl_bf16_malloc`` (bf16 autocast on top); for the MI-FGSM step
(the only case with BatchNorm) also ``cl_fold_fp32_malloc`` and ``cl_fold_bf16_malloc``, MobileNetV2
with its BatchNorms folded (``fast_paths.prepare_frozen``: the default of attacks and evaluation). bf16 is timed only where the CPU computes it
natively, and for ``purify_224`` everywhere (to show what emulated bf16 costs), since emulated bf16
runs the larger cases for minutes. Each row: median seconds, GFLOP/s, the share of this CPU's
measured fp32 and bf16 matmul rates, minor page faults and the kernel's share of the CPU time.

    python benchmarks/nrp_bench/cpu_paths.py              # the whole table (about 10 min on 2 cores)
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SETTINGS = {  # name -> (channels_last, bf16, tuned malloc, BatchNorm folded)
    "nchw_fp32": (False, False, False, False),
    "cl_fp32": (True, False, False, False),
    "cl_fp32_malloc": (True, False, True, False),
    "cl_bf16_malloc": (True, True, True, False),
    "cl_fold_fp32_malloc": (True, False, True, True),
    "cl_fold_bf16_malloc": (True, True, True, True),
}
FOLD_CASES = ("mifgsm_step",)  # the cases whose networks have BatchNorm to fold
CASES = ("purify_224", "purify_1mp", "mifgsm_step", "recipe_step")
REPS = {"purify_224": 5, "purify_1mp": 2, "mifgsm_step": 3, "recipe_step": 4}
PHOTO = (864, 1152)  # height, width: 1.0 MP


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    """This CPU's dense matmul rate (GFLOP/s) in ``dtype``: best of ``reps`` n^3 products."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def _workload(case: str, channels_last: bool, fold: bool = False):
    """(a callable running the case once, its FLOPs per call) built in this process."""
    from nrp_bench.flops import count_flops
    from nrp_lightning import fast_paths

    prepare = ((lambda net: fast_paths.prepare_frozen(net, "cpu")) if fold else
               fast_paths.to_channels_last if channels_last else (lambda net: net))
    if case in ("purify_224", "purify_1mp"):
        from nrp_lightning.purify import load_purifier

        purifier = prepare(load_purifier())
        x = torch.rand(1, 3, *((224, 224) if case == "purify_224" else PHOTO))

        def run():
            with torch.inference_mode():
                purifier(x)
        return run, count_flops(run)
    if case == "mifgsm_step":
        from nrp_lightning.attacks.transfer import mifgsm
        from nrp_lightning.models.classifiers import load_classifier

        model, attack = prepare(load_classifier("mobilenet_v2", pretrained=False)), mifgsm(eps=16, steps=1)
        x, y = torch.rand(16, 3, 224, 224), torch.randint(0, 1000, (16,))
        run = lambda: attack(x, y, model)  # noqa: E731
        return run, count_flops(run)
    raise ValueError(f"unknown case {case!r}")


def _recipe_step(channels_last: bool, bf16: bool) -> dict:
    from nrp_bench.profiles import COMMON, Variant, step_config
    from nrp_bench.trainer_step import trainer_step
    import hydra

    overrides = ("experiment=nrp_cpu", "attack=classifier", "data=embedded", "data.val_images=1") + COMMON
    variant = Variant(bf16=bf16, channels_last=channels_last)
    cfg = step_config(overrides, variant, batch=8, crop=96)
    source = hydra.utils.instantiate(cfg.data.source, _convert_="all")
    r = trainer_step(cfg, variant, torch.device("cpu"), source, warmup=1, reps=REPS["recipe_step"], flops=True)
    return {"median_s": r["step_s"], "flops": r["flops"]}


def measure(case: str, setting: str) -> dict:
    """One case in one setting, in this process: median s, FLOPs, and over the timed calls the minor
    page faults per call and the kernel's share of the CPU time (for ``recipe_step``: over the whole
    Trainer run, setup included)."""
    channels_last, bf16, tuned, fold = SETTINGS[setting]
    if tuned:
        from nrp_lightning.fast_paths import tune_allocator

        tune_allocator()
    if case == "recipe_step":
        before = resource.getrusage(resource.RUSAGE_SELF)
        result, calls = _recipe_step(channels_last, bf16), 1
    else:
        run, flops = _workload(case, channels_last, fold)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            run()  # warm-up
            before = resource.getrusage(resource.RUSAGE_SELF)
            times = []
            for _ in range(REPS[case]):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
        result, calls = {"median_s": statistics.median(times), "flops": flops}, REPS[case]
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.update(minor_faults=(after.ru_minflt - before.ru_minflt) // calls,
                  kernel_share=(after.ru_stime - before.ru_stime) / cpu_s if cpu_s else 0.0)
    return result


def in_subprocess(case: str, setting: str, threads: int | None = None) -> dict:
    """``measure(case, setting)`` in a fresh Python process (its own malloc state)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    if not SETTINGS[setting][2]:
        env["NRP_TUNE_MALLOC"] = "0"  # nothing in the child may tune it either
    code = ("import json, sys, torch; from nrp_bench.cpu_paths import measure; "
            f"{f'torch.set_num_threads({threads}); ' if threads else ''}"
            f"print('RESULT ' + json.dumps(measure({case!r}, {setting!r})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{case} / {setting} failed: {done.stderr.strip()[-800:]}")
    return json.loads(lines[-1][len("RESULT "):])


def plan(native_bf16: bool, cases=CASES) -> list[tuple[str, str]]:
    """(case, setting) pairs to time: bf16 only where native, and on the cheap 224 px case always;
    folded BatchNorm only for the cases that have it."""
    return [(case, setting) for case in cases for setting, (_, bf16, _, fold) in SETTINGS.items()
            if (not bf16 or native_bf16 or case == "purify_224") and (not fold or case in FOLD_CASES)]


def bench_cpu_paths(cases=CASES, threads: int | None = None, log=print) -> dict:
    """Every planned (case, setting), the matmul peaks and the speed-ups over ``nchw_fp32``."""
    from nrp_lightning.fast_paths import cpu_flags, native_bf16

    native = native_bf16("cpu")
    peaks = {"fp32_gflops": matmul_gflops(torch.float32), "bf16_gflops": matmul_gflops(torch.bfloat16)}
    rows = []
    for case, setting in plan(native, cases):
        log(f"cpu paths: {case} / {setting}")
        r = in_subprocess(case, setting, threads)
        gflops = r["flops"] / r["median_s"] / 1e9 if isinstance(r["flops"], int) else None
        rows.append({"case": case, "setting": setting, **r, "gflops": gflops,
                     "share_fp32_peak": gflops / peaks["fp32_gflops"] if gflops else None,
                     # an emulated bf16 matmul is no peak: a share of it would read as 5000%
                     "share_bf16_peak": gflops / peaks["bf16_gflops"] if gflops and native else None})
    base = {r["case"]: r["median_s"] for r in rows if r["setting"] == "nchw_fp32"}
    for r in rows:
        r["speedup"] = base[r["case"]] / r["median_s"] if r["case"] in base else None
    return {"native_bf16": native, "cpu_flags_bf16": sorted({"amx_bf16", "avx512_bf16"} & cpu_flags()),
            "matmul_peaks": peaks, "rows": rows}


def markdown(result: dict) -> str:
    peaks = result["matmul_peaks"]
    lines = [f"CPU fast paths (bf16 native: {result['native_bf16']}; matmul peaks measured here: fp32 "
             f"{peaks['fp32_gflops']:.0f} GFLOP/s, bf16 {peaks['bf16_gflops']:.0f} GFLOP/s"
             f"{'' if result['native_bf16'] else ', emulated: no bf16 peak to share'})", "",
             "| case | setting | median s | speed-up | GFLOP/s | of fp32 peak | of bf16 peak | minor faults a call | kernel share |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: f"{100 * v:.0f}%" if v is not None else "-"  # noqa: E731
    num = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['setting']} | {r['median_s']:.3f} | {num(r['speedup'], '.2f')}x | "
                     f"{num(r['gflops'], '.0f')} | {pct(r['share_fp32_peak'])} | {pct(r['share_bf16_peak'])} | "
                     f"{r['minor_faults']} | {pct(r['kernel_share'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    out = bench_cpu_paths(log=lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(out))
    print(json.dumps(out, indent=1))
