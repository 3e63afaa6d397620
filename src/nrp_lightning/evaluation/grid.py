"""What to evaluate (``Grid``) and the runner that crafts, defends and scores every cell (``run_grid``).

Adversarial examples are cached as uint8 tensors under ``cache_dir`` keyed by (source, attack and
its parameters, data fingerprint, seed), and every scored cell is appended to ``results.jsonl`` as
soon as it exists, so a killed run resumes where it stopped and a grid extended by a source,
attack, defence or victim computes only what is new.

Metrics, for a victim behind a defence: top-1 and top-5 accuracy against the true labels, or,
for unlabelled data, against the undefended victim's clean top-1 prediction; attack success rate
(Table 1, lower is better for the defence) = 100 - top-1. Both sides of a defence are measured:
on clean images, the share of the victim's clean top-1 predictions it changes and, once per
defence, PSNR(D(x), x); a targeted attack (``targeted=True``) aims each image at a class of
``Grid.targets`` (success: the share classified as that class); every row also holds top-1 on the
victim's *confident subset*, the images whose clean top-1 probability is at least
``confident_threshold`` (near-constant crops flip under any change).

On labelled data every row also holds whether the victim's top-1 is right, image by image
(``correct``: ``0``/``1`` in the data's order, for the exact McNemar test of ``tables.paired_table``),
and the success rate among the images the undefended victim gets right clean
(``success_clean_correct`` over ``n_clean_correct``), the literature's other measure.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from nrp_lightning import fast_paths
from nrp_lightning.attacks.adaptive import AdaptiveAttack
from nrp_lightning.attacks.ssp import SSP
from nrp_lightning.attacks.transfer import IMAGENET_CLASSES, GradientAttack, untargeted_labels
from nrp_lightning.defenses.base import Defense, NoDefense
from nrp_lightning.eval_data import EvalSet, from_uint8, to_uint8
from nrp_lightning.evaluation.metrics import percent, psnr_per_image, score
from nrp_lightning.evaluation.store import AdversarialCache, ResultStore, cache_key

NO_DEFENSE = "none"
CLEAN = "clean"
FIDELITY = "fidelity"  # row kind: PSNR of a defence's output on the clean images
CONFIDENT_THRESHOLD = 0.3  # clean top-1 probability of the confident subset (JPEG q75 flips <10% there)
ROW_FIELDS = ["kind", "source", "attack", "eps", "defense", "victim", "n", "reference", "targeted", "top1", "top5",
              "success_rate",
              "changed", "confident_threshold", "n_confident", "top1_confident", "changed_confident",
              "n_clean_correct", "success_clean_correct", "psnr_mean", "psnr_min", "correct",
              "key"]  # every field a row of results.jsonl may have (rows of older runs lack some)


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
        confident_threshold: a victim's confident subset is the images whose clean top-1 softmax
            probability is at least this.
        targets: the classes of targeted attacks (those with ``targeted=True``): ``"random"``, a
            class per image drawn with ``seed`` among the ImageNet classes that are neither its
            label nor any victim's clean top-1 (the usual protocol of targeted transfer), or one
            ImageNet class index for every image.
        bf16: craft, defend and classify under bf16 autocast (``fast_paths.use_bf16``); its sets
            and rows are cached apart from fp32's. Every network runs channels_last either way, sources and victims
            with BatchNorm folded (``fast_paths.prepare_frozen``).
        paired_with: defences every other defence is compared with image for image in the report
            (exact McNemar on the per-image top-1 outcomes of labelled data), e.g. ``["JPEG"]``.
        paper_table1: add the paper's own Table 1 rows (NRP and JPEG on IncRes-v2ens) to the report.
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
    confident_threshold: float = CONFIDENT_THRESHOLD
    targets: str | int = "random"
    bf16: bool = False
    paired_with: list[str] = field(default_factory=list)
    paper_table1: bool = False

    def fingerprint(self) -> str:
        """The data's fingerprint, and the precision when not fp32: part of every cache key."""
        return self.data.fingerprint() + ("+bf16" if self.bf16 else "")

    def __post_init__(self) -> None:
        if not (self.targets == "random" or isinstance(self.targets, int) and 0 <= self.targets < IMAGENET_CLASSES):
            raise ValueError(f"targets must be 'random' or an ImageNet class 0-{IMAGENET_CLASSES - 1}, got {self.targets!r}")
        if not 0.0 <= self.confident_threshold <= 1.0:
            raise ValueError(f"confident_threshold is a probability in [0, 1], got {self.confident_threshold}")
        if NO_DEFENSE not in self.defenses:
            self.defenses = {NO_DEFENSE: NoDefense(), **self.defenses}
        if self.defended_victims is None:
            self.defended_victims = [list(self.victims)[-1]]
        if unknown := [v for v in self.defended_victims if v not in self.victims]:
            raise ValueError(f"defended victim {unknown[0]!r} is not among the victims {list(self.victims)}")
        if self.eps_sweep:
            if self.sweep_attack not in self.attacks:
                raise ValueError(f"sweep_attack {self.sweep_attack!r} is not among the attacks {list(self.attacks)}")
            if not isinstance(self.attacks[self.sweep_attack], SelfSupervised) and self.sweep_source not in self.sources:
                raise ValueError(f"sweep_source {self.sweep_source!r} is not among the sources {list(self.sources)}")
        for label, defense in self.defenses.items():
            defense.label = label
        if unknown := [d for d in self.paired_with if d not in self.defenses]:
            raise ValueError(f"paired_with names defences that are not in the grid: {unknown} (have {list(self.defenses)})")


