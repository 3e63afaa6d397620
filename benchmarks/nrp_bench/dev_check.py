"""The command line shared by the agreement checks (``bf16_agreement.py``, ``fold_agreement.py``):
the labelled NeurIPS-2017 dev images they compare on, and where their JSON goes."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """``--images``, ``--n`` and ``--out`` (default ``outputs/bench/<name>``) for a check described by ``doc``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--images", default="data/neurips2017", help="a NeurIPS-2017 folder (labelled) built by "
                   "scripts/build_datasets.py neurips")
    p.add_argument("--n", type=int, default=16, help="images of the dev split (default 16)")
    p.add_argument("--out", default=f"outputs/bench/{name}", help=f"folder for {name}.json")
    return p


def dev_images(args: argparse.Namespace):
    """The first ``args.n`` dev images of ``args.images`` at 224 px (256 resize, centre crop), with labels."""
    from nrp_lightning.eval_data import neurips_dev

    return neurips_dev(args.images, size=224, crop=0.875, split="dev", limit=args.n)


def report(args: argparse.Namespace, name: str, result: dict) -> int:
    """Write ``result`` to ``<args.out>/<name>.json``, print it, return the exit status 0."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0
