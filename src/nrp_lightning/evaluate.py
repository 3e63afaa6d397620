"""The evaluation grid: sources x attacks x defences x victims, plus adaptive attacks per defence.

``python eval.py experiment=offline`` (or ``nrp-eval experiment=offline``) composes
``conf/eval.yaml`` and calls ``run_grid``. Adversarial examples are cached as uint8 tensors under
``cache_dir`` keyed by (source, attack and its parameters, data fingerprint, seed), and every scored
cell is appended to ``results.jsonl`` as soon as it exists, so a killed run resumes where it stopped
and a grid extended by a source, attack, defence or victim computes only what is new.

Outputs in the run folder: ``results.csv`` (every number), ``report.md`` (tables laid out like
Table 1, Table 5 and Table 3, plus the adaptive-attack table), ``accuracy_vs_eps.png``,
``samples.png`` (clean / adversarial / defended), and W&B tables and images when a logger is on.

Metrics, for a victim behind a defence: top-1 and top-5 accuracy against the true labels, or,
for unlabelled data, against the undefended victim's clean top-1 prediction; attack success rate
(Table 1, lower is better for the defence) = 100 - top-1.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from nrp_lightning.attacks.adaptive import AdaptiveAttack
from nrp_lightning.attacks.ssp import SSP
from nrp_lightning.attacks.transfer import untargeted_labels
from nrp_lightning.config import conf_dir, register_resolvers
from nrp_lightning.defenses.base import Defense, NoDefense
from nrp_lightning.eval_data import EvalSet, from_uint8, to_uint8
from nrp_lightning.images import atomic_write

log = logging.getLogger(__name__)

NO_DEFENSE = "none"
CLEAN = "clean"


# ----------------------------------------------------------------------------------------- attacks
@dataclass
class SelfSupervised:
    """SSP as a grid attack: crafted on a feature extractor, not on the grid's classifier sources
    (label-free), so it runs once with ``features`` as its source."""

    attack: SSP
    features: nn.Module
    name: str = "SSP"

    @property
    def source_name(self) -> str:
        return getattr(self.features, "name", type(self.features).__name__)

    def with_eps(self, eps: float) -> "SelfSupervised":
        return replace(self, attack=replace(self.attack, eps=eps, step_size=self.attack.step_size * eps / self.attack.eps))

    @property
    def eps(self) -> float:
        return self.attack.eps

    def __call__(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        return self.attack(x, self.features)


# ------------------------------------------------------------------------------------------- store
def cache_key(*parts: Any) -> str:
    """16 hex of sha256 over a JSON rendering of ``parts`` (reprs of attacks, names, fingerprints)."""
    return hashlib.sha256(json.dumps(parts, default=repr, sort_keys=True).encode()).hexdigest()[:16]


class AdversarialCache:
    """uint8 ``(N,3,S,S)`` adversarial sets in ``root/<key>.pt``, written atomically, loaded with
    ``weights_only=True``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.computed = 0  # sets crafted (not loaded) in this process

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file from an older torch or a full disk: recompute it
            log.warning("ignoring unreadable cache file %s (%s)", path, exc)
            return None

    def put(self, key: str, value: torch.Tensor) -> None:
        with atomic_write(self.path(key)) as f:
            torch.save(value, f)
        self.computed += 1


