"""Purification speed and memory: throughput at 224 px and one large photo, tiled.

    PYTHONPATH=src python benchmarks/purify_bench.py throughput --arch rrdb --side 224 --images 3
    PYTHONPATH=src python benchmarks/purify_bench.py photo --arch resnet --width 4000 --height 3000 --max-memory 8G
    PYTHONPATH=src python benchmarks/purify_bench.py plan --arch rrdb --width 4000 --height 3000 --max-memory 16G \
        --pixels-per-second 2800

Random weights (timing does not depend on them). ``photo`` upsamples scikit-image's ``chelsea`` photo to the
requested size and purifies it with ``purify_images`` (tiling from the memory budget); peak memory is the
process's peak RSS (``nrp_bench.probes.host_peak_mib``, the probe bench.py uses). ``plan`` prints the tile
plan of a photo and, given a measured pixels/s, the time it implies, for runs too long to make here.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image

from nrp_bench.probes import host_peak_mib, sync
from nrp_lightning.images import array_to_tensor
from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier
from nrp_lightning.purify import purify_images
from nrp_lightning.tiling import (DEFAULT_RAMP, bytes_per_pixel, default_memory_budget, parse_memory,
                                  receptive_margin, tile_shape, tile_starts)


def peak_rss_gib() -> float:
    """The process's peak RSS in GiB."""
    return host_peak_mib() / 1024


def build(arch: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    net = RRDBPurifier(64, 23, 32) if arch == "rrdb" else ResNetPurifier(64, 23)
    return net.eval().requires_grad_(False).to(device=device, dtype=dtype)


def throughput(args, purifier) -> None:
    x = torch.rand(args.batch_size, 3, args.side, args.side, device=args.device, dtype=purifier.conv_first.weight.dtype)
    purify_images(purifier, x)  # warm-up
    sync(torch.device(args.device))
    start = time.perf_counter()
    for _ in range(args.images // args.batch_size):
        purify_images(purifier, x)
    sync(torch.device(args.device))
    seconds = time.perf_counter() - start
    n = args.images // args.batch_size * args.batch_size
    print(f"{args.arch} nf=64 nb=23 at {args.side}px, batch {args.batch_size}, {args.device}, {args.dtype}, "
          f"{torch.get_num_threads()} threads: {n} images in {seconds:.1f} s = {n / seconds:.3f} images/s "
          f"({seconds / n:.2f} s/image); peak RSS {peak_rss_gib():.2f} GiB")


def photo_tensor(width: int, height: int) -> torch.Tensor:
    from skimage import data

    return array_to_tensor(np.asarray(Image.fromarray(data.chelsea()).resize((width, height), Image.BICUBIC)))


def plan(args, purifier) -> tuple[int, int, int]:
    budget = parse_memory(args.max_memory) if args.max_memory else default_memory_budget(args.device)
    per_px, halo = bytes_per_pixel(purifier), receptive_margin(purifier)
    th, tw = tile_shape(args.height, args.width, budget, per_px, halo, DEFAULT_RAMP)
    rows, cols = len(tile_starts(args.height, th, halo, DEFAULT_RAMP)), len(tile_starts(args.width, tw, halo, DEFAULT_RAMP))
    computed = rows * cols * th * tw
    print(f"{args.width}x{args.height} photo, budget {budget / 2**30:.1f} GiB, {per_px} B/px estimated, halo {halo} px: "
          f"{rows}x{cols} tiles of {th}x{tw} px = {computed / 1e6:.1f} Mpx computed for "
          f"{args.width * args.height / 1e6:.1f} Mpx ({computed / (args.width * args.height):.2f}x)")
    if args.pixels_per_second:
        print(f"at {args.pixels_per_second:.0f} px/s: about {computed / args.pixels_per_second / 60:.0f} min "
              "(estimate, not a run)")
    return rows, cols, computed


def photo(args, purifier) -> None:
    x = photo_tensor(args.width, args.height)[None]
    plan(args, purifier)
    budget = parse_memory(args.max_memory) if args.max_memory else None
    rss_before = peak_rss_gib()
    start = time.perf_counter()
    out = purify_images(purifier, x.to(args.device), max_memory=budget)
    sync(torch.device(args.device))
    seconds = time.perf_counter() - start
    print(f"{args.arch} nf=64 nb=23, {args.width}x{args.height} photo on {args.device}: {seconds:.1f} s, "
          f"peak RSS {peak_rss_gib():.2f} GiB (before: {rss_before:.2f} GiB), output {tuple(out.shape)} "
          f"in [{out.min():.3f}, {out.max():.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "photo", "plan"))
    parser.add_argument("--arch", choices=("rrdb", "resnet"), default="rrdb")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--max-memory", help="tiling budget, e.g. 8G (default: half the free memory)")
    parser.add_argument("--pixels-per-second", type=float, help="for `plan`: a measured speed to turn into time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    purifier = build(args.arch, args.device, getattr(torch, args.dtype))
    with torch.no_grad():
        {"throughput": throughput, "photo": photo, "plan": plan}[args.mode](args, purifier)


if __name__ == "__main__":
    main()
