"""A one-minute screen of purifier checkpoints on the held-out photos, for tuning a recipe.

Both sides at once: clean images must stay clean (PSNR of P(x)
against x, the fine detail P(x) keeps (``detail``: % of x's Laplacian energy, ``losses.detail_ratio``),
share of clean top-1 predictions each of the four shipped classifiers changes) and
attacks must lose their effect (MI-FGSM and SSP at eps 16, crafted on MobileNetV2 or on
``--source``, success on the black-box EfficientNet-Lite0; ``--attacks MI-FGSM DIM SSP`` adds DIM). JPEG q75 is measured beside it. The reported numbers of
lab/NOTEBOOK.md come from ``eval.py``, not from this screen.

    python lab/probe_purifier.py outputs/nrp_cpu-none/purifier.pth [more.pth ...]
    python lab/probe_purifier.py a.pth b.pth --names a b --inference plain dynamic_avg4 --paired a+dynamic_avg4

Held-out photos: ``data/photos/heldout`` (``scripts/build_photo_corpus.py``), 5 crops each
(centre square and four 70% corners) at 224 px; adversarial sets are cached in ``--cache``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from nrp_lightning.attacks.ssp import SSP
from nrp_lightning.attacks.transfer import dim, mifgsm
from nrp_lightning.defenses import JPEG
from nrp_lightning.eval_data import photo_views, to_uint8
from nrp_lightning.evaluation.metrics import detail_ratio, psnr_per_image
from nrp_lightning.models.classifiers import load_classifier
from nrp_lightning.models.features import mobilenet_v2
from nrp_lightning.purify import load_purifier

VICTIMS = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BLACK_BOX = "efficientnet_lite0"
SOURCE = "mobilenet_v2"
CONFIDENT = 0.3


@torch.no_grad()
def predict(model, x: torch.Tensor, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.cat([model(x[i:i + batch]).softmax(1) for i in range(0, len(x), batch)])
    top = probs.max(1)
    return top.indices, top.values


def images_tag(x: torch.Tensor) -> str:
    """First 8 hex digits of the sha256 of ``x``'s 8-bit values (``(N,3,H,W)`` in [0, 1])."""
    return hashlib.sha256(to_uint8(x).numpy().tobytes()).hexdigest()[:8]


def cached_images(cache: Path, stem: str, x: torch.Tensor, make) -> torch.Tensor:
    """Images ``(N,3,H,W)`` in [0, 1] made from the clean images ``x`` by ``make()`` (after
    ``torch.manual_seed(0)``), stored as 8-bit values in ``cache/STEM-N-TAG.pt`` when missing.
    ``TAG`` (``images_tag(x)``) keys the file by the images themselves, so a screen of other photos,
    of the same count or in the same folder, crafts its own sets instead of reading ours."""
    path = cache / f"{stem}-{len(x)}-{images_tag(x)}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save((make() * 255).round().to(torch.uint8), path)
    return torch.load(path, weights_only=True).float() / 255


SCREEN_ATTACKS = ("MI-FGSM", "SSP")  # the screen's default columns; DIM on request (--attacks)


def adversarial_sets(x: torch.Tensor, source, cache: Path, attacks: tuple[str, ...] = SCREEN_ATTACKS,
                     tag: str = "") -> dict[str, torch.Tensor]:
    """The adversarial copies ``(N,3,H,W)`` of ``x`` by attack name, crafted at eps 16 (MI-FGSM and
    DIM on the classifier ``source`` against its clean top-1, SSP on MobileNetV2's stride-8
    features), cached in ``cache`` as ``NAME[-tag]-N-IMAGES.pt`` (``cached_images``; ``tag`` names a source other than
    MobileNetV2, so that the sets of two sources never share a file)."""
    makers = {"MI-FGSM": lambda: _batched(lambda b: mifgsm(eps=16)(b, source(b).argmax(1), source), x),
              "DIM": lambda: _batched(lambda b: dim(eps=16)(b, source(b).argmax(1), source), x),
              "SSP": lambda: _batched(lambda b: SSP(eps=16, step_size=4.0, steps=20)(b, mobilenet_v2(layer=7)), x)}
    unknown = sorted(set(attacks) - set(makers))
    if unknown:
        raise ValueError(f"unknown screen attack(s) {unknown}; choose from {sorted(makers)}")
    suffix = f"-{tag}" if tag else ""
    return {name: cached_images(cache, f"{name}{suffix}", x, makers[name]) for name in attacks}


