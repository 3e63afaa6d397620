"""Calibrate the purification gate of a purifier (``nrp_lightning.gate``) and record it beside it.

The gate purifies an image only where purification moves its features far,
s(x) = MAE(F(P(x)), F(x)) > τ. This script scores photos the way the held-out evaluation sees
them (each photo's centre square and four 70% corners at 224 px), clean and after a weak transfer
attack (MI-FGSM at ``--eps``, default 4/255, the smallest budget of the evaluation's sweep, crafted
on ``--source``), and sets τ halfway between the highest clean score and the lowest attacked one.
Calibrate on the purifier's *training* photos: the held-out photos are for measuring the gate.

    python scripts/calibrate_gate.py                      # the shipped purifier, data/photos/train
    python scripts/calibrate_gate.py outputs/RUN/purifier.pth --write   # writes outputs/RUN/purifier.json

``--write`` stores ``{"gate": {...}}`` in the JSON beside the purifier file (``nrp_cpu.pth`` ->
``nrp_cpu.json``), creating it or replacing only its ``"gate"`` entry; ``load_nrp(gate=True)``,
``nrp-purify --gate`` and the evaluation's ``NRP_gated`` read it from there.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from nrp_lightning.attacks.transfer import mifgsm
from nrp_lightning.eval_data import photo_views_or_exit
from nrp_lightning.gate import GATE_BACKBONES, GATE_KEY, PurificationGate, calibrate_threshold
from nrp_lightning.models import features
from nrp_lightning.models.classifiers import load_classifier
from nrp_lightning.models.purifier import purify
from nrp_lightning.purify import load_purifier
from nrp_lightning.weights import sha256_of


def _batched(fn, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def gate_scores(gate: PurificationGate, purifier, x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` gate scores of the images ``x`` ``(N,3,H,W)`` in [0, 1]."""
    return _batched(lambda b: gate.score(b, purify(purifier, b)), x)


def summary(name: str, s: torch.Tensor) -> str:
    q = s.quantile(torch.tensor([0.0, 0.5, 1.0])).tolist()
    return f"{name}: {len(s)} images, score min {q[0]:.4f} median {q[1]:.4f} max {q[2]:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("purifier", nargs="?", help="any purifier file load_purifier reads (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=Path("data/photos/train"),
                        help="clean calibration photos (default: the corpus's training split)")
    parser.add_argument("--backbone", default="mobilenet_v2", choices=GATE_BACKBONES, help="F (default "
                        "mobilenet_v2, the shipped purifier's L_feat backbone; use the one the purifier trained with)")
    parser.add_argument("--layer", type=int, default=7, help="F's cut (default 7: MobileNetV2 stride 8)")
    parser.add_argument("--source", default="mobilenet_v2", help="classifier the calibration attack is crafted on")
    parser.add_argument("--eps", type=float, default=4.0, help="MI-FGSM budget in pixel units (default 4)")
    parser.add_argument("--size", type=int, default=224, help="side of the square views scored, px (default 224: "
                        "what the classifiers see; scores depend on scale, so calibrate at the size you purify)")
    parser.add_argument("--write", action="store_true", help="record the gate in the JSON beside the purifier")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    purifier = load_purifier(args.purifier)
    gate = PurificationGate(getattr(features, args.backbone)(layer=args.layer), threshold=1.0)
    x = photo_views_or_exit(parser, args.photos, args.size)
    source = load_classifier(args.source).eval()
    attacked = _batched(lambda b: mifgsm(eps=args.eps)(b, source(b).argmax(1), source), x)
    clean_scores, attacked_scores = gate_scores(gate, purifier, x), gate_scores(gate, purifier, attacked)
    threshold = calibrate_threshold(clean_scores, attacked_scores)
    print(summary("clean", clean_scores))
    print(summary(f"MI-FGSM eps {args.eps:g} from {args.source}", attacked_scores))
    flagged = (attacked_scores > threshold).float().mean().item() * 100
    print(f"threshold {threshold:.4f}: flags {(clean_scores > threshold).float().mean().item() * 100:.1f}% of the "
          f"clean and {flagged:.1f}% of the attacked calibration images")

    entry = {"backbone": args.backbone, "layer": args.layer, "threshold": round(threshold, 4),
             "score": "mean |F(P(x)) - F(x)| over F's feature map",
             "calibration": {"command": "python scripts/calibrate_gate.py " + " ".join(sys.argv[1:]),
                             "photos": str(args.photos), "images": len(x), "size": args.size,
                             "clean_max": round(float(clean_scores.max()), 4),
                             "attack": f"MI-FGSM eps {args.eps:g} from {args.source}",
                             "attacked_min": round(float(attacked_scores.min()), 4),
                             "purifier_sha256": sha256_of(Path(purifier.path))}}
    if args.write:
        path = Path(purifier.path).with_suffix(".json")
        metadata = json.loads(path.read_text()) if path.is_file() else {}
        metadata[GATE_KEY] = entry
        path.write_text(json.dumps(metadata, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote the gate to {path}")
    else:
        print(json.dumps({GATE_KEY: entry}, indent=1))


if __name__ == "__main__":
    main()
