"""Figures of a grid run: top-1 against the budget, a sample grid of clean / adversarial /
defended images, and W&B logging of the results and both figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from nrp_lightning.eval_data import from_uint8
from nrp_lightning.evaluation.grid import CLEAN, NO_DEFENSE, ROW_FIELDS, Grid, SelfSupervised, adv_sets, transfer_key
from nrp_lightning.evaluation.store import AdversarialCache
from nrp_lightning.images import atomic_write
from nrp_lightning.images import to_uint8 as to_hwc_uint8

MIN_FONT_PX = 10  # labels of small tiles stay legible


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
    return save_figure(fig, path, dpi=120)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def labelled_grid(rows: dict[str, torch.Tensor], columns: list[str], pad: int = 2) -> Image.Image:
    """One row of tiles per entry of ``rows`` (``label -> (N,3,S,S)`` in [0,1]), its label on the
    left, ``columns`` (N names, cut to the tile width) on top; white background, PIL's own font,
    so it draws headless and offline. Size: ``label width + N*(S+pad) + pad`` by
    ``header + len(rows)*(S+pad) + pad``."""
    side = next(iter(rows.values())).shape[-1]
    font = ImageFont.load_default(size=max(MIN_FONT_PX, side // 14))
    line = font.getbbox("Hg")[3] + 2 * pad
    label_w = int(max(font.getlength(label) for label in rows)) + 4 * pad
    n = len(columns)
    canvas = Image.new("RGB", (label_w + n * (side + pad) + pad, line + len(rows) * (side + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(columns):
        while len(name) > 1 and font.getlength(name) > side:
            name = name[:-2] + "…"
        draw.text((label_w + pad + j * (side + pad), pad), name, fill="black", font=font)
    for i, (label, images) in enumerate(rows.items()):
        top = line + pad + i * (side + pad)
        draw.text((2 * pad, top + side // 2), label, fill="black", font=font, anchor="lm")
        for j, x in enumerate(images[:n]):
            canvas.paste(Image.fromarray(to_hwc_uint8(x)), (label_w + pad + j * (side + pad), top))
    return canvas


def sample_grid(grid: Grid, cache_dir: Path, path: Path, n: int = 6) -> Path:
    """Labelled image grid: a row of clean images, one of the first table attack's adversarials
    ("<attack> from <source>"), then one per defence applied to those adversarials."""
    s_name, a_name, attack, _, _ = adv_sets(grid)[0]
    x = grid.data.images[:n]
    x_adv = from_uint8(AdversarialCache(cache_dir).get(transfer_key(grid, s_name, attack))[:n])
    device = next((p.device for d in grid.defenses.values() for p in d.parameters()), torch.device("cpu"))
    rows = {CLEAN: x, f"{a_name} from {s_name}": x_adv}
    torch.manual_seed(grid.seed)
    with torch.no_grad():
        for d_name, defense in grid.defenses.items():
            if d_name != NO_DEFENSE:
                rows[d_name] = defense(x_adv.to(device)).cpu()
    with atomic_write(path) as f:
        labelled_grid(rows, grid.data.names[:n]).save(f, format="PNG")
    return Path(path)


def log_to_wandb(rows: list[dict], out_dir: Path, **init_kwargs: Any) -> None:
    """Results as a W&B table and the plot and sample grid as images (``WANDB_MODE=offline`` works)."""
    import wandb

    run = wandb.init(dir=str(out_dir), **init_kwargs)
    run.log({"results": wandb.Table(columns=ROW_FIELDS, data=[[r.get(c) for c in ROW_FIELDS] for r in rows])})
    for name in ("accuracy_vs_eps.png", "samples.png"):
        if (out_dir / name).is_file():
            run.log({name.removesuffix(".png"): wandb.Image(str(out_dir / name))})
    run.finish()
