"""Write the measurements the shipped purifiers' cards hold as CSV files, one per card and evaluation.

Each card (``src/nrp_lightning/pretrained/NAME.json``) records the evaluation runs it was shipped
with (``heldout_evaluation``, and ``neurips_evaluation`` where measured): the command that made
them and one row per cell (attack, budget, defence, victim, n, top-1, success rate). This writes
``results/NAME-heldout.csv`` (and ``NAME-neurips.csv``) with the command in a ``command`` column, so
that the numbers the docs quote can be read, diffed and plotted without the package:

    python scripts/results_csv.py                 # every shipped card -> results/
    python scripts/results_csv.py --check         # exit 1 if results/ is not what the cards say
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "src" / "nrp_lightning" / "pretrained"
EVALUATIONS = ("heldout_evaluation", "neurips_evaluation")


def tables(cards: Path = CARDS) -> dict[str, str]:
    """``{file name: CSV text}`` for every evaluation of every card under ``cards``."""
    out = {}
    for card_path in sorted(cards.glob("*.json")):
        card = json.loads(card_path.read_text())
        for key in EVALUATIONS:
            evaluation = card.get(key)
            if not evaluation:
                continue
            rows = evaluation["rows"]
            columns = ["command"] + list(dict.fromkeys(k for row in rows for k in row))
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows({"command": evaluation["command"], **row} for row in rows)
            out[f"{card_path.stem}-{key.removesuffix('_evaluation')}.csv"] = text.getvalue()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="folder to write (default: results/)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs or is missing")
    args = parser.parse_args(argv)
    files = tables()
    if args.check:
        stale = [name for name, text in files.items()
                 if not (args.out / name).is_file() or (args.out / name).read_text() != text]
        for name in stale:
            print(f"{args.out / name} is not what the card says: python scripts/results_csv.py", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
        print(f"{args.out / name}: {text.count(chr(10)) - 1} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
