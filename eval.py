"""Evaluate attacks and defences: `python eval.py experiment=offline` (see docs/evaluation.md)."""
from nrp_lightning.evaluate import main

if __name__ == "__main__":
    main()
