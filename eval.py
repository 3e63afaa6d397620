"""Evaluate attacks and defences: `python eval.py experiment=offline` (see docs/evaluation.md)."""
from nrp_lightning.evaluation.cli import main

if __name__ == "__main__":
    main()
