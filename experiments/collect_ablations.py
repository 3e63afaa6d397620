"""Collect the final report of every job of an ablation sweep into a markdown table.

    python experiments/collect_ablations.py outputs/multirun/demo/2026-11-24_14-07-24 [--out table.md] [--plot chart.png]

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


def plot_report(rows: list[dict], path: Path) -> Path:
    """Bars of each job's final held-out numbers (same SSP for every ablation), the adversarial
    input's value dashed: the comparison W&B shows with runs grouped by the ``ablation`` tag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["ablation"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (key, adv_key, title) in zip(axes, [("feat_dist_purified", "feat_dist_adv", "feature distance of P(x′) (lower is better)"),
                                                ("psnr_purified", "psnr_adv", "PSNR of P(x′) in dB (higher is better)")]):
        ax.bar(names, [r[key] for r in rows], color="tab:blue")
        ax.axhline(rows[0][adv_key], color="tab:red", linestyle="--", label="SSP input x′")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder: outputs/multirun/<experiment>/<date_time>")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--plot", type=Path, help="also draw the table as bar charts to this PNG")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"no job with report.json under {args.sweep_dir} (did the jobs run with report=true?)", file=sys.stderr)
        return 1
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    if args.plot:
        print(f"chart: {plot_report(rows, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
