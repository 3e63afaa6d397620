"""How strong is a training adversary? SSP settings against the authors' 100-step attack.

For each SSP setting (steps T, step size kappa, step schedule) on real photos: the feature
distortion it reaches, as a share of the distortion of the authors' attack (100 constant steps of
2.55/255, the same random start), and its cost, as the share of FLOPs it takes in one
``experiment=nrp_full`` training step (batch 16, 128 px, RRDB nf64/nb23/gc32, VGG16 to relu3_3).

    python lab/ssp_strength.py [--photos data/photos/train] [--backbone mobilenet_v2|vgg16]
        [--crops 2] [--out lab/results/ssp_strength.csv]

Distortion: the per-image mean squared difference of the features (SSP's own ``mse`` distance),
averaged over images and divided by the reference's average. Crops: ``--crops`` random 128 px
crops per photo after resizing its shorter side to 480 px (the paper's COCO preprocessing). The
photos default to the training half of the offline corpus (``scripts/build_photo_corpus.py``),
else the embedded photos. VGG16 needs its ImageNet weights (online); MobileNetV2's ship offline.

Cost: FLOPs of one SSP step and of the rest of the ``nrp_full`` step (``torch.utils.flop_counter``
on the benchmark's step parts, ``benchmarks/nrp_bench``, one image at 128 px); SSP's FLOPs grow
linearly with T and none of it depends on the batch or the device, so the share holds on a GPU
where the step is compute-bound. ``--no-cost`` skips it. ``seconds_cpu`` is this machine's time
for the attack on all crops (a shared CPU: a rough guide only).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nrp_lightning.attacks.ssp import SSP
from nrp_lightning.data import EmbeddedImages
from nrp_lightning.images import list_images, load_image
from nrp_lightning.models import features as feature_models

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = dict(steps=100, step_size=2.55, schedule="constant")  # the authors' ssp.py
# (steps, step size /255, schedule): the table, then decaying step sizes
SETTINGS = [(0, 0.0, "constant"), (5, 4.0, "constant"), (10, 2.55, "constant"), (10, 4.0, "constant"),
            (20, 2.55, "constant"), (10, 8.0, "cosine"), (10, 16.0, "cosine"), (12, 16.0, "cosine"),
            (15, 8.0, "cosine"), (15, 16.0, "cosine"), (20, 8.0, "cosine"), (20, 16.0, "cosine")]
BACKBONES = {"mobilenet_v2": lambda: feature_models.mobilenet_v2(layer=7), "vgg16": lambda: feature_models.vgg16(layer=16)}


def photo_crops(photos: Path | None, crops: int, size: int = 128, short_side: int = 480, seed: int = 0) -> torch.Tensor:
    """``crops`` random ``size`` px crops of each photo, shorter side resized to ``short_side`` first."""
    if photos is not None:
        images = [load_image(p) for p in list_images(photos)]
    else:
        source = EmbeddedImages()
        images = [source.load(i) for i in range(len(source))]
    g = torch.Generator().manual_seed(seed)
    out = []
    for img in images:
        img = F.interpolate(img[None], scale_factor=short_side / min(img.shape[1:]), mode="area")[0]
        for _ in range(crops):
            i = int(torch.randint(0, img.shape[1] - size + 1, (1,), generator=g))
            j = int(torch.randint(0, img.shape[2] - size + 1, (1,), generator=g))
            out.append(img[:, i:i + size, j:j + size])
    return torch.stack(out)


def distortion(features, x: torch.Tensor, attack: SSP, seed: int = 1, batch: int = 16) -> tuple[torch.Tensor, float]:
    """Per-image feature distortion ``mean((F(x') - F(x))^2)`` of ``attack``'s x', and seconds taken."""
    g = torch.Generator().manual_seed(seed)
    out, start = [], time.perf_counter()
    for b in x.split(batch):
        x_adv = attack(b, features, generator=g)
        with torch.no_grad():
            out.append((features(x_adv) - features(b)).pow(2).flatten(1).mean(1))
    return torch.cat(out), time.perf_counter() - start


def step_flops() -> tuple[int, int]:
    """FLOPs of one SSP step and of the rest of one ``nrp_full`` training step, at batch 1, 128 px.

    SSP's FLOPs grow linearly with T (a forward and a backward of F per step), so one count with
    T = 1 gives every T: the SSP share of a step with T steps is ``T s / (T s + rest)``."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from nrp_bench.flops import count_flops
    from nrp_bench.profiles import FULL_STEP, VARIANTS, step_config
    from nrp_bench.step_parts import prepared_module, step_parts

    cfg = step_config(FULL_STEP + ("attack.steps=1",), VARIANTS["fp32"], 1, 128)
    parts = step_parts(prepared_module(cfg, torch.device("cpu")), torch.rand(1, 3, 128, 128), VARIANTS["fp32"],
                       torch.device("cpu"))
    flops = {part: count_flops(fn) for part, (fn, summed) in parts.items() if summed}
    per_ssp_step = flops.pop("ssp")
    rest = sum(flops.values())
    print(f"nrp_full step at 128 px, per image: {rest / 1e9:.0f} GFLOPs without SSP, {per_ssp_step / 1e9:.1f} "
          f"GFLOPs per SSP step", flush=True)
    return per_ssp_step, rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    default_photos = ROOT / "data" / "photos" / "train"
    parser.add_argument("--photos", type=Path, default=default_photos if default_photos.is_dir() else None,
                        help="folder of photos (default: data/photos/train when built, else the embedded photos)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="mobilenet_v2")
    parser.add_argument("--crops", type=int, default=2, help="random 128 px crops per photo (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "lab" / "results" / "ssp_strength.csv")
    parser.add_argument("--no-cost", action="store_true", help="skip the FLOP share in the nrp_full step")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    features = BACKBONES[args.backbone]().eval().requires_grad_(False)
    x = photo_crops(args.photos, args.crops)
    print(f"{len(x)} crops of 128 px from {args.photos or 'the embedded photos'}, {args.backbone} features", flush=True)
    ref, ref_s = distortion(features, x, SSP(eps=16, **REFERENCE))
    print(f"reference: 100 x 2.55/255 constant, distortion {ref.mean():.4f}, {ref_s:.1f} s", flush=True)
    flops = None if args.no_cost else step_flops()
    rows = []
    for steps, step_size, schedule in SETTINGS:
        d, seconds = distortion(features, x, SSP(eps=16, steps=steps, step_size=step_size, schedule=schedule))
        row = {"backbone": args.backbone, "images": len(x), "steps": steps, "step_size": step_size, "schedule": schedule,
               "share": round(float(d.mean() / ref.mean()), 3), "seconds_cpu": round(seconds, 1)}
        if flops:
            per_step, rest = flops
            row["ssp_share_of_nrp_full_step_flops"] = round(steps * per_step / (steps * per_step + rest), 3)
        rows.append(row)
        print(", ".join(f"{k} {v}" for k, v in row.items() if k not in ("backbone", "images")), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
