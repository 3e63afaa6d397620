"""Console command ``nrp-purify``: purify every image of a folder (or one file) with a purifier,
writing lossless PNGs by the file rules of ``folder_jobs``; ``nrp-purify export`` is in
``cli_export``. ``nrp-attack`` lives in ``cli_attack``; its entry point and ``build_source`` are
imported here too, where the console scripts and the server look for them.

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

from nrp_lightning import fast_paths
from nrp_lightning.cli_attack import attack_main, build_source  # noqa: F401 (pyproject and serve name them here)
from nrp_lightning.cli_common import (OUTPUT_FORMS, add_folder_arguments, device_from, fast_path, finish, memory_from,
                                      paragraphs, tile_bar)
from nrp_lightning.cli_export import export_main
from nrp_lightning.folder_jobs import UsageError, plan_jobs, run_jobs


def purify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp-purify",
        description=paragraphs(
            "Purify every image of a folder (or one file) with a Neural Representation Purifier and write "
            "lossless PNGs. Inputs are never modified; outputs are written atomically; existing outputs are "
            "skipped unless --overwrite. Exit code 0: all done, 1: some images failed, 2: usage error.",
            OUTPUT_FORMS, "To export a purifier instead: nrp-purify export --help"),
        epilog="examples: nrp-purify photos/ purified/   (the purifier that ships with nrp-lightning)\n"
               "          nrp-purify photos/ purified/ --gate   (purify only the images that look attacked)\n"
               "          nrp-purify photos/ purified/ --checkpoint outputs/<run>/purifier.pth --dynamic --batch-size 4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_folder_arguments(parser, bf16=True)
    parser.add_argument("--checkpoint", help="the authors' NRP.pth or NRP_resG.pth, a purifier.pth exported by "
                        "nrp-train or an nrp-train .ckpt, a Hub folder, hf:ORG/NAME, or the name of a purifier shipped "
                        "in the package: nrp_real (trained on COCO and ImageNet photos; 7.5 points more clean accuracy "
                        "on the NeurIPS-2017 test split), nrp_cpu_ssp (SSP inputs). Default: nrp_cpu.pth, "
                        "trained by `python train.py experiment=nrp_cpu attack=classifier` (DIM adversaries of "
                        "MobileNetV2 as training inputs); see docs/results.md)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic inference: purify x + clipped Gaussian "
                        "noise (sigma 0.05, within 16/255), the authors' defence against white-box attackers")
    parser.add_argument("--halo", type=int, help="context px per tile side (default: the purifier's receptive "
                                                 "field, which makes tiling exact; smaller is faster)")
    parser.add_argument("--gate", action="store_true", help="purify only the images whose features purification "
                        "moves by more than the gate's threshold (those that look attacked) and write the others "
                        "unchanged; the gate calibrated for the purifier is read from the JSON beside its file "
                        "(the shipped purifier has one; scripts/calibrate_gate.py makes one)")
    parser.add_argument("--gate-threshold", type=float, metavar="TAU", help="the gate's threshold on the feature "
                        "distance instead of the calibrated one (implies --gate; the feature extractor still comes from the "
                        "purifier's calibrated gate). A gate helps only against attackers who do not know of it: see "
                        "docs/protect.md")
    return parser


def _purify_batch(purifier, images: torch.Tensor, sources: list[Path], *, dynamic: bool,
                  generator: torch.Generator, max_memory: int | None, halo: int | None, autocast, progress: bool,
                  gate=None, flagged: list[Path] | None = None) -> torch.Tensor:
    """One batch of ``(B,3,H,W)`` images in [0, 1] (from the files ``sources``), purified, with a bar of
    tiles if ``progress`` and they are tiled; with a ``gate``, only the images it flags (their paths
    are appended to ``flagged``), the others returned as they came."""
    from nrp_lightning.purify import purify_images

    with autocast(), tile_bar(sources, progress):
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


def purify_main(argv: Sequence[str] | None = None) -> int:
    """``nrp-purify INPUT OUTPUT [--checkpoint PATH] ...`` and ``nrp-purify export [CHECKPOINT] OUT``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fast_paths.tune_allocator()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    from nrp_lightning.purify import PurifierLoadError, load_purifier
    from nrp_lightning.weights import WeightsNotFoundError

    parser = purify_parser()
    args = parser.parse_args(argv)
    gate = None
    try:
        device = device_from(args.device)
        jobs = plan_jobs(args.input, args.output)
        purifier = load_purifier(args.checkpoint, device=device)
        max_memory = memory_from(args.max_memory)
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
    bf16, autocast = fast_path(device, purifier, args)
    print(f"purifier: {purifier.spec} from {purifier.path}{origin} on {fast_paths.describe(device, bf16)}; "
          f"{len(jobs)} images", file=sys.stderr)
    flagged: list[Path] = []
    fn = partial(_purify_batch, purifier, dynamic=args.dynamic, generator=torch.Generator().manual_seed(args.seed),
                 max_memory=max_memory, halo=args.halo, autocast=autocast,
                 progress=not args.no_progress, gate=gate, flagged=flagged)
    summary = run_jobs(jobs, fn, args.batch_size, args.overwrite, desc="purify", progress=not args.no_progress,
                       pass_sources=True)
    if gate is not None:
        print(_gate_report(gate, flagged, summary.done), file=sys.stderr)
    return finish(summary)


if __name__ == "__main__":
    sys.exit(purify_main())
