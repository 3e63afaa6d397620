"""The screen of ``probe_purifier.py`` for inference-side variants of one purifier (no training).

Each variant wraps the same purifier P differently at test time; the screen shows whether any of
them moves the clean-vs-robust trade-off of lab/NOTEBOOK.md section 2 rather than sliding
along it:

- ``plain``: P(x)
- ``flip2``: the mean of P(x) and the flipped-back P(flip(x)) (a two-view self-ensemble)
- ``twice``: P(P(x)), clamped between the passes (does a second pass take the mid band the first leaves?)
- ``dynamic``: P of x plus one clipped Gaussian draw (sigma 0.05, within 16/255: dynamic inference)
- ``dynamic_avg4``: the mean of P over four such draws
- ``dynamic@S``: ``dynamic`` with noise sigma S ([0, 1] units, still clipped to 16/255), for each S of ``--sigmas``
- ``up1.5`` / ``up2``: x resized up (bicubic) by 1.5 / 2, purified, resized back (antialiased)
- ``resample2``: that resizing by 2 and back without the purifier (the control for ``up2``)
- ``gated`` / ``dynamic_gated`` / ``twice_gated``: ``plain`` / ``dynamic`` / ``twice`` only where
  the purifier's calibrated gate flags the input (``nrp_lightning.gate``;
  ``scripts/calibrate_gate.py``), the input elsewhere; ``twice_gated`` flags on P(x), the
  score the gate was calibrated on. Offered for purifiers with a calibrated gate

    python lab/probe_inference.py [PURIFIER] --variants plain flip2 dynamic
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from nrp_lightning.defenses.nrp import load_gate
from nrp_lightning.gate import GateConfigError
from nrp_lightning.purify import DYNAMIC_SIGMA, dynamic_perturb, load_purifier

sys.path.insert(0, str(Path(__file__).parent))
from probe_purifier import add_screen_options, attack_labels, load_screen, print_table, probe  # noqa: E402


def _resample(x: torch.Tensor, scale: float, inner=lambda u: u) -> torch.Tensor:
    u = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    return F.interpolate(inner(u), size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True)


def variants(purifier, gate=None, sigmas=()) -> dict:
    """name -> function of a (B,3,H,W) batch in [0,1], returning the defended batch, same shape
    (the ``gated`` ones only with a ``gate.PurificationGate``; ``dynamic@S`` for each noise sigma
    S of ``sigmas``, [0, 1] units, still within 16/255: how much noise dynamic inference can use)."""
    def dynamic(x, draws=1, sigma=DYNAMIC_SIGMA):
        g = torch.Generator().manual_seed(0)
        return torch.stack([purifier(dynamic_perturb(x, g, sigma)) for _ in range(draws)]).mean(0)

    table = {
        "plain": purifier,
        "flip2": lambda x: (purifier(x) + purifier(x.flip(-1)).flip(-1)) / 2,
        "twice": lambda x: purifier(purifier(x).clamp(0, 1)),
        "dynamic": dynamic,
        "dynamic_avg4": lambda x: dynamic(x, 4),
        "up1.5": lambda x: _resample(x, 1.5, purifier),
        "up2": lambda x: _resample(x, 2.0, purifier),
        "resample2": lambda x: _resample(x, 2.0),
        **{f"dynamic@{sigma:g}": (lambda x, s=sigma: dynamic(x, sigma=s)) for sigma in sigmas},
    }
    if gate is not None:
        table["gated"] = lambda x: gate(x, purifier(x).clamp(0, 1))
        table["dynamic_gated"] = lambda x: gate(x, dynamic(x).clamp(0, 1))

        def twice_gated(x):  # flagged on P(x), the score τ was calibrated on; P(P(x)) where flagged
            once = purifier(x).clamp(0, 1)
            keep = gate.flags(x, once).view(-1, 1, 1, 1)
            return torch.where(keep, purifier(once), x)

        table["twice_gated"] = twice_gated
    return {name: (lambda x, f=f: f(x).clamp(0, 1)) for name, f in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("purifier", nargs="?", help="any purifier file load_purifier reads (default: the shipped one)")
    parser.add_argument("--variants", nargs="*", default=None, help="which variants (default: all)")
    add_screen_options(parser)
    parser.add_argument("--sigmas", nargs="+", type=float, default=[], metavar="S",
                        help="also the variants dynamic@S: dynamic inference with noise sigma S ([0, 1] units)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    purifier = load_purifier(args.purifier).eval()
    try:
        gate = load_gate(purifier)
    except GateConfigError as exc:
        gate, why = None, str(exc)
    table = variants(purifier, gate, args.sigmas)
    unknown = set(args.variants or []) - set(table)
    if unknown & {"gated", "dynamic_gated"} and gate is None:
        parser.error(f"this purifier has no calibrated gate: {why}")
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(table)}")
    defenses = {k: v for k, v in table.items() if args.variants is None or k in args.variants}
    x, victims, adv, black_boxes = load_screen(parser, args)
    results, _ = probe(defenses, x, adv, victims, black_boxes=black_boxes)
    print_table(results, attack_labels(adv, black_boxes), head="variant", width=14)


if __name__ == "__main__":
    main()
