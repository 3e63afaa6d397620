"""The report: the markdown tables of a benchmark result and its one-line summary."""
from __future__ import annotations

import math


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
    if "cpu_paths" in result:
        from nrp_bench.cpu_paths import markdown as cpu_paths_markdown

        lines += ["", "## CPU fast paths (each setting in a fresh process)", "", cpu_paths_markdown(result["cpu_paths"])]
    return "\n".join(lines) + "\n"


def last_line(h: dict) -> str:
    """The machine-readable summary line."""
    mfu_s = h["mfu"] if isinstance(h["mfu"], str) else f"{h['mfu']:.3f}"
    return (f"bench: device={h['device']} step_overhead_ratio={h['step_overhead_ratio']:.3f} "
            f"step_s={h['step_s']:.4g} mfu={mfu_s} purify_224_img_per_s={h['purify_224_img_per_s']:.4g}")
