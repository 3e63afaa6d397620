"""What a purifier does to clean images' fine detail, and whether that detail is what changes the
classifiers' predictions (the CPU recipe's clean-change target): a diagnosis, not a defence.

    python lab/probe_detail.py [PURIFIER.pth]   # default: the shipped purifier

On the screen's 35 held-out crops (``eval_data.photo_views``) it prints, for the purifier
and for JPEG q75:

* ``detail``: the fine-detail energy kept, % of x's (``evaluation.metrics.detail_ratio``, 3x3 Laplacian);
* ``low rms`` / ``high rms``: RMS of D(x) - x below and above a 9x9 box blur (colour and shading
  errors against texture errors), in 8-bit levels;
* per classifier, the clean top-1 predictions changed, and the same after two *oracle* repairs
  that use the clean image (so neither is a defence: on an adversarial input they would restore
  the perturbation too): ``+low(x)`` swaps the purified image's 9x9 low-pass for x's; ``+half
  detail`` adds back half of the 3x3 detail the purifier removed, ``(x - blur3(x)) - (P(x) -
  blur3(P(x)))``. If ``+half detail`` brings the changes down and ``+low(x)`` does not, the lost
  fine detail, not colour or shading, is what the classifiers react to.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_purifier import VICTIMS, _batched, predict  # noqa: E402

from nrp_lightning.eval_data import photo_views_or_exit  # noqa: E402
from nrp_lightning.defenses import JPEG  # noqa: E402
from nrp_lightning.evaluation.metrics import detail_ratio  # noqa: E402
from nrp_lightning.models.classifiers import load_classifier  # noqa: E402
from nrp_lightning.purify import load_purifier  # noqa: E402


def box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` x ``k`` mean filter with reflected borders, same shape as ``x``."""
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="reflect"), k, 1)


def oracle_repairs(purified: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two repairs of the module docstring, ``(B, 3, H, W)`` in [0, 1]."""
    lost = (x - box_blur(x, 3)) - (purified - box_blur(purified, 3))
    return {"+low(x)": (purified - box_blur(purified, 9) + box_blur(x, 9)).clamp(0, 1),
            "+half detail": (purified + 0.5 * lost).clamp(0, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("purifier", nargs="?", help="purifier file (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=Path("data/photos/heldout"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    x = photo_views_or_exit(parser, args.photos)
    purifier = load_purifier(args.purifier).eval()
    with torch.no_grad():
        outputs = {"NRP": _batched(lambda b: purifier(b).clamp(0, 1), x),
                   "JPEG75": JPEG(75)(x)}
    outputs.update({f"NRP {k}": v for k, v in oracle_repairs(outputs["NRP"], x).items()})
    print(f"{len(x)} held-out crops, purifier {purifier.spec}")
    print(f"{'output':22}{'detail %':>10}{'low rms':>9}{'high rms':>9}" + "".join(f"{v.replace('efficientnet_', ''):>14}" for v in VICTIMS))
    victims = {v: load_classifier(v) for v in VICTIMS}
    clean = {v: predict(m, x)[0] for v, m in victims.items()}
    for name, out in outputs.items():
        diff = out - x
        low = box_blur(diff, 9)
        row = f"{name:22}{100 * float(detail_ratio(out, x).mean()):10.1f}{255 * float(low.pow(2).mean().sqrt()):9.2f}" \
              f"{255 * float((diff - low).pow(2).mean().sqrt()):9.2f}"
        row += "".join(f"{int((predict(m, out)[0] != clean[v]).sum()):14d}" for v, m in victims.items())
        print(row)
    print("(last columns: clean top-1 predictions changed, of", len(x), ")")


if __name__ == "__main__":
    main()
