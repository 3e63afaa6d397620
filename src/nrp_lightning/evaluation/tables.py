"""The report of a grid run: markdown tables laid out like the paper's Table 1, Table 5 and
Table 3 (adaptive attacks), the clean-image cost of each defence, the same on each victim's
confident subset, and ``write_reports``, which writes them with the CSV and the figures.

Every rate is shown with its 95% Wilson interval over the images it counts: ``72.0 [55.1, 84.2]``.
On labelled data, two defences are compared image for image (``paired_table``: the exact McNemar
test on the images only one of them classifies right), and the paper's own Table 1 rows can be
printed beside ours (``paper_table1``). Rows of older runs that lack a field show ``-`` there
(rerunning the grid fills them in).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from nrp_lightning.evaluation.grid import CLEAN, FIDELITY, NO_DEFENSE, ROW_FIELDS, Grid, adv_sets
from nrp_lightning.evaluation import paper
from nrp_lightning.evaluation.metrics import mcnemar_exact, successes, wilson_interval
from nrp_lightning.evaluation.plots import plot_accuracy_vs_eps, sample_grid

MISSING = "-"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def rate_cell(row: dict | None, metric: str) -> str:
    """A row's rate (%) with its 95% Wilson interval, e.g. ``72.0 [55.1, 84.2]``. ``metric``: a rate
    field over all ``n`` images (``top1``, ``top5``, ``success_rate``, ``changed``) or over the
    ``n_confident`` images of the confident subset (``top1_confident``, ``changed_confident``,
    ``success_confident`` = 100 - top1_confident). ``-`` where the row or the field is missing."""
    row = row or {}
    if metric == "success_confident":
        top1 = row.get("top1_confident")
        value = None if top1 is None else round(100.0 - top1, 2)
    else:
        value = row.get(metric)
    if metric == "success_clean_correct":
        n = row.get("n_clean_correct")
    else:
        n = row.get("n_confident" if metric.endswith("_confident") else "n")
    if value is None or not n:
        return MISSING
    low, high = wilson_interval(successes(value, n), n)
    return f"{value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _lookup(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["kind"], r["source"], r["attack"], r["defense"], r["victim"]): r for r in rows}


def _clean_row(idx: dict[tuple, dict], defense: str, victim: str) -> dict | None:
    return idx.get((CLEAN, "-", CLEAN, defense, victim))


def _sources_of(grid: Grid) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s_name, a_name, _, _, in_tables in adv_sets(grid):
        if in_tables:
            out.setdefault(s_name, []).append(a_name)
    return out


def table1(rows: list[dict], grid: Grid, victim: str, metric: str = "success_rate", clean_metric: str | None = None) -> str:
    """Table 1 layout: one block per source, a row per defence, a column per attack; with
    ``clean_metric`` a first column of that rate on the clean images behind the defence."""
    idx = _lookup(rows)
    attacks = list(grid.attacks)
    body = []
    for s_name, a_names in _sources_of(grid).items():
        for d_name in grid.defenses:
            clean = [rate_cell(_clean_row(idx, d_name, victim), clean_metric)] if clean_metric else []
            cells = [rate_cell(idx.get(("transfer", s_name, a, d_name, victim)), metric) if a in a_names else MISSING
                     for a in attacks]
            body.append([s_name, d_name, *clean, *cells])
    clean_header = {"top1": "clean", "success_clean_correct": "clean (made wrong)"}.get(clean_metric, "clean top-1 changed")
    return md_table(["Source", "Defence", *([clean_header] if clean_metric else []), *attacks], body)


def table5(rows: list[dict], grid: Grid) -> str:
    """Table 5 layout: a row per (source, attack), top-1 / top-5 per undefended victim ('*' marks
    white-box cells, where the victim is the source)."""
    idx = _lookup(rows)
    header = ["Source", "Attack"] + [f"{v} {m}" for v in grid.victims for m in ("T-1", "T-5")]
    body = [["-", CLEAN] + [rate_cell(_clean_row(idx, NO_DEFENSE, v), m) for v in grid.victims for m in ("top1", "top5")]]
    for s_name, a_names in _sources_of(grid).items():
        for a_name in a_names:
            cells = []
            for v in grid.victims:
                r = idx.get(("transfer", s_name, a_name, NO_DEFENSE, v))
                star = "*" if r and (v == s_name or v in getattr(grid.sources.get(s_name), "name", "")) else ""
                cells += [rate_cell(r, "top1") + star, rate_cell(r, "top5") + star]
            body.append([s_name, a_name, *cells])
    return md_table(header, body)


def adaptive_row(rows: list[dict], victim: str, defense: str, name: str) -> dict | None:
    """The row of adaptive attack ``name`` through ``defense`` onto ``victim``: its label is the name
    plus what it added against that defence (``+EOT10``), so it is found by prefix."""
    return next((r for r in rows if r["kind"] == "adaptive" and r["victim"] == victim and r["defense"] == defense
                 and r["attack"].startswith(name)), None)


def adaptive_table(rows: list[dict], grid: Grid, victim: str) -> str:
    """Per defence: clean top-1, the strongest transfer attack's success rate, each adaptive one's."""
    idx = _lookup(rows)
    transfer = [r for r in rows if r["kind"] == "transfer" and r["victim"] == victim]
    header = ["Defence", "clean top-1", "best transfer success", *grid.adaptive]
    body = []
    for d_name in grid.defenses:
        best = max((r for r in transfer if r["defense"] == d_name), key=lambda r: r["success_rate"], default=None)
        cells = []
        for a_name in grid.adaptive:
            r = adaptive_row(rows, victim, d_name, grid.adaptive[a_name].name)
            cells.append(f"{rate_cell(r, 'success_rate')} ({r['attack']})" if r else MISSING)
        body.append([d_name, rate_cell(_clean_row(idx, d_name, victim), "top1"), rate_cell(best, "success_rate"), *cells])
    return md_table(header, body)


def fidelity_table(rows: list[dict], grid: Grid) -> str:
    """Per defence: PSNR(D(x), x) of the clean images (mean and worst image) and, per defended
    victim, the share of its clean top-1 predictions that the defence changes."""
    idx = _lookup(rows)
    body = []
    for d_name in grid.defenses:
        psnr = idx.get((FIDELITY, "-", CLEAN, d_name, "-"), {})
        changed = [rate_cell(_clean_row(idx, d_name, v), "changed") for v in grid.defended_victims]
        body.append([d_name, psnr.get("psnr_mean", MISSING), psnr.get("psnr_min", MISSING), *changed])
    header = ["Defence", "PSNR mean (dB)", "PSNR min (dB)", *(f"{v}: clean top-1 changed (%)" for v in grid.defended_victims)]
    return md_table(header, body)


def paired_cell(row: dict | None, ref: dict | None) -> str:
    """``row`` against ``ref`` (same images, same victim) image for image: the top-1 difference in
    points, then ``b/c`` (images only ``row``'s defence gets right / only ``ref``'s) and the exact
    McNemar p, e.g. ``+4.2 (19/6, p=0.015)``; ``-`` where either lacks per-image outcomes."""
    if not row or not ref or "correct" not in row or "correct" not in ref or len(row["correct"]) != len(ref["correct"]):
        return MISSING
    pairs = list(zip(row["correct"], ref["correct"]))
    b, c = pairs.count(("1", "0")), pairs.count(("0", "1"))
    return f"{100.0 * (b - c) / len(pairs):+.1f} ({b}/{c}, p={mcnemar_exact(b, c):.2g})"


def paired_table(rows: list[dict], grid: Grid, victim: str, reference: str, skip: tuple[str, ...] = ()) -> str:
    """Every defence but ``skip`` against ``reference`` on ``victim``, image for image: a row per
    defence, a column for the clean images, each (source, attack) set and each adaptive attack
    (crafted through each defence apart, but on the same images), each a ``paired_cell``."""
    idx = _lookup(rows)
    cells = [(CLEAN, "-", CLEAN)] + [("transfer", s, a) for s, a_names in _sources_of(grid).items() for a in a_names]

    def find(kind: str, source: str, attack: str, d_name: str) -> dict | None:
        if kind == "adaptive":
            return adaptive_row(rows, victim, d_name, attack)
        return idx.get((kind, source, attack, d_name, victim))

    cells += [("adaptive", "white-box", grid.adaptive[a].name) for a in grid.adaptive]
    body = []
    for d_name in grid.defenses:
        if d_name != reference and d_name not in skip:
            body.append([d_name, *(paired_cell(find(k, s, a, d_name), find(k, s, a, reference)) for k, s, a in cells)])
    return md_table(["Defence", *(a if k == CLEAN else f"{a} ({s})" for k, s, a in cells)], body)


def paper_table1() -> str:
    """The paper's Table 1 rows for JPEG and NRP (attack success rate %, IncRes-v2ens)."""
    body = [[source, d_name, *values] for source, by_defense in paper.TABLE1.items() for d_name, values in by_defense.items()]
    clean = ", ".join(f"{k} {v}" for k, v in paper.TABLE2_CLEAN.items())
    return (f"From the paper (Table 1; clean top-1 of {paper.TABLE1_VICTIM} from its Table 2: {clean}). Other models "
            "than ours: Inception sources and victim, the authors' purifier trained on COCO on a GPU; a scale to read "
            "our rows against, not a like-for-like comparison.\n\n"
            + md_table(["Source", "Defence", *paper.TABLE1_ATTACKS], body))


