"""Benchmark of NRP training and purification.

    python benchmarks/bench.py [--device auto|cpu|cuda] [--quick | --full] [--out DIR] [--threads N]
                               [--variants fp32,bf16,...] [--headline NAME] [--no-scaling]

What it measures, always on the project's own code:

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
* on a CPU, the fast paths against plain NCHW fp32 (``nrp_bench/cpu_paths.py``: the shipped purifier
  at 224 px and on a 1 MP photo, an MI-FGSM step of MobileNetV2, the CPU recipe's step; channels_last,
  the tuned malloc and bf16, each setting in a fresh process), with GFLOP/s against this CPU's
  measured matmul rates;
* peak memory of each: host (peak RSS, reset per measurement through /proc/self/clear_refs) and
  device (``torch.cuda.max_memory_allocated``).

Times are medians over ``reps`` runs after ``warmup`` runs, with ``torch.cuda.synchronize`` around
each run on CUDA; seeds are fixed. Writes ``bench.json`` and ``bench.md`` under ``--out`` and
prints the table; the last line is::

    bench: device=<cpu|cuda name> step_overhead_ratio=<x> step_s=<s> mfu=<f or na> purify_224_img_per_s=<y>

The measurements live in ``nrp_bench/``, one concern a module (its ``__init__`` lists them); this
file runs them in order, writes the result and is the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
import torch  # noqa: E402

from nrp_bench.cpu_paths import bench_cpu_paths  # noqa: E402
from nrp_bench.flops import measure_bf16_peak_tflops  # noqa: E402
from nrp_bench.loader import jpeg_loader_batch_s, loader_batch_s  # noqa: E402
from nrp_bench.machine import CpuLoad, device_name, log, machine_info  # noqa: E402
from nrp_bench.profiles import VARIANTS, Profile, Variant, profile_for, step_config  # noqa: E402
from nrp_bench.purification import purify_photo, purify_throughput  # noqa: E402
from nrp_bench.report import last_line, markdown  # noqa: E402
from nrp_bench.training import bench_full_step, bench_scaling, bench_step_breakdown, bench_variants  # noqa: E402

SCHEMA = "nrp-bench/1"


def run(device: torch.device, profile: Profile, save=lambda result: None) -> dict:
    """Every measurement of the profile; returns the JSON-ready result. ``save(result)`` is called
    after each measurement with what is measured so far (a killed or failing run keeps it)."""
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
    save(result)
    result["loader"] = loader_batch_s(step_config(profile.step, Variant(), profile.batch, profile.crop), source, device)
    save(result)
    log("JPEG loader (COCO-style batch of 16)")
    result["loader_jpeg"] = jpeg_loader_batch_s(source, batches=2 if profile.name == "quick" else 5)
    save(result)
    result["variants"] = bench_variants(profile, device, source, peak)
    save(result)
    result["scaling"] = bench_scaling(profile, device, source)
    save(result)
    result["full_step"] = bench_full_step(profile, device, source, peak)
    save(result)
    log("purification at 224 px")
    cuda = device.type == "cuda"
    result["purify_224"] = purify_throughput(profile.purify_model, profile.purify_batch, 224, device,
                                             profile.purify_reps, bf16=cuda, channels_last=cuda, peak_tflops=peak)
    save(result)
    log(f"photo {profile.photo[1]}x{profile.photo[0]} in {profile.tile} px tiles")
    result["photo"] = purify_photo(profile.photo_model, profile.photo, profile.tile, device, bf16=cuda)
    save(result)
    if device.type == "cpu" and profile.name != "quick":
        result["cpu_paths"] = bench_cpu_paths(threads=torch.get_num_threads(), log=log)
        save(result)
    result["machine"]["other_processes_cpu_share"] = load.stop()
    result["headline"] = {"device": "cpu" if device.type == "cpu" else device_name(device),
                          "step_overhead_ratio": result["step"]["step_overhead_ratio"],
                          "step_s": result["step"]["whole"]["step_s"], "mfu": result["step"]["whole"]["mfu"],
                          "purify_224_img_per_s": result["purify_224"]["img_per_s"]}
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, seconds)")
    parser.add_argument("--full", action="store_true", help="the paper's nrp_full step: batch 16, 128 px, VGG16, T=10 (GPU work)")
    parser.add_argument("--out", default="outputs/bench", help="folder for bench.json and bench.md")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--variants", help="comma-separated fast paths to time as whole steps, of "
                        f"{','.join(VARIANTS)} (default: the profile's; each compile variant costs minutes "
                        "of compilation at full size)")
    parser.add_argument("--headline", choices=tuple(VARIANTS), help="the variant broken into parts and swept "
                        "(default: fast on CUDA, fp32 on CPU)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the batch / crop / SSP-steps sweep")
    parser.add_argument("--cpu-paths-only", action="store_true", help="only the CPU fast-path table "
                        "(nrp_bench/cpu_paths.py; about 10 min on 2 cores), written to cpu_paths.json and .md")
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
    if args.variants:
        names = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        if unknown := [v for v in names if v not in VARIANTS]:
            raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        profile = dataclasses.replace(profile, variants=names)
    if args.headline:
        profile = dataclasses.replace(profile, headline=args.headline)
    if args.no_scaling:
        profile = dataclasses.replace(profile, scaling={})
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cpu_paths_only:
        from nrp_bench.cpu_paths import markdown as cpu_paths_markdown

        paths = {"machine": machine_info(torch.device("cpu")), **bench_cpu_paths(threads=args.threads, log=log),
                 "bench_wall_s": None}
        paths["bench_wall_s"] = time.perf_counter() - start
        (out / "cpu_paths.json").write_text(json.dumps(paths, indent=2, default=str))
        (out / "cpu_paths.md").write_text(table := cpu_paths_markdown(paths))
        print(table)
        return paths
    partial = out / "bench.partial.json"  # what is measured so far; removed once bench.json is written

    def save(result: dict) -> None:
        partial.write_text(json.dumps({**result, "bench_wall_s": time.perf_counter() - start}, indent=2, default=str))

    try:
        result = run(device, profile, save)
    finally:
        torch.set_num_threads(threads)
    result["bench_wall_s"] = time.perf_counter() - start
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str))
    table = markdown(result)
    (out / "bench.md").write_text(table)
    partial.unlink(missing_ok=True)
    print(table)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} in {result['bench_wall_s']:.0f} s")
    print(last_line(result["headline"]))
    return result


if __name__ == "__main__":
    main()
