"""Build the labelled evaluation set and the real training images from folders a user cloned.

Nothing of these images is in the repository; each builder reads a clone (``git clone`` of a
public repository, or the original download), copies what it may use into ``data/`` and writes a
``MANIFEST.csv`` beside it (file, sha256, label where there is one, source, licence):

* ``neurips``: the NeurIPS-2017 adversarial competition's dev set, the paper's "ImageNet-NeurIPS"
  evaluation set (299 px PNGs, labelled). ``github.com/NilsRublein/DL`` holds 911 of its 1000
  images under ``data/images/`` with ``data/dev_dataset.csv``; the competition's own download (or
  Kaggle's copy) holds all 1000 as ``images/`` + ``dev_dataset.csv``: either works. Each image is
  assigned to the ``dev`` or ``test`` split by a fixed rule on its ImageId (``eval_data.neurips_split``:
  about a third dev), the same for every copy of the set.
* ``coco``: MS-COCO train2017 images, the paper's training distribution.
  ``github.com/lightly-ai/coco128_yolo`` holds 128 of them under ``images/train2017/``; a full
  train2017 folder works too (``--limit`` keeps the first N by name).
* ``imagenet``: ``github.com/EliSchwartz/imagenet-sample-images``, one ImageNet image per class
  named by synset, so the i-th ``.JPEG`` in sorted order has class i. Only the files at **even**
  positions (0, 2, 4, ...: 500 images) are copied; the odd half is never opened (it is kept back as
  an unseen test set).

    python scripts/build_datasets.py neurips ~/clones/DL --out data/neurips2017
    python scripts/build_datasets.py coco ~/clones/coco128_yolo --out data/coco128
    python scripts/build_datasets.py imagenet ~/clones/imagenet-sample-images --out data/imagenet_even
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

from nrp_lightning.eval_data import NEURIPS_CSV, neurips_split
from nrp_lightning.weights import sha256_of

COCO_LICENCE = "COCO train2017 image: its Flickr licence (cocodataset.org/#termsofuse)"
IMAGENET_LICENCE = "ImageNet sample image: research use under the ImageNet terms of access (image-net.org)"


def find_one(root: Path, *candidates: str) -> Path:
    """The first of ``candidates`` (paths relative to ``root``) that exists, else a usage error."""
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    raise SystemExit(f"{root}: none of {', '.join(candidates)} found; is it a clone of the right repository?")


def write_manifest(out: Path, rows: list[dict]) -> Path:
    path = out / "MANIFEST.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def copy_file(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` (kept as it is, no re-encoding) and return its sha256."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return sha256_of(dst)


def build_neurips(clone: Path, out: Path) -> str:
    csv_path = find_one(clone, "data/dev_dataset.csv", "dev_dataset.csv", "images.csv")
    image_dir = find_one(clone, "data/images", "images")
    with open(csv_path, newline="") as f:
        listed = list(csv.DictReader(f))
    present = {p.stem: p for p in image_dir.glob("*.png")}
    rows = []
    for r in listed:
        if r["ImageId"] not in present:
            continue
        sha = copy_file(present[r["ImageId"]], out / "images" / f"{r['ImageId']}.png")
        rows.append({"ImageId": r["ImageId"], "TrueLabel": r["TrueLabel"], "split": neurips_split(r["ImageId"]),
                     "sha256": sha, "source": r.get("OriginalLandingURL") or r.get("URL", ""),
                     "licence": r.get("License", ""), "author": r.get("Author", "")})
    if not rows:
        raise SystemExit(f"{image_dir}: no PNG named by an ImageId of {csv_path}")
    with open(out / NEURIPS_CSV, "w", newline="") as f:  # what eval_data.neurips_dev reads
        writer = csv.DictWriter(f, fieldnames=["ImageId", "TrueLabel", "split"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("ImageId", "TrueLabel", "split")} for r in rows)
    write_manifest(out, rows)
    dev = sum(r["split"] == "dev" for r in rows)
    return f"neurips: {len(rows)} of the {len(listed)} listed images ({dev} dev, {len(rows) - dev} test) in {out}"


def build_coco(clone: Path, out: Path, limit: int | None) -> str:
    image_dir = find_one(clone, "images/train2017", "train2017", ".")
    paths = sorted(image_dir.glob("*.jpg"))[:limit]
    if not paths:
        raise SystemExit(f"{image_dir}: no .jpg files")
    rows = [{"file": p.name, "sha256": copy_file(p, out / p.name), "source": f"COCO train2017 {p.name}",
             "licence": COCO_LICENCE} for p in paths]
    write_manifest(out, rows)
    return f"coco: {len(rows)} images in {out}"


def build_imagenet(clone: Path, out: Path) -> str:
    names = sorted(p.name for p in clone.glob("*.JPEG"))  # names only: the odd files are never opened
    if len(names) != 1000:
        raise SystemExit(f"{clone}: expected the 1000 .JPEG files of imagenet-sample-images, found {len(names)}")
    rows = [{"file": name, "label": index, "synset": name.split("_", 1)[0],
             "sha256": copy_file(clone / name, out / name), "source": f"imagenet-sample-images {name}",
             "licence": IMAGENET_LICENCE} for index, name in enumerate(names) if index % 2 == 0]
    write_manifest(out, rows)
    return f"imagenet: {len(rows)} images (the even positions of 1000) in {out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="\n".join(__doc__.strip().splitlines()[-3:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=("neurips", "coco", "imagenet"))
    parser.add_argument("clone", type=Path, help="the cloned repository (or original download) to read")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created; existing files replaced)")
    parser.add_argument("--limit", type=int, help="coco: the first N images by name only")
    args = parser.parse_args(argv)
    if not args.clone.is_dir():
        parser.error(f"{args.clone} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.which == "neurips":
        print(build_neurips(args.clone, args.out))
    elif args.which == "coco":
        print(build_coco(args.clone, args.out, args.limit))
    else:
        print(build_imagenet(args.clone, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
