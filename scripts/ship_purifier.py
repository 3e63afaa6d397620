"""Ship a trained purifier in the package, with its card beside it.

    python scripts/ship_purifier.py outputs/real_dim_s0 --name nrp_real \
        --manifest data/photos/MANIFEST.csv --manifest data/coco128/MANIFEST.csv \
        --manifest data/imagenet_even/MANIFEST.csv \
        --eval outputs/eval/neurips_screen-test --defense NRP_real

Copies ``RUN/purifier.pth`` to ``src/nrp_lightning/pretrained/NAME.pth`` (default: the package's
default purifier's name; a plain state dict in the authors' key layout, checked to load with
``weights_only=True`` and ``strict=True``) and writes ``NAME.json`` beside it: the training command
and resolved config, what it was trained on (the corpus photos of ``data/photos/MANIFEST.csv`` by
name and sha256; each other manifest, e.g. the COCO and ImageNet folders of
``scripts/build_datasets.py``, by its sha256 and image count), the purifier's size, and, with
``--eval``, the measurements of that evaluation run (``results.jsonl``: no defence, JPEG and the
``--defense`` row, ``NRP`` unless named; ``experiment=heldout`` runs become the card's
``heldout_evaluation``, ``experiment=neurips*`` runs its ``neurips_evaluation``), and the run's
calibrated gate: ``calibrate_gate.py RUN/purifier.pth --write`` records one in ``RUN/purifier.json``
for those very bytes, and the card carries it over. Without one the card has no gate and the
script says to calibrate it on the shipped file.

    python scripts/calibrate_gate.py outputs/RUN/purifier.pth --write   # gate beside the run
    python scripts/ship_purifier.py outputs/RUN --eval outputs/eval/heldout
    nrp-purify export hub/nrp_cpu   # then its Hugging Face Hub folder, model card from the card
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
from pathlib import Path

import torch
import yaml

from nrp_lightning.gate import GATE_KEY
from nrp_lightning.purify import DEFAULT_PURIFIER, load_purifier
from nrp_lightning.weights import sha256_of

MACHINE_OVERRIDES = ("paths.", "hydra.")  # where this machine kept its outputs: not part of the recipe


def training_photos(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return [{"name": r["name"], "sha256": r["sha256"], "licence": r["licence"]}
                for r in csv.DictReader(f) if r["split"] == "train"]


def training_images(manifest: Path) -> dict:
    """A dataset folder's manifest (``scripts/build_datasets.py``) as the card records it."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"folder": manifest.parent.name, "manifest_sha256": sha256_of(manifest), "images": len(rows),
            "licences": sorted({r["licence"] for r in rows})}


def eval_rows(eval_dir: Path, defense: str = "NRP") -> list[dict]:
    rows = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    keep = ("kind", "source", "attack", "eps", "defense", "victim", "n", "top1", "success_rate")
    shown = ("none", "JPEG", defense, f"{defense}_dynamic")
    return [{k: r.get(k) for k in keep} for r in rows if r.get("defense") in shown]


def run_precision(eval_dir: Path) -> str:
    """``fp32`` or ``bf16``: what an evaluation run scored in (its config; ``auto`` read from its log)."""
    precision = (yaml.safe_load((eval_dir / ".hydra" / "config.yaml").read_text()) or {}).get("precision", "fp32")
    if precision == "auto":
        log = eval_dir / "cli.log"
        precision = "bf16" if log.is_file() and "bf16 autocast" in log.read_text() else "fp32"
    return precision


