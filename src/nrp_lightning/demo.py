"""``make demo``: train ``experiment=demo`` offline on CPU, then show what the purifier does.

The last line is machine-readable::

    demo: feat_dist_adv=<x> feat_dist_purified=<y> psnr_adv=<a> psnr_purified=<b> checkpoint=<purifier.pth>

Extra arguments are Hydra overrides, e.g. ``python -m nrp_lightning.demo steps=20``.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nrp_lightning.config import conf_dir, register_resolvers
from nrp_lightning.train import train


def demo_line(result: dict) -> str:
    r = result["report"]
    return (f"demo: feat_dist_adv={r['feat_dist_adv']:.4f} feat_dist_purified={r['feat_dist_purified']:.4f} "
            f"psnr_adv={r['psnr_adv']:.2f} psnr_purified={r['psnr_purified']:.2f} checkpoint={result['purifier']}")


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    print(demo_line(train(cfg)))


register_resolvers()

if __name__ == "__main__":
    import sys

    if not any(a.startswith("experiment=") for a in sys.argv[1:]):
        sys.argv.insert(1, "experiment=demo")
    main()
