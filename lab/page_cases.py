"""The demo page's cases for each purifier: does purification give the victim back its answer?

The page (``nrp-demo-page``) attacks one of its example photos with MI-FGSM or DIM crafted on an
offline classifier and purifies the attacked image; this runs every such case on one photo, the
way the server does it (attack at the photo's full size, seed 0, every image through 8-bit PNG),
and prints, for each (attack, source, ε), the victim's top-1 on the attacked image and, for each
purifier, on its purification. ✓: the clean photo's top-1 (kept by the attack, or given back);
✗: another class. The source equal to the victim is the white-box case.

    python lab/page_cases.py nrp_cpu nrp_real             # the shipped purifiers on chelsea, victim MobileNetV2
    python lab/page_cases.py outputs/RUN/purifier.pth --photo astronaut --eps 8
    python lab/page_cases.py nrp_cpu nrp_real --dynamic   # also each with dynamic inference (seeded draw)

About 3 minutes for two purifiers on the 2-core CPU without AVX-512 (16 attacks at 451x300).
"""
import argparse
import sys
from pathlib import Path

import torch

from nrp_lightning.images import decode_image, png_bytes

ATTACKS = ("mifgsm", "dim")  # the page's transfer attacks, as nrp_lightning.attacks.transfer names them


def through_png(x: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1] -> the same image after an 8-bit PNG round trip, as the page sends it."""
    return decode_image(png_bytes(x))


def top1(classifier, x: torch.Tensor, labels: list[str]) -> tuple[str, float]:
    """The classifier's top-1 class name and its probability (%) on one ``(3, H, W)`` image, ranked
    as the page's ``/predict`` ranks it (``serve.apis.top_k``)."""
    from nrp_lightning.serve.apis import top_k

    with torch.no_grad():
        best = top_k(classifier(x[None]).float().softmax(1)[0], labels, k=1)[0]
    return best["label"], 100 * best["p"]


def cell(prediction: tuple[str, float], clean_class: str) -> str:
    """``✓ Egyptian cat 75.7%`` when ``prediction`` is the clean top-1, ``✗ ...`` otherwise."""
    name, prob = prediction
    return f"{'✓' if name == clean_class else '✗'} {name} {prob:.1f}%"


def run_cases(x: torch.Tensor, victim, sources: dict, purifiers: dict, labels: list[str], eps_list=(16, 8),
              attacks=ATTACKS, seed: int = 0, progress=None) -> tuple[tuple[str, float], list[dict]]:
    """The clean top-1 of ``victim`` on ``x`` ``(3, H, W)``, and one row per (attack, source, ε):
    ``attack`` (as ``transfer`` names it), ``name`` (as the attack calls itself), ``attacked`` and,
    per purifier name, ``purified`` (top-1, %) pairs. ``purifiers`` map names to callables on
    ``(1, 3, H, W)`` batches; ``sources`` names to source classifiers."""
    from nrp_lightning.attacks import transfer

    clean = top1(victim, x, labels)
    rows = []
    for attack_name in attacks:
        for source_name, source in sources.items():
            for eps in eps_list:
                attack = getattr(transfer, attack_name)(eps=eps)
                batch = x[None]
                x_adv = attack(batch, transfer.untargeted_labels(source, batch), source,
                               torch.Generator().manual_seed(seed))
                attacked = through_png(x_adv[0])
                with torch.no_grad():
                    purified = {name: top1(victim, through_png(p(attacked[None])[0]), labels)
                                for name, p in purifiers.items()}
                rows.append({"attack": attack_name, "name": attack.name, "source": source_name, "eps": eps,
                             "attacked": top1(victim, attacked, labels), "purified": purified})
                if progress:
                    progress(rows[-1])
    return clean, rows


def markdown(clean: tuple[str, float], rows: list[dict], victim_name: str) -> str:
    """The cases as a Markdown table (a column per purifier) and a line per purifier counting the
    cases whose purified image carries the clean top-1 where the attack had changed it."""
    names = list(rows[0]["purified"]) if rows else []
    lines = [f"clean top-1 of {victim_name}: {clean[0]} {clean[1]:.1f}%", "",
             "| attack, source | ε | attacked | " + " | ".join(names) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for row in rows:
        source = row["source"] + (" (white-box)" if row["source"] == victim_name else "")
        lines.append(f"| {row['name']}, {source} | {row['eps']:g} | "
                     f"{cell(row['attacked'], clean[0])} | "
                     + " | ".join(cell(row["purified"][n], clean[0]) for n in names) + " |")
    fooled = [r for r in rows if r["attacked"][0] != clean[0]]
    missed = [r for r in rows if r["attacked"][0] == clean[0]]
    lines.append("")
    for n in names:
        back = sum(r["purified"][n][0] == clean[0] for r in fooled)
        kept = sum(r["purified"][n][0] == clean[0] for r in missed)
        lines.append(f"- {n}: gave back the clean top-1 in {back} of the {len(fooled)} cases the attack won; "
                     f"kept it in {kept} of {len(missed)} it did not")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("purifiers", nargs="+", help="purifiers as --checkpoint takes them: a shipped name "
                                                     "(nrp_cpu, nrp_real) or a file")
    parser.add_argument("--photo", default=None, help="an example photo of the page (default: the page's first)")
    parser.add_argument("--victim", default="mobilenet_v2", help="the page's victim classifier (default: %(default)s)")
    parser.add_argument("--eps", type=float, nargs="+", default=[16, 8], help="budgets /255 (default: 16 8)")
    parser.add_argument("--seed", type=int, default=0, help="the attack's seed, as the page sends it")
    parser.add_argument("--dynamic", action="store_true", help="add a column per purifier with dynamic inference "
                                                                 "(the noise drawn from --seed, one draw per case)")
    args = parser.parse_args()

    from nrp_lightning.cli_purify import build_source
    from nrp_lightning.data import EMBEDDED_PHOTOS
    from nrp_lightning.images import array_to_tensor
    from nrp_lightning.models.classifiers import OFFLINE_MODELS, imagenet_labels
    from nrp_lightning.purify import load_purifier, purify_images
    from nrp_lightning.serve.apis import PAGE_EXAMPLE

    photo = args.photo or PAGE_EXAMPLE
    if photo not in EMBEDDED_PHOTOS:
        parser.error(f"no example photo {photo!r}; the page has {', '.join(EMBEDDED_PHOTOS)}")
    x = through_png(array_to_tensor(EMBEDDED_PHOTOS[photo]()[0]))
    victim = build_source(args.victim)
    sources = {name: victim if name == args.victim else build_source(name) for name in OFFLINE_MODELS}
    purifiers = {}
    for name in args.purifiers:
        purifier = load_purifier(name)
        purifiers[Path(name).stem] = lambda batch, p=purifier: purify_images(p, batch)
        if args.dynamic:
            purifiers[f"{Path(name).stem} dynamic"] = lambda batch, p=purifier: purify_images(
                p, batch, dynamic=True, generator=torch.Generator().manual_seed(args.seed))
    clean, rows = run_cases(x, victim, sources, purifiers, imagenet_labels(), args.eps, seed=args.seed,
                            progress=lambda r: print(f"  {r['attack']} {r['source']} eps {r['eps']:g}", file=sys.stderr))
    print(f"photo {photo}, {tuple(x.shape[1:])}, seed {args.seed}")
    print(markdown(clean, rows, args.victim))


if __name__ == "__main__":
    main()