def evaluation(eval_dir: Path, defense: str, dest: Path) -> tuple[str, dict]:
    """``(card key, {"command", "rows"})`` of an evaluation run: the ``eval.py`` command from its
    ``.hydra/overrides.yaml`` (the machine's own paths left out, the candidate pointed at the shipped
    file), or ``experiment=heldout`` for a run without one."""
    overrides_file = eval_dir / ".hydra" / "overrides.yaml"
    overrides = (yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else ["experiment=heldout"]
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if key in ("cache_dir", "hydra.run.dir") or key.startswith("hydra."):
            continue
        if key.lstrip("+").startswith("candidates."):
            override = f"{key}=src/nrp_lightning/pretrained/{dest.name}"
        kept.append(override)
    if overrides_file.is_file() and not any(o.startswith("precision=") for o in kept):
        kept.append(f"precision={run_precision(eval_dir)}")  # the default changed once (auto -> fp32)
    experiment = next((o.split("=", 1)[1] for o in kept if o.startswith("experiment=")), "heldout")
    card_key = "heldout_evaluation" if experiment == "heldout" else "neurips_evaluation"
    return card_key, {"command": "python eval.py " + " ".join(map(shlex.quote, kept)), "rows": eval_rows(eval_dir, defense)}


def run_gate(run: Path) -> dict | None:
    """The gate ``calibrate_gate.py --write`` recorded in ``RUN/purifier.json``, or None without one.
    It holds for the copy only if it was calibrated on ``RUN/purifier.pth`` as it is now: a gate whose
    recorded ``purifier_sha256`` names other bytes (the run went on after calibrating) is refused."""
    path, weights = run / "purifier.json", run / "purifier.pth"
    again = f"calibrate again: python scripts/calibrate_gate.py {weights} --write"
    if not path.is_file():
        return None
    try:
        gate = json.loads(path.read_text()).get(GATE_KEY)
    except (json.JSONDecodeError, AttributeError) as exc:
        raise SystemExit(f"{path} is not a purifier card ({exc}); {again}") from None
    calibrated_on = (gate or {}).get("calibration", {}).get("purifier_sha256")
    if calibrated_on is not None and calibrated_on != sha256_of(weights):
        raise SystemExit(f"the gate in {path} was calibrated on other weights than {weights} holds now; {again}")
    return gate


def ship(run: Path, eval_dir: Path | None = None, manifest: Path = Path("data/photos/MANIFEST.csv"),
         dest: Path = DEFAULT_PURIFIER, datasets: tuple[Path, ...] = (), defense: str = "NRP") -> Path:
    """Copy ``run/purifier.pth`` to ``dest`` and write its card ``dest.with_suffix('.json')``: the corpus
    photos of ``manifest`` it trained on, the dataset folders of ``datasets`` (their manifests), and the
    ``defense`` rows of ``eval_dir``."""
    source = run / "purifier.pth"
    gate = run_gate(run)  # before anything is copied: a broken run card leaves the package as it was
    purifier = load_purifier(source)  # weights_only=True, strict=True, or a clear error
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    card = {
        "file": dest.name,
        "sha256": sha256_of(dest),
        "architecture": str(purifier.spec),
        "parameters": sum(p.numel() for p in purifier.parameters()),
        "input": "(B,3,H,W) RGB in [0,1], any size; output unclamped (clamp to [0,1])",
        "training_command": "python train.py " + " ".join(o for o in overrides if not o.startswith(MACHINE_OVERRIDES)),
        "corpus": "python scripts/build_photo_corpus.py --out data/photos (scripts/photo_corpus.csv)",
        "training_photos": training_photos(manifest),
        **({"training_images": [training_images(m) for m in datasets],
            "datasets": "python scripts/build_datasets.py --help (each folder from its public source)"} if datasets else {}),
        "config": yaml.safe_load((run / ".hydra" / "config.yaml").read_text()),
        "report": "docs/results.md",
    }
    if gate is not None:
        card[GATE_KEY] = gate
    if eval_dir is not None:
        key, measured = evaluation(eval_dir, defense, dest)
        card[key] = measured
    dest.with_suffix(".json").write_text(json.dumps(card, indent=1, default=str) + "\n")
    torch.load(dest, weights_only=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="training run folder (holds purifier.pth and .hydra/)")
    parser.add_argument("--eval", type=Path, help="evaluation run folder (holds results.jsonl)")
    parser.add_argument("--name", default=DEFAULT_PURIFIER.stem,
                        help=f"file name in the package, without .pth (default: {DEFAULT_PURIFIER.stem})")
    parser.add_argument("--manifest", type=Path, action="append",
                        help="MANIFEST.csv of what it trained on; repeat for several folders. The corpus' "
                        "(with a split column) lists its training photos, each other folder is recorded by its "
                        "manifest's sha256 (default: data/photos/MANIFEST.csv)")
    parser.add_argument("--defense", default="NRP", help="the purifier's name in the --eval run (default: NRP)")
    args = parser.parse_args()
    manifests = args.manifest or [Path("data/photos/MANIFEST.csv")]
    corpus = [m for m in manifests if "split" in m.read_text().partition("\n")[0].split(",")]
    if len(corpus) != 1:
        parser.error("give exactly one corpus manifest (data/photos/MANIFEST.csv, with a split column)")
    dest = ship(args.run, args.eval, corpus[0], DEFAULT_PURIFIER.with_name(f"{args.name}.pth"),
                tuple(m for m in manifests if m != corpus[0]), args.defense)
    if GATE_KEY in json.loads(dest.with_suffix(".json").read_text()):
        print(f"shipped {dest} with the gate of {args.run / 'purifier.json'}")
    else:
        print(f"shipped {dest} without a gate; calibrate it next: python scripts/calibrate_gate.py --write")


if __name__ == "__main__":
    main()
