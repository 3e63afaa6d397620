"""Ship a trained purifier as the package's default, with its card beside it.

    python experiments/ship_purifier.py outputs/nrp_cpu-none [--eval outputs/eval/heldout]

Copies ``RUN/purifier.pth`` to ``src/nrp_lightning/pretrained/nrp_cpu.pth`` (a plain state dict
in the authors' key layout, checked to load with ``weights_only=True`` and ``strict=True``) and
writes ``nrp_cpu.json`` beside it: the training command and resolved config, the corpus photos it
was trained on (name and sha256 from ``data/photos/MANIFEST.csv``), the purifier's size, and, with
``--eval``, the held-out measurements of that evaluation run (``results.jsonl``). The card has no
gate: a new purifier needs its own, ``python experiments/calibrate_gate.py --write`` afterwards.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
from pathlib import Path

import torch
import yaml

from nrp_lightning.purify import DEFAULT_PURIFIER, load_purifier


def training_photos(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return [{"name": r["name"], "sha256": r["sha256"], "licence": r["licence"]}
                for r in csv.DictReader(f) if r["split"] == "train"]


def eval_rows(eval_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    keep = ("kind", "source", "attack", "eps", "defense", "victim", "n", "top1", "success_rate")
    return [{k: r.get(k) for k in keep} for r in rows if r.get("defense") in ("none", "JPEG", "NRP", "NRP_dynamic")]


def ship(run: Path, eval_dir: Path | None = None, manifest: Path = Path("data/photos/MANIFEST.csv"),
         dest: Path = DEFAULT_PURIFIER) -> Path:
    source = run / "purifier.pth"
    purifier = load_purifier(source)  # weights_only=True, strict=True, or a clear error
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    card = {
        "file": dest.name,
        "sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
        "architecture": str(purifier.spec),
        "parameters": sum(p.numel() for p in purifier.parameters()),
        "input": "(B,3,H,W) RGB in [0,1], any size; output unclamped (clamp to [0,1])",
        "training_command": "python train.py " + " ".join(overrides),
        "corpus": "python experiments/build_photo_corpus.py --out data/photos (experiments/photo_corpus.csv)",
        "training_photos": training_photos(manifest),
        "config": yaml.safe_load((run / ".hydra" / "config.yaml").read_text()),
        "report": "docs/reproduction.md",
    }
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
    print(f"shipped {ship(args.run, args.eval, args.manifest)}; calibrate its gate next: "
          "python experiments/calibrate_gate.py --write")


if __name__ == "__main__":
    main()