class ResultStore:
    """Rows (dicts) keyed by ``row["key"]``, appended to a JSON-lines file and flushed one by one."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = row
                except (json.JSONDecodeError, KeyError):
                    log.warning("skipping a torn line in %s (killed mid-write)", self.path)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict) -> None:
        self.rows[row["key"]] = row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def predict_top5(victim: nn.Module, defense: Defense, x_uint8: torch.Tensor, batch_size: int,
                 device: torch.device) -> torch.Tensor:
    """Top-5 classes ``(N, 5)`` of ``victim(defense(x))`` for uint8 images ``(N,3,S,S)``."""
    out = []
    for i in range(0, len(x_uint8), batch_size):
        x = from_uint8(x_uint8[i:i + batch_size]).to(device)
        out.append(victim(defense(x)).topk(5, dim=1).indices.cpu())
    return torch.cat(out)


def score(top5: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """top-1 / top-5 accuracy (%) of predictions ``(N,5)`` against ``reference (N,)``, and the
    attack success rate (%) = 100 - top-1."""
    top1 = 100.0 * (top5[:, 0] == reference).float().mean().item()
    top5_acc = 100.0 * (top5 == reference[:, None]).any(1).float().mean().item()
    return {"top1": round(top1, 2), "top5": round(top5_acc, 2), "success_rate": round(100.0 - top1, 2)}


def craft(attack: Callable, model: nn.Module | None, x_uint8: torch.Tensor, labels: torch.Tensor,
          batch_size: int, device: torch.device, seed: int, **kwargs) -> torch.Tensor:
    """Run ``attack(x, y, model, **kwargs)`` over the set in batches; uint8 ``(N,3,S,S)`` out."""
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(x_uint8), batch_size):
        x = from_uint8(x_uint8[i:i + batch_size]).to(device)
        y = labels[i:i + batch_size].to(device)
        out.append(to_uint8(attack(x, y, model, **kwargs).cpu()))
    return torch.cat(out)


def _name(module: Any, fallback: str) -> str:
    return getattr(module, "name", None) or fallback


# --------------------------------------------------------------------------------------------- grid
@dataclass
class Grid:
    """What to evaluate. Every mapping is ``table label -> object``.

    Args:
        data: the images.
        sources: classifiers the transfer attacks are crafted on (``Classifier``/``Ensemble``/...).
        attacks: ``GradientAttack`` (run on every source) or ``SelfSupervised`` (run once).
        defenses: input transformations; ``"none"`` is added when absent.
        victims: classifiers scored on every adversarial set (undefended: Table 5 layout).
        defended_victims: victims also scored behind every defence (Table 1 layout) and attacked
            adaptively; default: the last victim.
        adaptive: attacks run through each defence onto each defended victim (BPDA / EOT).
        eps_sweep: budgets (/255) for the accuracy-vs-eps plot, of ``sweep_attack`` on ``sweep_source``.
    """

    data: EvalSet
    sources: dict[str, nn.Module]
    attacks: dict[str, Any]
    defenses: dict[str, Defense]
    victims: dict[str, nn.Module]
    defended_victims: list[str] | None = None
    adaptive: dict[str, AdaptiveAttack] = field(default_factory=dict)
    eps_sweep: list[float] = field(default_factory=list)
    sweep_attack: str | None = None
    sweep_source: str | None = None
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if NO_DEFENSE not in self.defenses:
            self.defenses = {NO_DEFENSE: NoDefense(), **self.defenses}
        if self.defended_victims is None:
            self.defended_victims = [list(self.victims)[-1]]
        for name in self.defended_victims:
            if name not in self.victims:
                raise ValueError(f"defended victim {name!r} is not among the victims {list(self.victims)}")
        if self.eps_sweep:
            if self.sweep_attack not in self.attacks:
                raise ValueError(f"sweep_attack {self.sweep_attack!r} is not among the attacks {list(self.attacks)}")
            if not isinstance(self.attacks[self.sweep_attack], SelfSupervised) and self.sweep_source not in self.sources:
                raise ValueError(f"sweep_source {self.sweep_source!r} is not among the sources {list(self.sources)}")
        for label, defense in self.defenses.items():
            defense.label = label


def _adv_sets(grid: Grid) -> list[tuple[str, str, Any, nn.Module | None, bool]]:
    """(source label, attack label, attack, source model, in_tables) for every set to craft."""
    sets = []
    for a_name, attack in grid.attacks.items():
        if isinstance(attack, SelfSupervised):
            sets.append((attack.source_name, a_name, attack, None, True))
        else:
            sets.extend((s_name, a_name, attack, model, True) for s_name, model in grid.sources.items())
    if grid.eps_sweep:
        attack = grid.attacks[grid.sweep_attack]
        source = attack.source_name if isinstance(attack, SelfSupervised) else grid.sweep_source
        model = None if isinstance(attack, SelfSupervised) else grid.sources[grid.sweep_source]
        for eps in grid.eps_sweep:
            if eps != attack.eps:
                sets.append((source, grid.sweep_attack, attack.with_eps(eps), model, False))
    return sets


def run_grid(grid: Grid, out_dir: str | os.PathLike, cache_dir: str | os.PathLike,
             device: str | torch.device = "cpu", progress: bool = True) -> list[dict]:
    """Craft, defend and score everything in ``grid``; returns every row (also in ``results.jsonl``).
    Safe to kill and rerun with the same ``out_dir`` and ``cache_dir``."""
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache, store = AdversarialCache(cache_dir), ResultStore(out_dir / "results.jsonl")
    data = grid.data
    x_clean = to_uint8(data.images)
    fingerprint = data.fingerprint()
    for m in [*grid.sources.values(), *grid.victims.values(), *grid.defenses.values()]:
        m.to(device)
    for attack in grid.attacks.values():
        if isinstance(attack, SelfSupervised):
            attack.features.to(device)

    # Reference labels of each victim: the true labels, or its own clean prediction.
    clean_top5 = {v: predict_top5(m, grid.defenses[NO_DEFENSE], x_clean, grid.batch_size, device)
                  for v, m in grid.victims.items()}
    reference = {v: (data.labels if data.labelled else t5[:, 0]) for v, t5 in clean_top5.items()}
    label_kind = "true label" if data.labelled else "clean prediction"

    def defenses_for(victim: str) -> list[str]:
        return list(grid.defenses) if victim in grid.defended_victims else [NO_DEFENSE]

    adv_sets = _adv_sets(grid)
    adaptive_jobs = [(a, d, v) for a in grid.adaptive for d in grid.defenses for v in grid.defended_victims]
    n_cells = (sum(len(defenses_for(v)) for v in grid.victims) * (1 + len(adv_sets)))
    bar = tqdm(total=len(adv_sets) + n_cells + len(adaptive_jobs), desc="eval grid", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)

    def score_cell(adv_key: str, x_adv: torch.Tensor, meta: dict, victim: str, d_name: str) -> None:
        key = cache_key(adv_key, d_name, repr(grid.defenses[d_name]), victim, grid.seed)
        if key not in store:
            torch.manual_seed(int(key[:8], 16))  # randomised defences: reproducible draws per cell
            top5 = predict_top5(grid.victims[victim], grid.defenses[d_name], x_adv, grid.batch_size, device)
            store.add({"key": key, **meta, "defense": d_name, "victim": victim, "n": len(x_adv),
                       "reference": label_kind, **score(top5, reference[victim])})
        bar.update(1)

    # Clean accuracy of every victim (behind every defence where it is defended).
    for victim in grid.victims:
        for d_name in defenses_for(victim):
            score_cell(cache_key(CLEAN, fingerprint), x_clean,
                       {"kind": CLEAN, "source": "-", "attack": CLEAN, "eps": 0.0}, victim, d_name)

    # Transfer (black-box) attacks.
    for s_name, a_name, attack, model, in_tables in adv_sets:
        bar.set_postfix_str(f"{a_name} on {s_name}", refresh=True)
        key = cache_key("transfer", s_name, repr(attack), fingerprint, grid.seed)
        x_adv = cache.get(key)
        if x_adv is None:
            labels = (untargeted_labels(model.to(device), from_uint8(x_clean).to(device), data.labels.to(device)).cpu()
                      if model is not None else data.labels)
            x_adv = craft(attack, model, x_clean, labels, grid.batch_size, device, grid.seed)
            cache.put(key, x_adv)
        bar.update(1)
        meta = {"kind": "transfer" if in_tables else "sweep", "source": s_name, "attack": a_name, "eps": float(attack.eps)}
        for victim in grid.victims:
            for d_name in defenses_for(victim):
                score_cell(key, x_adv, meta, victim, d_name)

    # Adaptive (white-box through the defence) attacks on each defended victim.
    for a_name, d_name, victim in adaptive_jobs:
        adaptive, defense = grid.adaptive[a_name], grid.defenses[d_name]
        bar.set_postfix_str(f"{a_name} through {d_name} on {victim}", refresh=True)
        key = cache_key("adaptive", victim, repr(adaptive), d_name, repr(defense), fingerprint, grid.seed)
        x_adv = cache.get(key)
        if x_adv is None:
            x_adv = craft(adaptive, grid.victims[victim], x_clean, reference[victim], grid.batch_size, device,
                          grid.seed, defense=defense)
            cache.put(key, x_adv)
        score_cell(key, x_adv, {"kind": "adaptive", "source": f"{victim} (white-box)", "attack": adaptive.label(defense),
                                "eps": float(adaptive.attack.eps)}, victim, d_name)
    bar.close()
    return list(store.rows.values())


# ------------------------------------------------------------------------------------------ reports
def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _lookup(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["kind"], r["source"], r["attack"], r["defense"], r["victim"]): r for r in rows}


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
    return _md_table(["Source", "Defence", *attacks], body)


def _sources_of(grid: Grid) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s_name, a_name, _, _, in_tables in _adv_sets(grid):
        if in_tables:
            out.setdefault(s_name, []).append(a_name)
    return out


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
    return _md_table(header, body)


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
    return _md_table(header, body)


def missing_adaptive(rows: list[dict], grid: Grid) -> list[str]:
    """Defences with no adaptive-attack row on some defended victim."""
    have = {(r["defense"], r["victim"]) for r in rows if r["kind"] == "adaptive"}
    return [d for d in grid.defenses for v in grid.defended_victims if d != NO_DEFENSE and (d, v) not in have]


def plot_accuracy_vs_eps(rows: list[dict], grid: Grid, path: Path) -> Path | None:
    """Top-1 of each defended victim behind each defence against the sweep attack, per eps."""
    if not grid.eps_sweep:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attack = grid.attacks[grid.sweep_attack]
    source = attack.source_name if isinstance(attack, SelfSupervised) else grid.sweep_source
    fig, axes = plt.subplots(1, len(grid.defended_victims), figsize=(5.5 * len(grid.defended_victims), 4), squeeze=False)
    for ax, victim in zip(axes[0], grid.defended_victims):
        for d_name in grid.defenses:
            pts = {0.0: next(r["top1"] for r in rows if r["kind"] == CLEAN and r["defense"] == d_name and r["victim"] == victim)}
            for r in rows:
                if (r["kind"] in ("transfer", "sweep") and r["source"] == source and r["attack"] == grid.sweep_attack
                        and r["defense"] == d_name and r["victim"] == victim and r["eps"] in grid.eps_sweep):
                    pts[r["eps"]] = r["top1"]
            xs = sorted(pts)
            ax.plot(xs, [pts[e] for e in xs], marker="o", label=d_name)
        ax.set(xlabel="eps (/255)", ylabel="top-1 (%)", title=f"{grid.sweep_attack} from {source} -> {victim}", ylim=(0, 101))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sample_grid(grid: Grid, cache_dir: Path, path: Path, n: int = 6) -> Path:
    """Image grid: row 1 clean, row 2 the first table attack's adversarials, then each defence
    applied to them."""
    from torchvision.utils import make_grid

    from nrp_lightning.images import save_png

    s_name, a_name, attack, _, _ = _adv_sets(grid)[0]
    key = cache_key("transfer", s_name, repr(attack), grid.data.fingerprint(), grid.seed)
    x = grid.data.images[:n]
    x_adv = from_uint8(AdversarialCache(cache_dir).get(key)[:n])
    device = next((p.device for d in grid.defenses.values() for p in d.parameters()), torch.device("cpu"))
    rows = [x, x_adv]
    torch.manual_seed(grid.seed)
    with torch.no_grad():
        for d_name, defense in grid.defenses.items():
            if d_name != NO_DEFENSE:
                rows.append(defense(x_adv.to(device)).cpu())
    return save_png(make_grid(torch.cat(rows), nrow=len(x), padding=2, pad_value=1.0), path)


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


def log_to_wandb(rows: list[dict], out_dir: Path, **init_kwargs: Any) -> None:
    """Results as a W&B table and the plot and sample grid as images (``WANDB_MODE=offline`` works)."""
    import wandb

    run = wandb.init(dir=str(out_dir), **init_kwargs)
    columns = ["kind", "source", "attack", "eps", "defense", "victim", "n", "top1", "top5", "success_rate"]
    run.log({"results": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
    for name in ("accuracy_vs_eps.png", "samples.png"):
        if (out_dir / name).is_file():
            run.log({name.removesuffix(".png"): wandb.Image(str(out_dir / name))})
    run.finish()


# -------------------------------------------------------------------------------------------- CLI
def grid_from_config(cfg) -> Grid:
    """Instantiate ``Grid`` from the composed ``conf/eval.yaml``."""
    from hydra.utils import instantiate

    built = {k: instantiate(cfg[k], _convert_="all") for k in ("data", "sources", "attacks", "defenses", "victims", "adaptive")}
    return Grid(data=built["data"], sources=dict(built["sources"] or {}), attacks=dict(built["attacks"]),
                defenses={k: v for k, v in (built["defenses"] or {}).items() if v is not None},
                victims=dict(built["victims"]), defended_victims=list(cfg.defended_victims) if cfg.defended_victims else None,
                adaptive=dict(built["adaptive"] or {}), eps_sweep=list(cfg.eps_sweep or []),
                sweep_attack=cfg.sweep_attack, sweep_source=cfg.sweep_source, batch_size=cfg.batch_size, seed=cfg.seed)


def evaluate(cfg, out_dir: str | os.PathLike) -> Path:
    """Build the grid of ``cfg``, run it, write the reports; returns the report path."""
    start = time.time()
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    grid = grid_from_config(cfg)
    out_dir, cache_dir = Path(out_dir), Path(cfg.cache_dir)
    rows = run_grid(grid, out_dir, cache_dir, device, progress=cfg.progress)
    report = write_reports(rows, grid, out_dir, cache_dir, time.time() - start)
    if cfg.logger:
        log_to_wandb(rows, out_dir, **cfg.logger)
    log.info("wrote %s", report)
    return report


GROUPS = ("data", "sources", "victims", "attacks", "defenses", "adaptive")


def _experiment_shorthand(argv: list[str]) -> list[str]:
    """``experiment=NAME`` -> ``evaluation/experiment=NAME`` and ``defenses=NAME`` ->
    ``evaluation/defenses@defenses=NAME`` (same for the other groups): conf/experiment/ and
    conf/data/ hold the training presets, so the evaluation groups live in conf/evaluation/."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key == "experiment":
            arg = f"evaluation/experiment={value}"
        elif sep and key in GROUPS:
            arg = f"evaluation/{key}@{key}={value}"
        out.append(arg)
    return out


def main() -> None:
    """Console entry ``nrp-eval`` (and ``eval.py``): ``nrp-eval experiment=offline [overrides]``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    if sys.argv[1:2] == ["tasks"]:  # nrp-eval tasks tasks=table4: detection / segmentation (Tables 2, 4)
        from nrp_lightning.tasks.cross_task import main as cross_task_main

        sys.argv.pop(1)
        return cross_task_main()
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        print("Usage: nrp-eval experiment={offline,table1,table3,table5,fig5} [key=value ...]  "
              "(Hydra; `nrp-eval --cfg job` prints the composed config)\n"
              "       nrp-eval tasks tasks={table4,table2_detection,table2_segmentation} [key=value ...]  "
              "(detection / segmentation, Tables 2 and 4; `nrp-eval tasks --help`)")
        return
    sys.argv = [sys.argv[0], *_experiment_shorthand(sys.argv[1:])]
    register_resolvers()

    @hydra.main(config_path=conf_dir(), config_name="eval", version_base="1.3")
    def _run(cfg) -> None:
        print(f"report: {evaluate(cfg, HydraConfig.get().runtime.output_dir)}")

    _run()


if __name__ == "__main__":
    main()
