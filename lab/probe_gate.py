"""How well a purifier's gate tells attacked images from clean ones, on the held-out photos.

For the 35 held-out views (224 px) clean and under MI-FGSM from MobileNetV2 at several budgets
(and the screen's SSP): the gate's scores s(x) = MAE(F(P(x)), F(x)), the share it flags, and what
EfficientNet-Lite0 (black box) does behind no defence, the purifier, and the gated purifier (clean
rows: top-1 changed; attacked rows: attack success, both against its clean top-1). ``--plot``
draws the score histograms against τ.

    python lab/probe_gate.py [PURIFIER] --eps 2 4 8 16 --plot docs/img/gate_scores.png

MI-FGSM sets are cached in ``--cache`` beside the screen's (``MI-FGSM-eps{E}-35-IMAGES.pt``; ε 16 is
the screen's own ``MI-FGSM-35-IMAGES.pt``; ``IMAGES``: 8 hex of the clean views' sha256, so other
photos get their own sets). The sets crafted through the purifier (``--evade``,
``--through-purifier``) are cached per purifier file, under the first 8 hex digits of its sha256.

``--evade W`` adds a row for an attacker who knows the gate but not the victim: MI-FGSM at ε 16
from MobileNetV2 that also keeps the gate score under 0.9 τ (``gate_evading_mifgsm``, penalty
weight W), so that the gate hands its images on unpurified.

``--through-purifier`` adds a row for an attacker who knows the plain purifier but not the victim
and not the gate: MI-FGSM at ε 16 on MobileNetV2 behind the purifier (BPDA, here the exact
gradient through P), transferred to the black box. Beside ``--evade`` it says what knowing the
defence is worth against the plain purifier, not only against the gate.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from nrp_lightning.eval_data import photo_views_or_exit  # noqa: E402
from nrp_lightning.attacks.adaptive import Defended
from nrp_lightning.attacks.ssp import project_linf
from nrp_lightning.attacks.transfer import mifgsm
from nrp_lightning.defenses.nrp import NRPDefense, load_gate
from nrp_lightning.evaluation.tables import md_table, rate_cell
from nrp_lightning.models.classifiers import load_classifier
from nrp_lightning.models.purifier import purify
from nrp_lightning.purify import load_purifier
from nrp_lightning.weights import sha256_of

sys.path.insert(0, str(Path(__file__).parent))
from probe_purifier import BLACK_BOX, _batched, adversarial_sets, cached_images, predict  # noqa: E402


def purifier_tag(path: Path) -> str:
    """First 8 hex digits of the purifier file's sha256: the key of the sets crafted through it,
    so that another purifier (a new one shipped under the same name) never reuses them."""
    return sha256_of(Path(path))[:8]


def mifgsm_set(x: torch.Tensor, source, eps: float, cache: Path) -> torch.Tensor:
    """MI-FGSM at ``eps`` from ``source`` on ``x``, cached as 8-bit images."""
    return cached_images(cache, f"MI-FGSM-eps{eps:g}", x,
                         lambda: _batched(lambda b: mifgsm(eps=eps)(b, source(b).argmax(1), source), x))


def gate_evading_mifgsm(x: torch.Tensor, source, purifier, gate, eps: float = 16.0, steps: int = 10,
                        weight: float = 100.0, margin: float = 0.9) -> torch.Tensor:
    """MI-FGSM (momentum 1, ``steps`` sign steps of eps/steps, ``eps`` in /255) on ``source`` away
    from its clean top-1, maximising ``CE − weight · Σ relu(s(x′) / (margin·τ) − 1)``: the
    transfer attack, held below the gate's threshold. ``x``: ``(B,3,H,W)`` in [0, 1]."""
    x = x.detach()
    with torch.no_grad():
        y = source(x).argmax(1)
    budget, step = eps / 255, eps / 255 / steps
    x_adv, momentum = x.clone(), torch.zeros_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        score = gate.distance(x_adv, purify(purifier, x_adv))
        loss = F.cross_entropy(source(x_adv), y, reduction="sum") \
            - weight * torch.relu(score / (margin * gate.threshold) - 1).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        momentum = momentum + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        x_adv = project_linf(x_adv.detach() + step * momentum.sign(), x, budget)
    return x_adv.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("purifier", nargs="?", help="a purifier with a calibrated gate (default: the shipped one)")
    parser.add_argument("--eps", type=float, nargs="+", default=[2, 4, 8, 16], help="MI-FGSM budgets (/255)")
    parser.add_argument("--photos", type=Path, default=Path("data/photos/heldout"))
    parser.add_argument("--cache", type=Path, default=Path("outputs/probe_cache"))
    parser.add_argument("--plot", type=Path, help="write the score histograms here (PNG)")
    parser.add_argument("--evade", type=float, metavar="W", help="add the gate-evading MI-FGSM at ε 16 with "
                        "penalty weight W (e.g. 100; about 10 min on 2 cores)")
    parser.add_argument("--through-purifier", action="store_true", help="add MI-FGSM at ε 16 crafted on "
                        "MobileNetV2 behind the plain purifier (exact gradient through P; about 8 min on 2 cores)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    purifier = load_purifier(args.purifier)
    gate = load_gate(purifier)
    x = photo_views_or_exit(parser, args.photos)
    source, victim = load_classifier("mobilenet_v2").eval(), load_classifier(BLACK_BOX).eval()
    screen = adversarial_sets(x, source, args.cache)
    sets = {"clean": x}
    for eps in args.eps:
        sets[f"MI-FGSM ε {eps:g}"] = screen["MI-FGSM"] if eps == 16 else mifgsm_set(x, source, eps, args.cache)
    sets["SSP ε 16"] = screen["SSP"]
    tag = purifier_tag(purifier.path)
    if args.evade is not None:
        sets[f"gate-evading MI-FGSM ε 16 (W {args.evade:g})"] = cached_images(
            args.cache, f"MI-FGSM-evade{args.evade:g}-{tag}", x,
            lambda: _batched(lambda b: gate_evading_mifgsm(b, source, purifier, gate, weight=args.evade), x))
    if args.through_purifier:
        behind = Defended(source, NRPDefense(purifier))
        sets["MI-FGSM ε 16 through the purifier"] = cached_images(
            args.cache, f"MI-FGSM-through-{tag}", x,
            lambda: _batched(lambda b: mifgsm(eps=16)(b, source(b).argmax(1), behind), x))

    clean_top1 = predict(victim, x)[0]
    rows, scores = [], {}
    for name, images in sets.items():
        with torch.no_grad():
            purified = _batched(lambda b: purify(purifier, b), images)
            s = torch.cat([gate.score(images[i:i + 16], purified[i:i + 16]) for i in range(0, len(images), 16)])
            gated = torch.where((s > gate.threshold).view(-1, 1, 1, 1), purified, images)
        scores[name] = s
        rates = [float((predict(victim, d)[0] != clean_top1).float().mean()) * 100 for d in (images, purified, gated)]
        n = len(images)
        rows.append([name, f"{s.min():.3f} / {s.median():.3f} / {s.max():.3f}",
                     rate_cell({"r": float((s > gate.threshold).float().mean()) * 100, "n": n}, "r"),
                     *[rate_cell({"r": r, "n": n}, "r") for r in rates]])
    print(f"gate: threshold {gate.threshold:g} on {gate.features.name} features; {len(x)} held-out views; "
          f"{BLACK_BOX}: clean row = top-1 changed, attacked rows = attack success (%)")
    print(md_table(["images", "score min / median / max", "flagged (%)", "no defence", "NRP", "NRP, gated"], rows))
    if args.plot:
        plot(scores, gate.threshold, args.plot)


def plot(scores: dict[str, torch.Tensor], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
    top = max(float(s.max()) for s in scores.values())
    bins = torch.linspace(0, top * 1.02, 60).tolist()
    for name, s in scores.items():
        ax.hist(s.tolist(), bins=bins, alpha=0.6, label=name, histtype="stepfilled" if name == "clean" else "step",
                linewidth=1.5)
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1)
    ax.text(threshold, ax.get_ylim()[1] * 0.95, f" τ = {threshold:g}", va="top")
    ax.set_xlabel("gate score: mean |F(P(x)) − F(x)|")
    ax.set_ylabel("held-out views")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
