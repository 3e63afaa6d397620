"""Build the offline natural-photo corpus: train and held-out photos, no internet.

Sources (and only these): the photos that installed Python packages ship (scikit-image,
scikit-learn, matplotlib) and four Debian wallpaper packages, ``plasma-workspace-wallpapers``,
``gnome-backgrounds``, ``ukui-wallpapers`` and ``sway-backgrounds``, fetched with
``apt-get download`` and unpacked with ``dpkg -x`` (no install, no root needed for that part).
Other wallpaper packages are an unseen test set: do not add them here.

Which files are natural photographs, and which side of the split each is on, is the fixed list
``scripts/photo_corpus.csv`` (name, split, source, path, licence): abstract and vector art,
and the packages' repeated resolutions of one picture, were left out by looking at every file.
Of the four packages only ``plasma-workspace-wallpapers`` holds photographs; gnome, ukui and sway
ship illustrations only.

Every photo is written as ``OUT/<split>/<name>.png``, its shorter side reduced to at most
``--max-side`` pixels (antialiased; the evaluation's 224 px crops and the training's multi-scale
crops never need more), with ``OUT/MANIFEST.csv`` (name, split, size, sha256, licence).

    python scripts/build_photo_corpus.py --out data/photos
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

LIST = Path(__file__).with_name("photo_corpus.csv")
PACKAGES = ("plasma-workspace-wallpapers", "gnome-backgrounds", "ukui-wallpapers", "sway-backgrounds")


def read_list(path: Path = LIST) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    bad = [r["name"] for r in rows if r["split"] not in ("train", "heldout")]
    if bad:
        raise ValueError(f"{path}: split must be train or heldout, not for {bad}")
    return rows


def unpack_packages(packages: list[str], work: Path) -> Path:
    """``apt-get download`` each package into ``work`` and ``dpkg -x`` it into ``work/root``."""
    root = work / "root"
    root.mkdir(parents=True, exist_ok=True)
    for name in packages:
        debs = list(work.glob(f"{name}_*.deb"))
        if not debs:
            print(f"apt-get download {name}", file=sys.stderr)
            done = subprocess.run(["apt-get", "download", name], cwd=work, capture_output=True, text=True)
            debs = list(work.glob(f"{name}_*.deb"))
            if not debs:
                raise SystemExit(f"apt-get download {name} failed ({done.stderr.strip()[-300:]}); "
                                 "run `apt-get update` first, or pass --debs DIR holding the .deb files")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
    return root


def embedded_array(source_path: str) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 photo a package ships, from the list's ``path`` column."""
    if source_path.startswith("skimage.data."):
        import skimage.data

        name, _, index = source_path.removeprefix("skimage.data.").partition("[")
        out = getattr(skimage.data, name)()
        return out[int(index.rstrip("]"))] if index else out
    if source_path.startswith("sklearn.datasets.load_sample_images"):
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[int(source_path.split("[")[1].rstrip("]"))]
    if "grace_hopper" in source_path:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    raise ValueError(f"unknown embedded photo {source_path!r}")


def shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Reduce so the shorter side is at most ``max_side`` (Lanczos); smaller images unchanged."""
    w, h = img.size
    scale = max_side / min(w, h)
    return img if scale >= 1 else img.resize((round(w * scale), round(h * scale)), Image.LANCZOS)


def build(out: Path, max_side: int = 1080, debs: Path | None = None) -> list[dict]:
    rows = read_list()
    packages = sorted({r["source"] for r in rows if r["source"] in PACKAGES})
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        work = debs or Path(tmp)
        root = unpack_packages(packages, work) if packages else None
        for i, row in enumerate(rows, 1):
            if row["source"] in PACKAGES:
                img = Image.open(root / row["path"]).convert("RGB")
            else:
                img = Image.fromarray(embedded_array(row["path"])).convert("RGB")
            img = shrink(img, max_side)
            path = out / row["split"] / f"{row['name']}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            manifest.append({"name": row["name"], "split": row["split"], "width": img.size[0], "height": img.size[1],
                             "sha256": digest, "source": row["source"], "licence": row["licence"]})
            print(f"[{i}/{len(rows)}] {row['split']:8s} {row['name']:14s} {img.size[0]}x{img.size[1]}", file=sys.stderr)
    with open(out / "MANIFEST.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(manifest[0]))
        writer.writeheader()
        writer.writerows(manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/photos"), help="output folder (default data/photos)")
    parser.add_argument("--max-side", type=int, default=1080, help="shorter side cap in pixels (default 1080)")
    parser.add_argument("--debs", type=Path, default=None,
                        help="folder for the downloaded .deb files (kept; default: a temporary folder)")
    args = parser.parse_args(argv)
    manifest = build(args.out, args.max_side, args.debs)
    counts = {s: sum(r["split"] == s for r in manifest) for s in ("train", "heldout")}
    print(f"corpus: {counts['train']} train, {counts['heldout']} held-out photos in {args.out} (MANIFEST.csv)")


if __name__ == "__main__":
    main()
