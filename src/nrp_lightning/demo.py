"""``make demo``: train ``experiment=demo`` offline on CPU, then show what the purifier does.

The last line is machine-readable::

    demo: feat_dist_adv=<x> feat_dist_purified=<y> psnr_adv=<a> psnr_purified=<b> checkpoint=<purifier.pth>

Extra arguments are Hydra overrides, e.g. ``python -m nrp_lightning.demo steps=20``. Run again,
the demo does not refuse: when its folder (``outputs/demo-none``) already holds a run, and neither
``resume=true`` nor a ``run_name`` was given, it starts a fresh run beside it (``demo-none-2``, ...)
and says so.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from nrp_lightning.config import compose, conf_dir, register_resolvers
from nrp_lightning.train import checkpoints_in, train

# Overrides with which the user has chosen the run folder or how to treat the one that exists.
CHOOSES_THE_RUN = {"run_name", "resume", "ckpt_path", "hydra.run.dir"}


def demo_line(result: dict) -> str:
    r = result["report"]
    return (f"demo: feat_dist_adv={r['feat_dist_adv']:.4f} feat_dist_purified={r['feat_dist_purified']:.4f} "
            f"psnr_adv={r['psnr_adv']:.2f} psnr_purified={r['psnr_purified']:.2f} checkpoint={result['purifier']}")


def fresh_run_beside(overrides: list[str]) -> tuple[Path, Path] | None:
    """``(taken, fresh)`` run folders when the folder these overrides would run in already holds a
    run's checkpoints: ``fresh`` is the first ``<run_name>-N`` (N = 2, 3, ...) beside it that holds
    none. ``None`` when the folder is free, or when the overrides choose the run themselves
    (``CHOOSES_THE_RUN``) or hold Hydra flags (``-m``, ``--cfg``)."""
    if any(o.startswith("-") or o.split("=", 1)[0].lstrip("+~") in CHOOSES_THE_RUN for o in overrides):
        return None
    taken = Path(compose(overrides).hydra.run.dir)
    if not checkpoints_in(taken):
        return None
    n = 2
    while checkpoints_in(taken.with_name(f"{taken.name}-{n}")):
        n += 1
    return taken, taken.with_name(f"{taken.name}-{n}")


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    print(demo_line(train(cfg)))


register_resolvers()

if __name__ == "__main__":
    import sys

    if not any(a.startswith("experiment=") for a in sys.argv[1:]):
        sys.argv.insert(1, "experiment=demo")
    if beside := fresh_run_beside(sys.argv[1:]):
        taken, fresh = beside
        print(f"demo: {taken} already holds a run, so this one starts fresh in {fresh} "
              f"(resume=true would continue the earlier one)", flush=True)
        sys.argv.append(f"run_name={fresh.name}")
    main()
