"""Cross-task evaluation (Tables 2 and 4): attacks x defences x detectors/segmenters.

For every image: each attack crafts ``x_adv`` once (SSP on a feature extractor, or a transfer
attack on a classifier labelled with its own clean prediction), each defence transforms it,
each model predicts. Metrics are pooled over the set: mAP@0.5 and mAP@[.5:.95] for detection
(bbox, and segm for Mask R-CNN), pixel accuracy and mIoU for semantic segmentation.

Images are processed one at a time (sizes differ); attacks are callables ``x -> x_adv`` on
``(1, 3, H, W)`` in [0, 1] and defences ``x -> x`` (``nrp_lightning.defenses``).
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from nrp_lightning.tasks.detection import detect, detection_map
from nrp_lightning.tasks.segmentation import segmentation_metrics

log = logging.getLogger(__name__)

CLEAN = "clean"
NO_DEFENSE = "none"
Attack = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CrossTaskGrid:
    """``task``: ``detection`` or ``segmentation``; ``dataset[i] -> (image, target)``;
    ``attacks`` without ``clean`` (added); ``defenses`` without ``none`` (added)."""

    task: str
    dataset: object
    models: dict[str, nn.Module]
    attacks: dict[str, Attack] = field(default_factory=dict)
    defenses: dict[str, Callable] = field(default_factory=dict)
    num_classes: int = 21  # segmentation only
    samples: int = 2  # images drawn with predictions

    def __post_init__(self) -> None:
        if self.task not in ("detection", "segmentation"):
            raise ValueError(f"task must be 'detection' or 'segmentation', got {self.task!r}")
        if not self.models:
            raise ValueError("the grid needs at least one model")


def _segment(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(x.to(device)).argmax(1).cpu()


def run_cross_task(grid: CrossTaskGrid, out_dir: str | Path, progress: bool = True) -> list[dict]:
    """Runs the grid, writes ``results.csv``, ``report.md`` and ``samples/``; returns the rows."""
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    attacks = {CLEAN: lambda x: x, **grid.attacks}
    defenses = {NO_DEFENSE: lambda x: x, **grid.defenses}
    preds: dict[tuple, list] = {}
    targets: list = []
    for i in tqdm(range(len(grid.dataset)), desc=f"{grid.task}: images", disable=not progress):
        image, target = grid.dataset[i]
        targets.append(target)
        x = image[None]
        for a_name, attack in attacks.items():
            x_adv = attack(x).detach().clamp(0, 1)
            for d_name, defense in defenses.items():
                with torch.no_grad():
                    x_def = defense(x_adv).clamp(0, 1)
                for m_name, model in grid.models.items():
                    if grid.task == "detection":
                        out = detect(model, [x_def[0]])[0]
                    else:
                        out = _segment(model, x_def)[0]
                    preds.setdefault((m_name, a_name, d_name), []).append(out)
                    if i < grid.samples:
                        _save_sample(grid, out_dir / "samples" / f"{i}_{m_name}_{a_name}_{d_name}.png", x_def[0], out)
    rows = [_score(grid, key, p, targets) for key, p in preds.items()]
    write_cross_task_reports(rows, grid, out_dir)
    return rows


def _score(grid: CrossTaskGrid, key: tuple, preds: list, targets: list) -> dict:
    model, attack, defense = key
    row = {"task": grid.task, "model": model, "attack": attack, "defense": defense, "n": len(preds)}
    if grid.task == "detection":
        row.update({f"bbox_{k}": v for k, v in detection_map(preds, targets).items()})
        if all("masks" in p for p in preds) and all("masks" in t for t in targets):
            row.update({f"segm_{k}": v for k, v in detection_map(preds, targets, "segm").items()})
    else:
        pred = torch.cat([p.flatten() for p in preds])
        target = torch.cat([t.flatten() for t in targets])
        row.update(segmentation_metrics(pred[None], target[None], grid.num_classes))
    return row


def _save_sample(grid: CrossTaskGrid, path: Path, image: torch.Tensor, out) -> None:
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from nrp_lightning.images import save_png

    canvas = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if grid.task == "detection":
        keep = out["scores"] > 0.5
        if "masks" in out and keep.any():
            canvas = draw_segmentation_masks(canvas, out["masks"][keep], alpha=0.4)
        labels = [str(int(c)) for c in out["labels"][keep]]
        canvas = draw_bounding_boxes(canvas, out["boxes"][keep], labels=labels, colors="red", width=2)
    else:
        present = out.unique()
        masks = torch.stack([out == c for c in present if c != 0]) if (present != 0).any() else None
        if masks is not None:
            canvas = draw_segmentation_masks(canvas, masks, alpha=0.5)
    save_png(canvas.float() / 255, path)


def _metric_names(task: str) -> list[str]:
    return ["bbox_map_50", "bbox_map"] if task == "detection" else ["miou", "pixel_acc"]


def write_cross_task_reports(rows: list[dict], grid: CrossTaskGrid, out_dir: Path) -> Path:
    """``results.csv`` (every number), ``results.json`` and ``report.md``: Table 4 layout (clean vs
    each attack, no defence, per model) and Table 2 layout (defence x attack, per model)."""
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("task", "model", "attack", "defense", "n"), k))
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    main_metric = _metric_names(grid.task)[0]
    by_key = {(r["model"], r["attack"], r["defense"]): r for r in rows}
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    parts = [f"# Cross-task report: {grid.task}\n\n{len(grid.dataset)} images. Metric: {main_metric} (%)."]
    header = "| model | " + " | ".join(attacks) + " |\n|---|" + "---:|" * len(attacks)
    lines = [f"| {m} | " + " | ".join(pct(by_key[(m, a, NO_DEFENSE)][main_metric]) for a in attacks) + " |" for m in models]
    parts.append("## Table 4 layout: no defence\n\n" + header + "\n" + "\n".join(lines))
    for m in models:
        header = "| defence | " + " | ".join(attacks) + " |\n|---|" + "---:|" * len(attacks)
        lines = [f"| {d} | " + " | ".join(pct(by_key[(m, a, d)][main_metric]) for a in attacks) + " |" for d in defenses]
        parts.append(f"## Table 2 layout: {m}, each defence\n\n" + header + "\n" + "\n".join(lines))
    report = out_dir / "report.md"
    report.write_text("\n\n".join(parts) + "\n")
    return report


# ------------------------------------------------------------------------ building from a config
def resolve_device(device: str = "auto") -> torch.device:
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))


def ssp_attack(features: nn.Module, eps: float = 16.0, steps: int = 100, step_size: float = 2.55,
               distance: str = "mse", device: str = "auto") -> Attack:
    """SSP with ``features`` bound: label- and task-free, so it attacks detectors and segmenters as is."""
    from nrp_lightning.attacks.ssp import SSP

    attack = SSP(eps=eps, step_size=step_size, steps=steps, distance=distance)
    dev = resolve_device(device)
    features = features.to(dev)

    def run(x: torch.Tensor) -> torch.Tensor:
        return attack(x.to(dev), features).cpu()

    return run


def transfer_attack(attack: Callable, source: nn.Module, device: str = "auto") -> Attack:
    """A classifier attack ``attack(x, y, model)`` crafted on ``source`` with its own clean prediction
    as the label, transferred to another task (the paper's cross-task setting)."""
    from nrp_lightning.attacks.transfer import untargeted_labels

    dev = resolve_device(device)
    source = source.to(dev)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(dev)
        return attack(x, untargeted_labels(source, x), source).cpu()

    return run


def grid_from_config(cfg) -> CrossTaskGrid:
    """``CrossTaskGrid`` from the composed ``conf/cross_task.yaml``."""
    from hydra.utils import instantiate

    device = resolve_device(cfg.device)
    models = {k: instantiate(v).to(device) for k, v in cfg.models.items() if v is not None}
    return CrossTaskGrid(task=cfg.task, dataset=instantiate(cfg.data), models=models,
                         attacks={k: instantiate(v) for k, v in (cfg.attacks or {}).items() if v is not None},
                         defenses={k: instantiate(v) for k, v in (cfg.defenses or {}).items() if v is not None},
                         num_classes=cfg.num_classes, samples=cfg.samples)


def main() -> None:
    """``nrp-eval tasks tasks=table4 [overrides]``: Tables 2 and 4 through Hydra (conf/cross_task.yaml)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from nrp_lightning.config import conf_dir, register_resolvers

    register_resolvers()

    @hydra.main(config_path=conf_dir(), config_name="cross_task", version_base="1.3")
    def _run(cfg) -> None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        rows = run_cross_task(grid_from_config(cfg), out_dir, progress=cfg.progress)
        if cfg.logger:
            import wandb

            run = wandb.init(dir=str(out_dir), **cfg.logger)
            columns = list(rows[0])
            run.log({"results": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})
            for png in sorted((out_dir / "samples").glob("*.png"))[:32]:
                run.log({f"samples/{png.stem}": wandb.Image(str(png))})
            run.finish()
        print(f"report: {out_dir / 'report.md'}")

    _run()
