"""The training-step measurements: the step broken into its parts next to the whole step, the fast
paths, how the step grows, and one full-size step. Times in seconds, memory in MiB."""
from __future__ import annotations

import dataclasses

import torch
from omegaconf import OmegaConf

from nrp_bench.flops import count_flops, mfu
from nrp_bench.machine import log
from nrp_bench.probes import summarize, timed_call, warm_up
from nrp_bench.profiles import VARIANTS, Profile, headline_variant, step_config
from nrp_bench.step_parts import prepared_module, step_parts
from nrp_bench.trainer_step import eager_step_flops, trainer_step


def bench_step_breakdown(profile: Profile, device: torch.device, source, peak) -> dict:
    """Parts in isolation and the whole step (Trainer) for the headline variant.

    The parts run on their own copy of the module and their own batch. After warm-up, one call of
    every part follows each timed Trainer step, so that parts and whole steps see the same machine
    load (this CPU is shared); the ratio is the median whole step over the sum of part medians."""
    name, variant = headline_variant(device, profile.headline)
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
    _, variant = headline_variant(device, profile.headline)
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