def _batched(fn, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def attack_labels(attacks, black_boxes=(BLACK_BOX,)) -> list[str]:
    """The attack columns' labels: ``NAME`` on ``BLACK_BOX``, ``NAME@lite1`` on another black box."""
    return [a if v == BLACK_BOX else f"{a}@{v.removeprefix('efficientnet_')}" for v in black_boxes for a in attacks]


def probe(defenses: dict, x: torch.Tensor, adv: dict[str, torch.Tensor], victims: dict,
          outcomes: dict | None = None, black_boxes: tuple[str, ...] = (BLACK_BOX,)) -> tuple[dict[str, dict], int]:
    """Each defence's row of the screen (rates in %), and the number of confident images. Attack
    success is counted on each victim of ``black_boxes`` (columns ``success_<label>``,
    ``attack_labels``). Given a dict ``outcomes``, also fills ``outcomes[defence][column]`` with the
    per-image bool ``(N,)`` behind each rate (changed / attack succeeded; ``changed_confident`` over
    the confident images)."""
    clean_pred = {v: predict(m, x) for v, m in victims.items()}
    confident = clean_pred[BLACK_BOX][1] >= CONFIDENT
    results = {}
    for d_name, defend in defenses.items():
        with torch.no_grad():
            dx = _batched(defend, x)
        hits = {}
        for v, m in victims.items():
            hits[f"changed_{v}"] = predict(m, dx)[0] != clean_pred[v][0]
        hits["changed_confident"] = hits[f"changed_{BLACK_BOX}"][confident]
        for a_name, xa in adv.items():
            with torch.no_grad():
                dxa = _batched(defend, xa)
            for v, label in zip(black_boxes, attack_labels([a_name], black_boxes)):
                hits[f"success_{label}"] = predict(victims[v], dxa)[0] != clean_pred[v][0]
        results[d_name] = {"psnr": float(psnr_per_image(dx, x).mean()), "detail": 100 * float(detail_ratio(dx, x).mean()),
                           **{c: 100 * float(h.float().mean()) for c, h in hits.items()}}
        if outcomes is not None:
            outcomes[d_name] = hits
    return results, int(confident.sum())


def screen_inputs(photos: Path, cache: Path, attacks: tuple[str, ...] = SCREEN_ATTACKS, source: str = SOURCE
                  ) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor]]:
    """The screen's held-out images ``(N,3,224,224)``, the four victims by name and the cached
    adversarial sets crafted on the victim ``source`` (name -> ``(N,3,224,224)``). SSP is
    MobileNetV2's whatever the source, so another source refuses it."""
    if source != SOURCE and "SSP" in attacks:
        raise ValueError(f"SSP is crafted on MobileNetV2's features only; with --source {source} "
                         "choose from --attacks MI-FGSM DIM")
    x = photo_views(photos)
    victims = {v: load_classifier(v) for v in VICTIMS}
    tag = "" if source == SOURCE else source
    return x, victims, adversarial_sets(x, victims[source], cache, attacks, tag)


def add_screen_options(parser: argparse.ArgumentParser) -> None:
    """The options every screen of these probes shares: its photos, its attack cache, its attack
    columns and the black boxes they are counted on (``load_screen`` reads them)."""
    parser.add_argument("--photos", type=Path, default=Path("data/photos/heldout"))
    parser.add_argument("--cache", type=Path, default=Path("outputs/probe_cache"))
    parser.add_argument("--attacks", nargs="+", default=list(SCREEN_ATTACKS), metavar="NAME",
                        help="attack columns, crafted on --source at eps 16: MI-FGSM, DIM, SSP (default: %(default)s)")
    parser.add_argument("--black-boxes", nargs="+", default=[BLACK_BOX], metavar="VICTIM", choices=VICTIMS,
                        help="victims whose attack success is counted (default: %(default)s; the CPU recipe's "
                             "targets name efficientnet_lite0 efficientnet_lite1 efficientnet_lite2)")
    parser.add_argument("--source", default=SOURCE, choices=VICTIMS,
                        help="the classifier MI-FGSM and DIM are crafted on (default: %(default)s, the source of "
                             "the CPU recipe's targets and the purifier's own training network; another one asks "
                             "whether a purifier removes attacks from a network it never saw)")


