"""Training curves of a run as one PNG, the panels a W&B dashboard shows: each term of Eq. 8,
the critic's loss, PSNR and feature distance (adversarial vs purified) against iteration.

    python experiments/plot_training_curves.py outputs/nrp_cpu-none [--out docs/img/nrp_cpu_curves.png]

Reads ``RUN/csv/metrics.csv`` (the CSV logger; every run writes it). Its ``step`` column is the
iteration (Lightning's logging step counts batches, not the two optimizer steps of each). Raw
points are faint, a moving average (``--smooth`` logged points) is drawn over them.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from nrp_lightning.evaluation.plots import save_figure

PANELS = (
    ("L_feat (MAE in F)", ["train/loss_feat"]),
    ("L_img", ["train/loss_img"]),
    ("L_adv (RaGAN, purifier)", ["train/loss_adv"]),
    ("critic loss", ["train/loss_critic"]),
    ("PSNR to x (dB)", ["train/psnr_adv", "train/psnr_purified", "val/psnr_adv", "val/psnr_purified"]),
    ("feature distance to F(x)", ["train/feat_dist_adv", "train/feat_dist_purified", "val/feat_dist_adv",
                                  "val/feat_dist_purified"]),
)


def read_metrics(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``name -> [(iteration, value), ...]`` from a Lightning CSV log (blank cells skipped)."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            it = float(row["step"])
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    series.setdefault(key, []).append((it, float(value)))
    return series


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(run: Path, out: Path, smooth: int = 10) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(run / "csv" / "metrics.csv")
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            if key not in series:
                continue
            xs, ys = zip(*series[key])
            label = key.replace("train/", "train ").replace("val/", "val ")
            if key.startswith("val/"):
                ax.plot(xs, ys, marker="o", label=label)
            else:
                line, = ax.plot(xs, ys, alpha=0.25, linewidth=0.8)
                ax.plot(xs, moving_average(list(ys), smooth), color=line.get_color(), label=label)
        ax.set(title=title, xlabel="iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"training curves: {run}")
    return save_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run folder (holds csv/metrics.csv)")
    parser.add_argument("--out", type=Path, help="PNG to write (default RUN/curves.png)")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average window in logged points")
    args = parser.parse_args()
    if not (args.run / "csv" / "metrics.csv").is_file():
        parser.error(f"{args.run}/csv/metrics.csv not found: is {args.run} a training run folder?")
    print(plot(args.run, args.out or args.run / "curves.png", args.smooth))


if __name__ == "__main__":
    main()