def adv_sets(grid: Grid) -> list[tuple[str, str, Any, nn.Module | None, bool]]:
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
        sets.extend((source, grid.sweep_attack, attack.with_eps(eps), model, False) for eps in grid.eps_sweep
                    if eps != attack.eps)
    return sets


def is_targeted(attack: Any) -> bool:
    return bool(getattr(attack, "targeted", False))


def transfer_key(grid: Grid, source: str, attack: Any) -> str:
    """Cache key of the adversarial set of ``attack`` crafted on ``source`` over the grid's data
    (and, for a targeted attack, the grid's ``targets``)."""
    parts = ("transfer", source, repr(attack), grid.fingerprint(), grid.seed)
    return cache_key(*parts, f"targets={grid.targets}") if is_targeted(attack) else cache_key(*parts)


def draw_targets(targets: str | int, avoid: torch.Tensor, seed: int) -> torch.Tensor:
    """Target classes ``(N,)``: ``targets`` for every image, or (``"random"``) a class per image
    drawn uniformly with ``seed`` among those not in its row of ``avoid (N, K)`` (labels and the
    victims' clean top-1 classes; ``-1`` entries are ignored)."""
    if targets != "random":
        return torch.full((len(avoid),), int(targets), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    out = torch.randint(0, IMAGENET_CLASSES, (len(avoid),), generator=g)
    for i in range(len(avoid)):
        while (avoid[i] == out[i]).any():
            out[i] = int(torch.randint(0, IMAGENET_CLASSES, (1,), generator=g))
    return out


def predict(victim: nn.Module, defense: Defense, x_uint8: torch.Tensor, batch_size: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-5 classes ``(N, 5)`` of ``victim(defense(x))`` for uint8 images ``(N,3,S,S)``, and the
    softmax probability ``(N,)`` of the top-1 class."""
    return classify(victim, defend(defense, x_uint8, batch_size, device), batch_size, device)


@torch.no_grad()
def classify(victim: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-5 classes ``(N, 5)`` of ``victim(x)`` for images ``(N,3,S,S)`` in [0,1] (already defended),
    and the softmax probability ``(N,)`` of the top-1 class."""
    top5, top1_prob = [], []
    for i in range(0, len(x), batch_size):
        logits = victim(x[i:i + batch_size].to(device))
        top5.append(logits.topk(5, dim=1).indices.cpu())
        top1_prob.append(logits.softmax(1).amax(1).cpu())
    return torch.cat(top5), torch.cat(top1_prob)


@torch.no_grad()
def defend(defense: Defense, x_uint8: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``defense(x)`` ``(N,3,S,S)`` in [0,1] on the CPU, for uint8 images ``(N,3,S,S)``."""
    return torch.cat([defense(from_uint8(x_uint8[i:i + batch_size]).to(device)).clamp(0, 1).cpu()
                      for i in range(0, len(x_uint8), batch_size)])


def forward_passes(attack: Any, **kwargs) -> int | None:
    """Forward passes of the attacked model that ``attack`` makes on one batch (its gradient steps,
    times the EOT draws where they apply), for a progress bar; ``None`` when unknown."""
    if isinstance(attack, AdaptiveAttack):
        return attack.attack.steps * (attack.eot_samples if kwargs.get("defense") is not None
                                      and kwargs["defense"].randomized else 1)
    if isinstance(attack, GradientAttack):
        return attack.steps * attack.eot_samples
    if isinstance(attack, SelfSupervised):
        return attack.attack.steps + 1  # and the clean features once
    return None


def craft(attack: Callable, model: nn.Module | None, x_uint8: torch.Tensor, labels: torch.Tensor,
          batch_size: int, device: torch.device, seed: int, progress: str | None = None, **kwargs) -> torch.Tensor:
    """Run ``attack(x, y, model, **kwargs)`` over the set in batches; uint8 ``(N,3,S,S)`` out.

    ``progress``: the label of a second bar that counts the attack's gradient steps over the set (a
    cell of a slow attack, e.g. BPDA through a purifier, takes minutes); ``None``: no bar."""
    torch.manual_seed(seed)
    counted = model if model is not None else getattr(attack, "features", None)
    per_batch = forward_passes(attack, **kwargs)
    total = per_batch * math.ceil(len(x_uint8) / batch_size) if per_batch else None
    steps = tqdm(total=total, desc=progress, unit="step", leave=False, position=1, file=sys.stderr,
                 dynamic_ncols=True, disable=progress is None or counted is None)
    def count(*_) -> None:  # a forward hook's return value would replace the output: return nothing
        steps.update(1)

    hook = counted.register_forward_hook(count) if counted is not None and progress else None
    out = []
    try:
        for i in range(0, len(x_uint8), batch_size):
            x = from_uint8(x_uint8[i:i + batch_size]).to(device)
            y = labels[i:i + batch_size].to(device)
            out.append(to_uint8(attack(x, y, model, **kwargs).cpu()))
    finally:
        if hook is not None:
            hook.remove()
        steps.close()
    return torch.cat(out)


def run_grid(grid: Grid, out_dir: str | os.PathLike, cache_dir: str | os.PathLike,
             device: str | torch.device = "cpu", progress: bool = True) -> list[dict]:
    """Craft, defend and score everything in ``grid``; returns every row (also in ``results.jsonl``).
    Safe to kill and rerun with the same ``out_dir`` and ``cache_dir``."""
    with fast_paths.autocast(device, grid.bf16)():
        return _run_grid(grid, out_dir, cache_dir, torch.device(device), progress)


def _run_grid(grid: Grid, out_dir: str | os.PathLike, cache_dir: str | os.PathLike, device: torch.device,
              progress: bool) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache, store = AdversarialCache(cache_dir), ResultStore(out_dir / "results.jsonl")
    data = grid.data
    x_clean = to_uint8(data.images)
    fingerprint = grid.fingerprint()
    for m in [*grid.sources.values(), *grid.victims.values()]:
        fast_paths.prepare_frozen(m.to(device), device)
    for m in grid.defenses.values():
        fast_paths.to_channels_last(m.to(device))
    for attack in grid.attacks.values():
        if isinstance(attack, SelfSupervised):
            fast_paths.prepare_frozen(attack.features.to(device), device)

    # Reference labels of each victim: the true labels, or its own clean prediction.
    clean = {v: predict(m, grid.defenses[NO_DEFENSE], x_clean, grid.batch_size, device) for v, m in grid.victims.items()}
    clean_top1 = {v: top5[:, 0] for v, (top5, _) in clean.items()}
    reference = {v: (data.labels if data.labelled else clean_top1[v]) for v in grid.victims}
    confident = {v: prob >= grid.confident_threshold for v, (_, prob) in clean.items()}
    label_kind = "true label" if data.labelled else "clean prediction"
    clean_correct = {v: clean_top1[v] == data.labels for v in grid.victims} if data.labelled else {}
    targets = draw_targets(grid.targets, torch.stack([data.labels, *clean_top1.values()], 1), grid.seed)

    def defenses_for(victim: str) -> list[str]:
        return list(grid.defenses) if victim in grid.defended_victims else [NO_DEFENSE]

    sets = adv_sets(grid)
    adaptive_jobs = [(a, d, v) for a in grid.adaptive for d in grid.defenses for v in grid.defended_victims]
    fidelity_jobs = [d for d in grid.defenses if d != NO_DEFENSE] if grid.defended_victims else []
    n_cells = (sum(len(defenses_for(v)) for v in grid.victims) * (1 + len(sets)))
    bar = tqdm(total=len(fidelity_jobs) + len(sets) + n_cells + len(adaptive_jobs), desc="eval grid",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def confident_scores(top5: torch.Tensor, victim: str, kind: str) -> dict:
        """The confident-subset fields of a row; clean rows also get the share of changed predictions."""
        mask = confident[victim]
        fields = {"confident_threshold": grid.confident_threshold, "n_confident": int(mask.sum()),
                  "top1_confident": percent(top5[mask, 0] == reference[victim][mask])}
        if kind == CLEAN:
            changed = top5[:, 0] != clean_top1[victim]
            fields.update(changed=percent(changed), changed_confident=percent(changed[mask]))
        return fields

    def labelled_scores(top5: torch.Tensor, victim: str, targeted: bool) -> dict:
        """Per-image outcomes and (untargeted) the success rate among the images the victim gets
        right clean; nothing on unlabelled data."""
        if not data.labelled:
            return {}
        right = top5[:, 0] == data.labels
        fields = {"correct": "".join("1" if r else "0" for r in right.tolist())}
        if not targeted:
            mask = clean_correct[victim]
            fields.update(n_clean_correct=int(mask.sum()), success_clean_correct=percent(~right[mask]))
        return fields

    def score_cells(adv_key: str, x_adv: torch.Tensor, meta: dict, d_name: str, victims: list[str]) -> None:
        """Score ``victims`` behind defence ``d_name`` on one set; the set is defended once for all of
        them (a purifier pass over a few hundred images takes minutes on a CPU), seeded per (set,
        defence) so that randomised defences draw reproducibly. On the clean set the same defended
        images give the defence's fidelity row (PSNR against the clean images)."""
        defense, described = grid.defenses[d_name], repr(grid.defenses[d_name])
        keys = {v: cache_key(adv_key, d_name, described, v, grid.seed) for v in victims}
        todo = [v for v in victims if stale(store.rows.get(keys[v]))]
        has_fidelity = meta["kind"] == CLEAN and d_name in fidelity_jobs  # counted in the bar either way
        fidelity_key = cache_key(FIDELITY, fingerprint, d_name, described, grid.seed)
        fidelity = has_fidelity and fidelity_key not in store
        if todo or fidelity:
            bar.set_postfix_str(f"{meta['attack']} ({meta['source']}) behind {d_name}", refresh=True)
            torch.manual_seed(int(cache_key(adv_key, d_name, described, grid.seed)[:8], 16))
            defended = defend(defense, x_adv, grid.batch_size, device)
        if fidelity:
            db = psnr_per_image(defended, from_uint8(x_adv))
            store.add({"key": fidelity_key, "kind": FIDELITY, "source": "-", "attack": CLEAN, "eps": 0.0,
                       "defense": d_name, "victim": "-", "n": len(x_adv), "psnr_mean": round(db.mean().item(), 2),
                       "psnr_min": round(db.min().item(), 2)})
        for victim in todo:
            top5, _ = classify(grid.victims[victim], defended, grid.batch_size, device)
            scores = score(top5, reference[victim])
            if meta.get("targeted"):  # success: the victim predicts the target class
                scores["success_rate"] = percent(top5[:, 0] == targets)
            store.add({"key": keys[victim], **meta, "defense": d_name, "victim": victim, "n": len(x_adv),
                       "reference": label_kind, **scores, **confident_scores(top5, victim, meta["kind"]),
                       **labelled_scores(top5, victim, bool(meta.get("targeted")))})
        bar.update(len(victims) + has_fidelity)

    def stale(row: dict | None) -> bool:
        """No row yet, or one of an older run that lacks what this grid records."""
        return row is None or row.get("confident_threshold") != grid.confident_threshold or (
            data.labelled and "correct" not in row)

    def score_set(adv_key: str, x_adv: torch.Tensor, meta: dict) -> None:
        for d_name in grid.defenses:
            score_cells(adv_key, x_adv, meta, d_name, [v for v in grid.victims if d_name in defenses_for(v)])

    # Clean images behind every defence: each victim's accuracy where it is defended, and PSNR(D(x), x)
    # from the same defended images (one pass of a purifier over the clean set, not two).
    score_set(cache_key(CLEAN, fingerprint), x_clean, {"kind": CLEAN, "source": "-", "attack": CLEAN, "eps": 0.0})

    # Transfer (black-box) attacks.
    for s_name, a_name, attack, model, in_tables in sets:
        bar.set_postfix_str(f"{a_name} on {s_name}", refresh=True)
        key = transfer_key(grid, s_name, attack)
        x_adv = cache.get(key)
        if x_adv is None:
            if is_targeted(attack):
                labels = targets
            elif model is not None:
                labels = untargeted_labels(model.to(device), from_uint8(x_clean).to(device), data.labels.to(device)).cpu()
            else:
                labels = data.labels
            x_adv = craft(attack, model, x_clean, labels, grid.batch_size, device, grid.seed,
                          progress=f"{a_name} on {s_name}" if progress else None)
            cache.put(key, x_adv)
        bar.update(1)
        meta = {"kind": "transfer" if in_tables else "sweep", "source": s_name, "attack": a_name, "eps": float(attack.eps)}
        if is_targeted(attack):
            meta["targeted"] = True
        score_set(key, x_adv, meta)

    # Adaptive (white-box through the defence) attacks on each defended victim.
    for a_name, d_name, victim in adaptive_jobs:
        adaptive, defense = grid.adaptive[a_name], grid.defenses[d_name]
        bar.set_postfix_str(f"{a_name} through {d_name} on {victim}", refresh=True)
        key = cache_key("adaptive", victim, repr(adaptive), d_name, repr(defense), fingerprint, grid.seed)
        x_adv = cache.get(key)
        if x_adv is None:
            x_adv = craft(adaptive, grid.victims[victim], x_clean, reference[victim], grid.batch_size, device,
                          grid.seed, progress=f"{a_name} through {d_name}" if progress else None, defense=defense)
            cache.put(key, x_adv)
        score_cells(key, x_adv, {"kind": "adaptive", "source": f"{victim} (white-box)", "attack": adaptive.label(defense),
                                 "eps": float(adaptive.attack.eps)}, d_name, [victim])
    bar.close()
    return list(store.rows.values())
