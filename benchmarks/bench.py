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
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from nrp_bench.flops import count_flops, measure_bf16_peak_tflops, mfu  # noqa: E402
from nrp_bench.loader import jpeg_loader_batch_s, loader_batch_s  # noqa: E402
from nrp_bench.machine import CpuLoad, device_name, log, machine_info, sync  # noqa: E402
from nrp_bench.probes import MemoryProbe, summarize, time_fn, timed_call, warm_up  # noqa: E402
from nrp_bench.profiles import VARIANTS, Profile, Variant, headline_variant, profile_for, step_config  # noqa: E402
from nrp_bench.step_parts import prepared_module, step_parts  # noqa: E402
from nrp_bench.trainer_step import eager_step_flops, trainer_step  # noqa: E402
from nrp_lightning.models.purifier import RRDBPurifier, purify  # noqa: E402

SCHEMA = "nrp-bench/1"
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