def load_screen(parser: argparse.ArgumentParser, args: argparse.Namespace
                ) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor], tuple[str, ...]]:
    """``screen_inputs`` for the options of ``add_screen_options``, and the black boxes without
    repeats; an unknown attack name is a usage error."""
    black_boxes = tuple(dict.fromkeys(args.black_boxes))
    if args.source in black_boxes:
        parser.error(f"--source {args.source} is also a black box: a transfer attack's victim must be another network")
    try:
        x, victims, adv = screen_inputs(args.photos, args.cache, tuple(args.attacks), args.source)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    return x, victims, adv, black_boxes


def ensemble(members: list):
    """A test-time ensemble: the mean of the members' outputs, ``(B, 3, H, W)`` -> ``(B, 3, H, W)``."""
    return lambda b: torch.stack([member(b) for member in members]).mean(0)


def row_label(name: str, variant: str) -> str:
    """A checkpoint's row label under an inference variant: ``name``, or ``name+variant`` but for plain."""
    return name if variant == "plain" else f"{name}+{variant}"


def inference_variants(purifier, names: list[str] = ()) -> dict:
    """``probe_inference.variants`` of ``purifier`` without a gate (imported here: that probe
    builds on this one), with ``dynamic@S`` for each such name in ``names``."""
    if str(Path(__file__).parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).parent))
    from probe_inference import variants

    sigmas = []
    for name in names:
        if name.startswith("dynamic@"):
            try:
                sigmas.append(float(name.removeprefix("dynamic@")))
            except ValueError:
                raise ValueError(f"--inference {name}: expected dynamic@SIGMA, e.g. dynamic@0.1") from None
    return variants(purifier, sigmas=sigmas)