def missing_adaptive(rows: list[dict], grid: Grid) -> list[str]:
    """Defences with no adaptive-attack row on some defended victim."""
    have = {(r["defense"], r["victim"]) for r in rows if r["kind"] == "adaptive"}
    return [d for d in grid.defenses for v in grid.defended_victims if d != NO_DEFENSE and (d, v) not in have]


def _confident_heading(rows: list[dict], grid: Grid, victim: str) -> str:
    clean = _clean_row(_lookup(rows), NO_DEFENSE, victim) or {}
    share = f"{clean['n_confident']} of {clean['n']}" if "n_confident" in clean else "the"
    return (f"## Confident subset of {victim}: {share} images it classifies with clean top-1 probability "
            f">= {grid.confident_threshold}; attack success rate (%) behind each defence")


def write_reports(rows: list[dict], grid: Grid, out_dir: Path, cache_dir: Path, elapsed_s: float | None = None) -> Path:
    """``results.csv``, ``report.md``, ``accuracy_vs_eps.png``, ``samples.png`` in ``out_dir``."""
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: [str(r[c]) for c in ROW_FIELDS[:6]]))
    ref = "true labels" if grid.data.labelled else "each victim's clean top-1 prediction (fooling rate)"
    parts = [f"# Evaluation report\n\nData: {grid.data.description} ({len(grid.data)} images). Accuracy is measured "
             f"against {ref}. Attack success rate = 100 - top-1 (lower is better for a defence). Every rate (%) is "
             "followed by its 95% Wilson confidence interval over the images it counts."]
    if elapsed_s is not None:
        parts.append(f"Wall time of this run: {elapsed_s / 60:.1f} min.")
    lacking = missing_adaptive(rows, grid)
    if lacking:
        parts.append(f"**No adaptive attack (BPDA/EOT) was run against: {', '.join(sorted(set(lacking)))}. "
                     "Their numbers below are against transfer attacks only and overstate robustness.**")
    if grid.defended_victims:
        parts.append("## Clean images behind each defence\n\nA defence that removes perturbations by destroying "
                     "images is no defence: PSNR(D(x), x) on the clean images, and the share of each victim's clean "
                     "top-1 predictions that the defence changes.\n\n" + fidelity_table(rows, grid))
    for victim in grid.defended_victims:
        parts.append(f"## Table 1 layout: attack success rate (%) on {victim} behind each defence\n\n"
                     + table1(rows, grid, victim))
        parts.append(_confident_heading(rows, grid, victim) + "\n\n"
                     + table1(rows, grid, victim, "success_confident", clean_metric="changed_confident"))
        parts.append(f"## Top-1 accuracy (%) of {victim} behind each defence (Fig. 5 layout)\n\n"
                     + table1(rows, grid, victim, "top1", clean_metric="top1"))
        if grid.data.labelled:
            parts.append(f"## Attack success rate (%) on {victim} among the images it classifies right when clean"
                         f"\n\nThe first column: the share of those images that the defence alone makes wrong.\n\n"
                         + table1(rows, grid, victim, "success_clean_correct", clean_metric="success_clean_correct"))
            for i, reference in enumerate(grid.paired_with):
                parts.append(f"## Paired against {reference} on {victim}, image for image\n\nEach cell: top-1 of the "
                             f"defence minus top-1 behind {reference} (points), then b/c = images only the defence / "
                             f"only {reference} classifies right, and the exact McNemar p-value (two-sided).\n\n"
                             + paired_table(rows, grid, victim, reference, skip=tuple(grid.paired_with[:i])))
        if grid.adaptive:
            parts.append(f"## Adaptive attacks on {victim}: success rate (%) through each defence\n\n"
                         + adaptive_table(rows, grid, victim))
    if grid.paper_table1:
        parts.append("## The paper's Table 1 (JPEG and NRP rows)\n\n" + paper_table1())
    parts.append("## Table 5 layout: top-1 / top-5 (%) of undefended victims ('*' = white-box)\n\n" + table5(rows, grid))
    if plot_accuracy_vs_eps(rows, grid, out_dir / "accuracy_vs_eps.png"):
        parts.append("![accuracy vs eps](accuracy_vs_eps.png)")
    sample_grid(grid, cache_dir, out_dir / "samples.png")
    parts.append("![clean / adversarial / defended](samples.png)")
    report = out_dir / "report.md"
    report.write_text("\n\n".join(parts) + "\n")
    return report
