"""Ship a trained purifier as the package's default, with its card beside it.

    python scripts/ship_purifier.py outputs/nrp_cpu-none [--eval outputs/eval/heldout]

Copies ``RUN/purifier.pth`` to ``src/nrp_lightning/pretrained/nrp_cpu.pth`` (a plain state dict
in the authors' key layout, checked to load with ``weights_only=True`` and ``strict=True``) and
writes ``nrp_cpu.json`` beside it: the training command and resolved config, the corpus photos it
was trained on (name and sha256 from ``data/photos/MANIFEST.csv``), the purifier's size, and, with
``--eval``, the held-out measurements of that evaluation run (``results.jsonl``), and the run's
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
import shutil
from pathlib import Path

import torch
import yaml

from nrp_lightning.gate import GATE_KEY
from nrp_lightning.purify import DEFAULT_PURIFIER, load_purifier
from nrp_lightning.weights import sha256_of


def training_photos(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return [{"name": r["name"], "sha256": r["sha256"], "licence": r["licence"]}
                for r in csv.DictReader(f) if r["split"] == "train"]


def eval_rows(eval_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    keep = ("kind", "source", "attack", "eps", "defense", "victim", "n", "top1", "success_rate")
    return [{k: r.get(k) for k in keep} for r in rows if r.get("defense") in ("none", "JPEG", "NRP", "NRP_dynamic")]


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
         dest: Path = DEFAULT_PURIFIER) -> Path:
    """Copy ``run/purifier.pth`` to ``dest`` and write its card ``dest.with_suffix('.json')``."""
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
        "training_command": "python train.py " + " ".join(overrides),
        "corpus": "python scripts/build_photo_corpus.py --out data/photos (scripts/photo_corpus.csv)",
        "training_photos": training_photos(manifest),
        "config": yaml.safe_load((run / ".hydra" / "config.yaml").read_text()),
        "report": "docs/results.md",
    }
    if gate is not None:
        card[GATE_KEY] = gate
    if eval_dir is not None:
        card["heldout_evaluation"] = {"command": "python eval.py experiment=heldout", "rows": eval_rows(eval_dir)}
    dest.with_suffix(".json").write_text(json.dumps(card, indent=1, default=str) + "\n")
    torch.load(dest, weights_only=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="training run folder (holds purifier.pth and .hydra/)")
    parser.add_argument("--eval", type=Path, help="evaluation run folder (holds results.jsonl)")
    parser.add_argument("--manifest", type=Path, default=Path("data/photos/MANIFEST.csv"))
    args = parser.parse_args()
    dest = ship(args.run, args.eval, args.manifest)
    if GATE_KEY in json.loads(dest.with_suffix(".json").read_text()):
        print(f"shipped {dest} with the gate of {args.run / 'purifier.json'}")
    else:
        print(f"shipped {dest} without a gate; calibrate it next: python scripts/calibrate_gate.py --write")


if __name__ == "__main__":
    main()
