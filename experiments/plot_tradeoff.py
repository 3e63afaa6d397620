"""The clean-vs-robust trade-off of every defence of an evaluation run, one panel per victim:
x = share of clean top-1 predictions the defence changes, y = transfer attack success behind it
(both %, with 95% Wilson intervals). Lower-left is better; JPEG's qualities are joined into a curve.

    python experiments/plot_tradeoff.py outputs/eval/heldout --attack MI-FGSM --source mobilenet_v2 \
        --out docs/img/tradeoff_heldout.png
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from nrp_lightning.evaluation.metrics import successes, wilson_interval
from nrp_lightning.evaluation.plots import save_figure


def load_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]


def points(rows: list[dict], victim: str, attack: str, source: str) -> dict[str, tuple[float, float, int]]:
    """``defence -> (clean changed %, attack success %, n)`` for one victim."""
    clean = {r["defense"]: r for r in rows if r["kind"] == "clean" and r["victim"] == victim}
    hit = {r["defense"]: r for r in rows if r["kind"] == "transfer" and r["victim"] == victim
           and r["attack"] == attack and r["source"] == source}
    return {d: (clean[d]["success_rate"], hit[d]["success_rate"], hit[d]["n"]) for d in clean if d in hit}


def _jpeg_quality(name: str) -> int | None:
    if name == "JPEG":
        return 75
    m = re.fullmatch(r"JPEG(\d+)", name)
    return int(m.group(1)) if m else None


def plot(rows: list[dict], victims: list[str], attack: str, source: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(victims), figsize=(5 * len(victims), 4.6), squeeze=False)
    for ax, victim in zip(axes[0], victims):
        pts = points(rows, victim, attack, source)
        jpeg = sorted((q, pts[d]) for d in pts if (q := _jpeg_quality(d)) is not None)
        if jpeg:
            ax.plot([p[0] for _, p in jpeg], [p[1] for _, p in jpeg], "-", color="tab:blue", alpha=0.5)
        for name, (x, y, n) in pts.items():
            (xl, xh), (yl, yh) = ((100 * lo, 100 * hi) for lo, hi in (wilson_interval(successes(v, n), n) for v in (x, y)))
            color = "tab:red" if name.startswith("NRP") else ("tab:blue" if _jpeg_quality(name) else "0.3")
            ax.errorbar(x, y, xerr=[[x - xl], [xh - x]], yerr=[[y - yl], [yh - y]], fmt="o", color=color,
                        ms=5, capsize=2, elinewidth=0.6)
            q = _jpeg_quality(name)
            ax.annotate(f"JPEG q{q}" if q else name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(xlabel="clean top-1 changed by the defence (%)", ylabel=f"{attack} success (%)",
               title=f"{attack} from {source} -> {victim}", xlim=(-3, 103), ylim=(-3, 103))
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an evaluation run folder (holds results.jsonl)")
    parser.add_argument("--attack", default="MI-FGSM")
    parser.add_argument("--source", default="mobilenet_v2")
    parser.add_argument("--victims", nargs="+", default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    parser.add_argument("--out", type=Path, help="PNG to write (default RUN/tradeoff.png)")
    args = parser.parse_args()
    print(plot(load_rows(args.run), args.victims, args.attack, args.source, args.out or args.run / "tradeoff.png"))


if __name__ == "__main__":
    main()
