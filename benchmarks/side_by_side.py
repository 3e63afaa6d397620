"""Side by side with the authors' released scripts: their ``purify.py`` against ``nrp-purify`` and
their ``ssp.py`` against ``nrp-attack ssp``, on the same weights and the same images.

    git clone https://github.com/Muzammal-Naseer/NRP /tmp/authors-nrp      # outside this repository
    python benchmarks/side_by_side.py --authors /tmp/authors-nrp --device cuda

Nothing is downloaded and their files are not changed: the purifier is the paper's RRDB (nf 64,
nb 23, gc 32) with random weights (seed 0), saved as ``pretrained_purifiers/NRP.pth`` in the
authors' key layout; VGG16 has random weights too, saved where torchvision's cache looks for
``vgg16(pretrained=True)`` (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``) and handed to
``nrp-attack ssp --weights``. Speed does not depend on the weights. The images are 224 px crops of
the photos in ``--photos`` (PNG, so that nobody's JPEG decoder differs).

Each command runs twice, on ``--warmup-images`` and on ``--images`` images; throughput is the
difference of the two (images / wall seconds), so that start-up (imports, model load, cuDNN
autotuning) cancels. Their ``purify.py`` runs as released (batch 1, fp32; cuDNN's default TF32
convolutions apply on both sides), ``ssp.py`` with ``--batch_size`` set to ours. Outputs are
compared pixel by pixel: purified PNGs of ``nrp-purify`` (fp32) must equal theirs up to one 8-bit
level; SSP outputs cannot be equal (their start is the noise itself, ours x + noise), so only the
budget of ours is checked (theirs resizes to 256 and crops 224 first). Writes ``side_by_side.json`` and ``side_by_side.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
VGG16_CACHE_NAME = "vgg16-397923af.pth"  # the file name torchvision's vgg16(pretrained=True) looks for
PAPER_RRDB = (64, 23, 32)
EQUALITY_KEYS = {"ours_purify_fp32_b1": "purify_equal_fp32", "ours_purify_bf16": "purify_equal_bf16"}


def make_images(photos: Path, count: int, size: int, out: Path, seed: int = 0) -> list[Path]:
    """``count`` random ``size`` px crops (PNG) of the photos under ``photos``, resized so that the
    shorter side is 2 x ``size`` first; returns their paths."""
    files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    if not files:
        raise SystemExit(f"--photos {photos}: no images there (python scripts/build_photo_corpus.py "
                         "--out data/photos makes the corpus)")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths, cache = [], {}
    for i in range(count):
        f = files[i % len(files)]
        if f not in cache:
            img = Image.open(f).convert("RGB")
            scale = 2 * size / min(img.size)
            cache[f] = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))))
        img = cache[f]
        x, y = rng.integers(0, img.width - size + 1), rng.integers(0, img.height - size + 1)
        path = out / f"img{i:04d}.png"
        img.crop((x, y, x + size, y + size)).save(path)
        paths.append(path)
    return paths


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    """Wall seconds of ``cmd`` (output to ``log``); raises with the log's tail if it fails."""
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n" + "".join(log.read_text().splitlines(True)[-20:]))
    return seconds


def pixel_diff(a_dir: Path, b_dir: Path) -> dict:
    """Largest and mean absolute difference (8-bit levels) over same-named PNGs of two folders."""
    names = sorted(p.name for p in a_dir.glob("*.png"))
    if not names or any(not (b_dir / n).is_file() for n in names):
        raise SystemExit(f"{a_dir} and {b_dir} do not hold the same PNG files")
    diffs = [np.abs(np.asarray(Image.open(a_dir / n).convert("RGB"), np.int16) -
                    np.asarray(Image.open(b_dir / n).convert("RGB"), np.int16)) for n in names]
    stacked = np.stack(diffs)
    return {"images": len(names), "max_levels": int(stacked.max()), "mean_levels": float(stacked.mean()),
            "share_equal": float((stacked == 0).mean())}


