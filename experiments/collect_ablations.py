"""Collect the final report of every job of an ablation sweep into a markdown table.

    python experiments/collect_ablations.py outputs/multirun/demo/2026-11-24_14-07-24 [--out table.md]

Each job folder holds ``report.json`` (written by train.py with report=true): feature distance
(MAE in F's space) and PSNR of SSP adversaries of the held-out crops, before and after the
job's purifier. Every ablation is measured under the same SSP (``val_attack``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

COLUMNS = ("feat_dist_adv", "feat_dist_purified", "psnr_adv", "psnr_purified")


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for report in sorted(sweep_dir.glob("*/report.json"), key=lambda p: int(p.parent.name.split("_", 1)[0])):
        job = report.parent
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        rows.append({"job": job.name, "ablation": cfg.get("ablation_name", "?"), **json.loads(report.read_text())})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| ablation | feat. dist. x′ | feat. dist. P(x′) | PSNR x′ (dB) | PSNR P(x′) (dB) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['ablation']} | {r['feat_dist_adv']:.4f} | {r['feat_dist_purified']:.4f} | "
                     f"{r['psnr_adv']:.2f} | {r['psnr_purified']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder: outputs/multirun/<experiment>/<date_time>")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"no job with report.json under {args.sweep_dir} (did the jobs run with report=true?)", file=sys.stderr)
        return 1
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
