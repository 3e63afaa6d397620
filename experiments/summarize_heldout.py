"""Compact markdown tables of an evaluation run for lab/NOTEBOOK.md: per victim, each
defence's clean PSNR, the share of clean top-1 predictions it changes (all images and the
confident subset) and the success of every transfer attack behind it, with 95% Wilson intervals.

    python experiments/summarize_heldout.py outputs/eval/heldout [--victims efficientnet_lite0 ...]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from nrp_lightning.evaluation.tables import md_table, rate_cell


def psnr_cell(row: dict) -> str:
    """Mean PSNR; a gated defence hands some images on untouched (∞ each), so its mean is ∞ and
    the cell gives the lowest PSNR of the images it changed instead."""
    if math.isinf(row["psnr_mean"]):
        return f"∞ (min {row['psnr_min']:.1f})"
    return f"{row['psnr_mean']:.1f}"


def table(rows: list[dict], victim: str, defenses: list[str]) -> str:
    fidelity = {r["defense"]: r for r in rows if r["kind"] == "fidelity"}
    clean = {r["defense"]: r for r in rows if r["kind"] == "clean" and r["victim"] == victim}
    attacks = sorted({(r["attack"], r["source"]) for r in rows if r["kind"] == "transfer" and r["victim"] == victim},
                     key=lambda a: (a[0] != "MI-FGSM", a[0] != "DIM", a))
    hit = {(r["attack"], r["source"], r["defense"]): r for r in rows if r["kind"] == "transfer" and r["victim"] == victim}
    n_conf = next((r["n_confident"] for r in clean.values()), 0)
    header = ["defence", "PSNR(D(x), x) dB", "clean changed %", f"changed, confident ({n_conf}) %",
              *[f"{a} from {s} %" for a, s in attacks]]
    body = []
    for d in defenses:
        if d not in clean:
            continue
        c = clean[d]
        psnr = "∞" if d == "none" else (psnr_cell(fidelity[d]) if d in fidelity else "-")
        cells = [d, psnr, rate_cell(c, "changed"), rate_cell(c, "changed_confident")]
        cells += [rate_cell(hit.get((a, s, d)), "success_rate") for a, s in attacks]
        body.append(cells)
    return md_table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an evaluation run folder (holds results.jsonl)")
    parser.add_argument("--victims", nargs="+", default=["efficientnet_lite0", "efficientnet_lite1",
                                                          "efficientnet_lite2", "mobilenet_v2"])
    parser.add_argument("--defenses", nargs="+", default=["none", "JPEG90", "JPEG", "JPEG50", "JPEG30", "Median", "R&P",
                                                           "TVM", "BitDepth", "Blur", "NRP", "NRP_dynamic", "NRP_gated",
                                                           "NRP_dynamic_gated"])
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run / "results.jsonl").read_text().splitlines() if line.strip()]
    for victim in args.victims:
        print(f"\n#### {victim}\n\n{table(rows, victim, args.defenses)}")


if __name__ == "__main__":
    main()