def linf_levels(clean_dir: Path, adv_dir: Path) -> int:
    """Largest |x' - x| in 8-bit levels over same-named PNGs (searched recursively in ``adv_dir``)."""
    worst = 0
    for adv in adv_dir.rglob("*.png"):
        clean = next(clean_dir.rglob(adv.name))
        d = np.abs(np.asarray(Image.open(adv).convert("RGB"), np.int16) - np.asarray(Image.open(clean).convert("RGB"), np.int16))
        worst = max(worst, int(d.max()))
    return worst


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors", required=True, type=Path, help="a checkout of github.com/Muzammal-Naseer/NRP")
    p.add_argument("--device", default="cuda", help="cuda (their scripts take cuda:0 when there is one) or cpu")
    p.add_argument("--photos", type=Path, default=REPO / "data/photos/heldout", help="photos to crop (default: the held-out corpus)")
    p.add_argument("--images", type=int, default=256, help="images per timed purification run (default 256)")
    p.add_argument("--ssp-images", type=int, default=128, help="images per timed SSP run (default 128)")
    p.add_argument("--warmup-images", type=int, default=8, help="images of the start-up run subtracted (default 8)")
    p.add_argument("--batch-size", type=int, default=32, help="our batch in the fast rows and both sides' SSP batch")
    p.add_argument("--size", type=int, default=224, help="image side in px (default 224)")
    p.add_argument("--out", type=Path, default=REPO / "outputs/side_by_side", help="work and result folder")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    for script in ("purify.py", "ssp.py", "networks.py"):
        if not (args.authors / script).is_file():
            raise SystemExit(f"--authors {args.authors}: no {script} there; clone github.com/Muzammal-Naseer/NRP")
    from nrp_lightning.models.purifier import RRDBPurifier

    work = args.out
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    counts = {"purify": (args.warmup_images, args.images), "ssp": (args.warmup_images, args.ssp_images)}
    for n in sorted({c for pair in counts.values() for c in pair}):
        make_images(args.photos, n, args.size, work / f"imgs{n}")
        (work / f"clean{n}").mkdir()
        shutil.copytree(work / f"imgs{n}", work / f"clean{n}" / "class_a")  # ImageFolder layout for ssp.py
    torch.manual_seed(0)
    (work / "pretrained_purifiers").mkdir()
    torch.save(RRDBPurifier(*PAPER_RRDB).state_dict(), work / "pretrained_purifiers/NRP.pth")
    import torchvision

    torch_home = work / "torch_home"
    (torch_home / "hub/checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.vgg16().state_dict(), torch_home / "hub/checkpoints" / VGG16_CACHE_NAME)
    env = {**os.environ, "TORCH_HOME": str(torch_home), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # their scripts take cuda:0 whenever there is one
    py, bs = sys.executable, str(args.batch_size)
    weights = str(torch_home / "hub/checkpoints" / VGG16_CACHE_NAME)

    def ours(command: tuple[str, ...], tag: str, source: str, *options: str):
        """Our console command (``command``: the cli_purify entry point, then any subcommand; run from
        src/, no install needed) on ``{source}{n}``, writing to ``{tag}_{n}``: (command for n images,
        output folder for n images)."""
        call = f"import sys; from nrp_lightning.cli_purify import {command[0]}; sys.exit({command[0]}(sys.argv[1:]))"
        return (lambda n: [py, "-c", call, *command[1:], f"{source}{n}", f"{tag}_{n}", *options, "--device", args.device,
                           "--no-progress", "--overwrite"], lambda n: work / f"{tag}_{n}")

    purify = (("purify_main",), "--checkpoint", "pretrained_purifiers/NRP.pth")
    ssp = (("attack_main", "ssp"), "--backbone", "vgg16", "--layer", "16", "--weights", weights, "--steps", "100",
           "--batch-size", bs)
    # name -> (kind, command for n images, output folder for n images, what it is)
    runs = {
        "authors_purify": ("purify", lambda n: [py, str(args.authors.resolve() / "purify.py"), "--dir", f"imgs{n}"],
                           lambda n: work / f"authors_purify{n}/purified_imgs", "their purify.py (batch 1, fp32)"),
        "ours_purify_fp32_b1": ("purify", *ours(purify[0], "ours_fp32_b1", "imgs", *purify[1:]), "nrp-purify (batch 1, fp32)"),
        "ours_purify_bf16": ("purify", *ours(purify[0], "ours_bf16", "imgs", *purify[1:], "--batch-size", bs, "--bf16"),
                             f"nrp-purify --bf16 --batch-size {bs}"),
        "authors_ssp": ("ssp", lambda n: [py, str(args.authors.resolve() / "ssp.py"), "--sourcedir", f"clean{n}",
                                          "--targetdir", f"authors_ssp{n}", "--batch_size", bs],
                        lambda n: work / f"authors_ssp{n}", f"their ssp.py (batch {bs}, fp32, 100 steps)"),
        "ours_ssp_fp32": ("ssp", *ours(ssp[0], "ours_ssp_fp32", "clean", *ssp[1:]), f"nrp-attack ssp (batch {bs}, fp32, 100 steps)"),
        "ours_ssp_bf16": ("ssp", *ours(ssp[0], "ours_ssp_bf16", "clean", *ssp[1:], "--bf16"),
                          f"nrp-attack ssp --bf16 (batch {bs}, 100 steps)"),
    }
    result = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "size": args.size, "runs": {}}
    for name, (kind, cmd, out_dir, what) in runs.items():
        seconds = {}
        for n in counts[kind]:
            cwd = work / f"authors_purify{n}" if name == "authors_purify" else work
            if name == "authors_purify":  # their script reads ./pretrained_purifiers and writes ./purified_imgs
                cwd.mkdir(exist_ok=True)
                (cwd / "pretrained_purifiers").symlink_to(work / "pretrained_purifiers")
                (cwd / f"imgs{n}").symlink_to(work / f"imgs{n}")
            print(f"{name}: {n} images", flush=True)
            seconds[n] = timed(cmd(n), cwd, env, work / f"{name}_{n}.log")
        small, big = counts[kind]
        rate = (big - small) / max(seconds[big] - seconds[small], 1e-9)
        result["runs"][name] = {"what": what, "wall_s": seconds, "img_per_s": rate, "output": str(out_dir(big))}
        print(f"  {what}: {seconds} s -> {rate:.2f} img/s", flush=True)
        if name in EQUALITY_KEYS:  # compared at once: a run cut short later keeps the comparison
            result[EQUALITY_KEYS[name]] = pixel_diff(Path(result["runs"]["authors_purify"]["output"]), out_dir(big))
            print(f"  purified PNGs against theirs: {result[EQUALITY_KEYS[name]]}", flush=True)
        (work / "side_by_side.partial.json").write_text(json.dumps(result, indent=2, default=str))
    r = result["runs"]
    result["purify_speedup_fp32_b1"] = r["ours_purify_fp32_b1"]["img_per_s"] / r["authors_purify"]["img_per_s"]
    result["purify_speedup_best"] = r["ours_purify_bf16"]["img_per_s"] / r["authors_purify"]["img_per_s"]
    result["ssp_speedup_fp32"] = r["ours_ssp_fp32"]["img_per_s"] / r["authors_ssp"]["img_per_s"]
    result["ssp_speedup_bf16"] = r["ours_ssp_bf16"]["img_per_s"] / r["authors_ssp"]["img_per_s"]
    result["ssp_linf_levels"] = {k: linf_levels(work / f"clean{args.ssp_images}", Path(r[k]["output"]))
                                 for k in ("ours_ssp_fp32", "ours_ssp_bf16")}  # theirs: of their resized input
    (work / "side_by_side.json").write_text(json.dumps(result, indent=2, default=str))
    (work / "side_by_side.partial.json").unlink()
    lines = [f"Side by side on {result['device']}, {args.size} px images (`python benchmarks/side_by_side.py "
             f"--authors DIR --device {args.device} --images {args.images} --ssp-images {args.ssp_images} "
             f"--batch-size {bs}`)", "", "| command | images/s | wall s (start-up run, timed run) |", "|---|---|---|"]
    lines += [f"| {v['what']} | {v['img_per_s']:.2f} | {', '.join(f'{s:.1f}' for s in v['wall_s'].values())} |"
              for v in r.values()]
    lines += ["", f"purification: ours/theirs {result['purify_speedup_fp32_b1']:.2f}x at batch 1 fp32, "
              f"{result['purify_speedup_best']:.2f}x with --bf16 --batch-size {bs}; SSP: {result['ssp_speedup_fp32']:.2f}x "
              f"fp32, {result['ssp_speedup_bf16']:.2f}x --bf16",
              f"purified PNGs against theirs: fp32 {result['purify_equal_fp32']}, bf16 {result['purify_equal_bf16']}",
              f"SSP l_inf (8-bit levels, budget 16): {result['ssp_linf_levels']}"]
    (work / "side_by_side.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
