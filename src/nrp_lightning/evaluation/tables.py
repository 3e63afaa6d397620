"""The report of a grid run: markdown tables laid out like the paper's Table 1, Table 5 and
Table 3 (adaptive attacks), and ``write_reports``, which writes them with the CSV and the figures."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from nrp_lightning.evaluation.grid import CLEAN, NO_DEFENSE, Grid, adv_sets
from nrp_lightning.evaluation.plots import plot_accuracy_vs_eps, sample_grid


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _lookup(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["kind"], r["source"], r["attack"], r["defense"], r["victim"]): r for r in rows}


def _sources_of(grid: Grid) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s_name, a_name, _, _, in_tables in adv_sets(grid):
        if in_tables:
            out.setdefault(s_name, []).append(a_name)
    return out


def table1(rows: list[dict], grid: Grid, victim: str, metric: str = "success_rate") -> str:
    """Table 1 layout: one block per source, a row per defence, a column per attack."""
    idx = _lookup(rows)
    attacks = [a for a in grid.attacks]
    body = []
    for s_name, a_names in _sources_of(grid).items():
        for d_name in grid.defenses:
            cells = [idx.get(("transfer", s_name, a, d_name, victim), {}).get(metric, "-") if a in a_names else "-"
                     for a in attacks]
            body.append([s_name, d_name, *cells])
    return md_table(["Source", "Defence", *attacks], body)


def table5(rows: list[dict], grid: Grid) -> str:
    """Table 5 layout: a row per (source, attack), top-1 / top-5 per undefended victim ('*' marks
    white-box cells, where the victim is the source)."""
    idx = _lookup(rows)
    header = ["Source", "Attack"] + [f"{v} {m}" for v in grid.victims for m in ("T-1", "T-5")]
    body = [["-", CLEAN] + [idx[(CLEAN, "-", CLEAN, NO_DEFENSE, v)][m] for v in grid.victims for m in ("top1", "top5")]]
    for s_name, a_names in _sources_of(grid).items():
        for a_name in a_names:
            cells = []
            for v in grid.victims:
                r = idx.get(("transfer", s_name, a_name, NO_DEFENSE, v))
                star = "*" if v == s_name or v in getattr(grid.sources.get(s_name), "name", "") else ""
                cells += [f"{r['top1']:.1f}{star}", f"{r['top5']:.1f}{star}"] if r else ["-", "-"]
            body.append([s_name, a_name, *cells])
    return md_table(header, body)


def adaptive_table(rows: list[dict], grid: Grid, victim: str) -> str:
    """Per defence: clean top-1, the strongest transfer attack's success rate, each adaptive one's."""
    transfer = [r for r in rows if r["kind"] == "transfer" and r["victim"] == victim]
    adaptive = [r for r in rows if r["kind"] == "adaptive" and r["victim"] == victim]
    header = ["Defence", "clean top-1", "best transfer success", *grid.adaptive]
    body = []
    for d_name in grid.defenses:
        clean = next((r["top1"] for r in rows if r["kind"] == CLEAN and r["defense"] == d_name and r["victim"] == victim), "-")
        best = max((r["success_rate"] for r in transfer if r["defense"] == d_name), default="-")
        cells = []
        for a_name in grid.adaptive:
            r = next((r for r in adaptive if r["defense"] == d_name and r["attack"].startswith(grid.adaptive[a_name].name)), None)
            cells.append(f"{r['success_rate']:.1f} ({r['attack']})" if r else "-")
        body.append([d_name, clean, best, *cells])
    return md_table(header, body)


def missing_adaptive(rows: list[dict], grid: Grid) -> list[str]:
    """Defences with no adaptive-attack row on some defended victim."""
    have = {(r["defense"], r["victim"]) for r in rows if r["kind"] == "adaptive"}
    return [d for d in grid.defenses for v in grid.defended_victims if d != NO_DEFENSE and (d, v) not in have]


def write_reports(rows: list[dict], grid: Grid, out_dir: Path, cache_dir: Path, elapsed_s: float | None = None) -> Path:
    """``results.csv``, ``report.md``, ``accuracy_vs_eps.png``, ``samples.png`` in ``out_dir``."""
    columns = ["kind", "source", "attack", "eps", "defense", "victim", "n", "reference", "top1", "top5", "success_rate", "key"]
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: [str(r[c]) for c in columns[:6]]))
    ref = "true labels" if grid.data.labelled else "each victim's clean top-1 prediction (fooling rate)"
    parts = [f"# Evaluation report\n\nData: {grid.data.description} ({len(grid.data)} images). Accuracy is measured "
             f"against {ref}. Attack success rate = 100 - top-1 (lower is better for a defence)."]
    if elapsed_s is not None:
        parts.append(f"Wall time of this run: {elapsed_s / 60:.1f} min.")
    lacking = missing_adaptive(rows, grid)
    if lacking:
        parts.append(f"**No adaptive attack (BPDA/EOT) was run against: {', '.join(sorted(set(lacking)))}. "
                     "Their numbers below are against transfer attacks only and overstate robustness.**")
    for victim in grid.defended_victims:
        parts.append(f"## Table 1 layout: attack success rate (%) on {victim} behind each defence\n\n"
                     + table1(rows, grid, victim))
        parts.append(f"## Top-1 accuracy (%) of {victim} behind each defence (Fig. 5 layout)\n\n"
                     + table1(rows, grid, victim, "top1"))
        if grid.adaptive:
            parts.append(f"## Adaptive attacks on {victim}: success rate (%) through each defence\n\n"
                         + adaptive_table(rows, grid, victim))
    parts.append("## Table 5 layout: top-1 / top-5 (%) of undefended victims ('*' = white-box)\n\n" + table5(rows, grid))
    if plot_accuracy_vs_eps(rows, grid, out_dir / "accuracy_vs_eps.png"):
        parts.append("![accuracy vs eps](accuracy_vs_eps.png)")
    sample_grid(grid, cache_dir, out_dir / "samples.png")
    parts.append("![clean / adversarial / defended](samples.png)")
    report = out_dir / "report.md"
    report.write_text("\n\n".join(parts) + "\n")
    return report