def _shorten(label: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        label = label.replace(old, new)
    return label


def print_table(results: dict[str, dict], attacks: list[str], head: str = "defence", width: int = 44) -> None:
    """The screen's rows as a fixed-width text table (labels cut to their last ``width`` characters)."""
    cols = ["psnr", "detail", *[f"changed_{v}" for v in VICTIMS], "changed_confident", *[f"success_{a}" for a in attacks]]
    short = {"changed_": "chg_", "success_": "", "efficientnet_": "", "mobilenet_v2": "mnv2"}  # "MI-FGSM@lite1" fits
    print(head.ljust(width) + "".join(_shorten(c, short)[:14].rjust(15) for c in cols))
    for name, row in results.items():
        print(name[-width:].ljust(width) + "".join(f"{row[c]:15.1f}" for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="purifier files (any format load_purifier reads)")
    add_screen_options(parser)
    parser.add_argument("--baselines", action="store_true", help="also show no defence and JPEG q75")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table with 95%% Wilson "
                        "intervals (PSNR, clean top-1 changed on the black box, its attack success rates)")
    parser.add_argument("--names", nargs="*", help="row labels for the checkpoints (default: their paths)")
    parser.add_argument("--ensemble", action="store_true", help="also a row 'mean': the mean of the checkpoints' "
                        "outputs (a test-time ensemble of the purifiers)")
    parser.add_argument("--inference", nargs="+", default=["plain"], metavar="VARIANT",
                        help="purify with these inference variants of probe_inference.py (plain, flip2, twice, "
                             "dynamic, dynamic_avg4, dynamic@SIGMA, up1.5, up2; default: plain): a row per checkpoint and "
                             "variant, labelled NAME+VARIANT but for plain, so that --paired compares "
                             "purifiers under dynamic inference on the same noise draws")
    parser.add_argument("--paired", metavar="LABEL", help="also compare every row with the row LABEL on the same "
                        "images: per column, images only LABEL changes / only the row changes, and the exact "
                        "McNemar p-value (far sharper than two Wilson intervals)")
    args = parser.parse_args()
    try:
        known = inference_variants(torch.nn.Identity(), args.inference)
    except ValueError as exc:
        parser.error(str(exc))
    unknown = [v for v in args.inference if v not in known]
    if unknown:
        parser.error(f"unknown --inference {unknown}; choose from {list(known)}")
    torch.set_num_threads(2)
    x, victims, adv, black_boxes = load_screen(parser, args)
    defenses = {"none": lambda b: b, "JPEG75": JPEG(75)} if args.baselines else {}
    if args.names and len(args.names) != len(args.checkpoints):
        parser.error(f"--names gives {len(args.names)} labels for {len(args.checkpoints)} checkpoints")
    names = list(args.names or args.checkpoints)
    if args.ensemble and args.inference != ["plain"]:
        parser.error("--ensemble averages plain outputs; leave out --inference")
    rows = [row_label(name, v) for name in names for v in args.inference]
    labels = list(defenses) + rows + (["mean"] if args.ensemble else [])
    if len(set(labels)) != len(labels):
        parser.error(f"row labels must differ (the baselines are {list(defenses)}): {labels}")
    if args.paired is not None and args.paired not in labels:
        parser.error(f"--paired {args.paired!r} is not a row label; the rows are {labels}")
    for ckpt, name in zip(args.checkpoints, names):
        table = inference_variants(load_purifier(ckpt).eval(), args.inference)
        defenses.update({row_label(name, v): table[v] for v in args.inference})
    if args.ensemble:
        defenses["mean"] = ensemble([defenses[name] for name in names])
    outcomes = {}
    results, n_conf = probe(defenses, x, adv, victims, outcomes, black_boxes)
    print(f"{len(x)} held-out crops ({n_conf} with {BLACK_BOX} clean top-1 prob >= {CONFIDENT})", file=sys.stderr)
    print_table(results, attack_labels(adv, black_boxes))
    print(json.dumps(results))
    if args.markdown:
        print(markdown(results, len(x), attack_labels(adv, black_boxes)))
    if args.paired is not None:
        print(paired_table(outcomes, args.paired))


def paired_table(outcomes: dict[str, dict[str, torch.Tensor]], reference: str) -> str:
    """Every row against ``reference`` on the same images, as Markdown: per column ``b / c (p)``,
    ``b`` images where only the reference changes the prediction (or lets the attack succeed),
    ``c`` where only the row does, ``p`` the two-sided exact McNemar p-value. ``c < b`` with a
    small ``p``: the row is better on that column than the reference, beyond the images' noise."""
    from nrp_lightning.evaluation.metrics import mcnemar_exact
    from nrp_lightning.evaluation.tables import md_table

    cols = list(outcomes[reference])
    rows = []
    for name, hits in outcomes.items():
        if name == reference:
            continue
        cells = []
        for col in cols:
            ref, row = outcomes[reference][col], hits[col]
            b, c = int((ref & ~row).sum()), int((row & ~ref).sum())
            cells.append(f"{b} / {c} ({mcnemar_exact(b, c):.2f})")
        rows.append([name, *cells])
    header = [f"against {reference}", *[c.replace("efficientnet_", "") for c in cols]]
    return md_table(header, rows)


def markdown(results: dict[str, dict], n: int, attacks: list[str]) -> str:
    """The black boxes' columns as a Markdown table, rates with 95% Wilson intervals over ``n`` images;
    ``attacks`` are the labels of ``attack_labels``."""
    from nrp_lightning.evaluation.tables import md_table, rate_cell

    header = ["defence", "PSNR P(x), x (dB)", f"clean top-1 changed, {BLACK_BOX} (%)",
              *[f"{a} success, {BLACK_BOX} (%)" if "@" not in a else
                "{} success, efficientnet_{} (%)".format(*a.split("@")) for a in attacks]]
    rows = [[name, f"{row['psnr']:.1f}", rate_cell({"changed": row[f"changed_{BLACK_BOX}"], "n": n}, "changed"),
             *[rate_cell({"success_rate": row[f"success_{a}"], "n": n}, "success_rate") for a in attacks]]
            for name, row in results.items()]
    return md_table(header, rows)


if __name__ == "__main__":
    main()
