"""Purifiers that travel the way the ecosystem shares weights: ``*.safetensors`` and the Hugging Face
Hub folder layout. ``purify.load_purifier`` reads both (and ``hf:ORG/NAME``); this module writes them.

``save_safetensors``: the purifier's plain state dict in the authors' key layout (``conv_first.*``,
``RRDB_trunk.*``, ...), fp32 on the CPU, with the purifier's card (the JSON beside a shipped
``.pth``: training command, corpus, measurements, gate) as the header's ``nrp_card`` metadata.
``write_hub_folder``: ``model.safetensors``, ``config.json`` (the architecture), ``README.md`` (a
model card with the measured table and the training command) and ``model.json`` (the card itself,
where ``defenses.nrp.load_gate`` finds the gate). Upload the folder as it is (``hf upload ORG/NAME
DIR``) and ``load_purifier("hf:ORG/NAME")`` reads it back.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nrp_lightning.purify import CARD_KEY, HUB_CARD, HUB_CONFIG, HUB_README, HUB_WEIGHTS, PurifierSpec

LIBRARY = "nrp-lightning"
PAPER = "Naseer et al., A Self-supervised Approach for Adversarial Robustness, CVPR 2020"
MEASURED_DEFENSES = ("none", "JPEG", "NRP", "NRP_dynamic")  # the columns of the model card's table


def plain_state(purifier: nn.Module) -> dict[str, torch.Tensor]:
    """The purifier's state dict as contiguous fp32 CPU tensors (safetensors stores no strides)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in purifier.state_dict().items()}


def save_safetensors(purifier: nn.Module, path: str | os.PathLike, card: dict[str, Any] | None = None) -> Path:
    """Write ``purifier`` (from ``load_purifier``) to ``path`` as safetensors; ``card`` (default: the
    purifier's own ``card``) goes into the header as JSON under ``nrp_card``, with the architecture."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    card = card if card is not None else getattr(purifier, "card", None)
    metadata = {"format": "pt", "architecture": str(purifier.spec)}
    if card:
        metadata[CARD_KEY] = json.dumps(card, default=str)
    save_file(plain_state(purifier), str(path), metadata=metadata)
    return path


def hub_config(spec: PurifierSpec) -> dict[str, Any]:
    """``config.json``: what ``load_purifier`` checks the weights against, and how to load them."""
    return {"library_name": LIBRARY, "arch": spec.arch, "nf": spec.nf, "nb": spec.nb, "gc": spec.gc,
            "architecture": str(spec),
            "input": "(B,3,H,W) RGB in [0,1], any size; output unclamped (clamp to [0,1])"}


def measured_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: top-1 (%) of each victim per attack and defence, one row per attack setting
    (rows without a top-1, e.g. the image-fidelity rows, are left out)."""
    cells: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for r in (r for r in rows if r.get("top1") is not None):
        cells[(r["kind"], r["attack"], r["source"], r["eps"], r["victim"], r["n"])][r["defense"]] = r["top1"]
    head = "| kind | attack | source | eps (/255) | victim | n | " + " | ".join(MEASURED_DEFENSES) + " |"
    lines = [head, "|" + "---|" * (6 + len(MEASURED_DEFENSES))]
    for (kind, attack, source, eps, victim, n), by_defense in cells.items():
        values = " | ".join(f"{by_defense[d]:.1f}" if d in by_defense else "" for d in MEASURED_DEFENSES)
        lines.append(f"| {kind} | {attack} | {source} | {eps:g} | {victim} | {n} | {values} |")
    return lines


def model_card(name: str, spec: PurifierSpec, parameters: int, card: dict[str, Any] | None) -> str:
    """``README.md`` of a Hub folder: what the purifier is, how to load it, how it was trained and
    what was measured (from the purifier's ``card``; a purifier without one says so)."""
    card = card or {}
    lines = ["---", f"library_name: {LIBRARY}", "license: mit", "pipeline_tag: image-to-image",
             "tags: [adversarial-defense, input-purification, nrp, pytorch, safetensors]", "---", "",
             f"# {name}: a Neural Representation Purifier", "",
             f"{spec}, {parameters:,} parameters, trained with {LIBRARY} (PyTorch Lightning + Hydra), "
             f"an implementation of NRP ({PAPER}). It maps an image to its purified version: {hub_config(spec)['input']}.", "",
             "## Use", "", "```python", "from nrp_lightning.purify import load_purifier, purify_images", "",
             'purifier = load_purifier("hf:ORG/NAME")  # this repository, or a local copy of this folder',
             "purified = purify_images(purifier, images)  # (B,3,H,W) in [0,1] -> (B,3,H,W) in [0,1]", "```", "",
             "The weights are a plain state dict in the authors' key layout; without the package: "
             "`safetensors.torch.load_file('model.safetensors')`.", ""]
    lines += ["## Training", ""]
    if card.get("training_command"):
        lines += ["```bash", card["training_command"], "```", ""]
    if card.get("corpus"):
        lines += [f"Training photos: `{card['corpus']}`.", ""]
    if card.get("training_photos"):
        lines += ["| photo | licence |", "|---|---|"]
        lines += [f"| {p['name']} | {p.get('licence', '')} |" for p in card["training_photos"]] + [""]
    if not (card.get("training_command") or card.get("training_photos")):
        lines += ["The card of this purifier records no training command.", ""]
    lines += ["## Measured", ""]
    evaluation = card.get("heldout_evaluation") or {}
    if evaluation.get("rows"):
        lines += [f"Top-1 (%) of each victim on held-out images, per defence (`{evaluation.get('command', '')}`):",
                  "", *measured_table(evaluation["rows"]), ""]
    else:
        lines += ["No measurement is recorded in this purifier's card.", ""]
    lines += ["## Files", "", f"- `{HUB_WEIGHTS}`: the weights", f"- `{HUB_CONFIG}`: the architecture",
              f"- `{HUB_CARD}`: the full card (config, corpus hashes, measurements"
              + (", the calibrated gate" if card.get("gate") else "") + ")", ""]
    return "\n".join(lines)


def write_hub_folder(purifier: nn.Module, folder: str | os.PathLike, name: str | None = None,
                     card: dict[str, Any] | None = None) -> Path:
    """Write the Hub layout of ``purifier`` (from ``load_purifier``) into ``folder``; ``name`` heads the
    model card (default: the source file's stem, e.g. ``nrp_cpu``), ``card`` defaults to the purifier's."""
    folder = Path(folder)
    card = card if card is not None else getattr(purifier, "card", None)
    source = Path(getattr(purifier, "path", None) or folder / HUB_WEIGHTS)
    name = name or (source.parent.name if source.name == HUB_WEIGHTS else source.stem)
    save_safetensors(purifier, folder / HUB_WEIGHTS, card)
    (folder / HUB_CONFIG).write_text(json.dumps(hub_config(purifier.spec), indent=1) + "\n")
    parameters = sum(p.numel() for p in purifier.parameters())
    (folder / HUB_README).write_text(model_card(name, purifier.spec, parameters, card))
    if card:
        (folder / HUB_CARD).write_text(json.dumps(card, indent=1, default=str) + "\n")
    return folder
